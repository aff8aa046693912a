"""How the diffusion world model is run chunk after chunk: :class:`SamplingSettings`.

Shared by conditioning (the sequence layout: history, references, RoPE gap and offsets),
sampling (steps, shift, guidance) and the training objective (the same layout), so none of them
imports another to get it. :func:`check_option` is the one type check of option values
(``world_model_options``, preset overrides): a typed error that names the option.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cityenv.errors import InvalidOptionError, UnknownOptionError, check_name, unknown_name

__all__ = ["CONDITIONS", "SamplingSettings", "check_option", "check_option_keys"]

#: The conditions classifier-free guidance and training can drop.
CONDITIONS = ("text", "references", "warp")

# What each kind of option value may be, for messages and checks.
_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "an int"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "a bool (true/false)"),
    "str": ((str,), "a string"),
}


def check_option(owner: str, key: str, value: Any, kind: str, *, optional: bool = False) -> Any:
    """``value`` if it is of ``kind`` (``int``, ``float``, ``bool``, ``str``), else a typed error.

    Args:
        owner: What the option belongs to, for the message (``"SamplingSettings"``).
        key: The option's name.
        value: Its value.
        kind: The expected kind; ``bool`` is never taken for ``int``/``float``.
        optional: Whether ``None`` is accepted.

    Returns:
        ``value`` (a ``float`` for ``kind="float"``).

    Raises:
        InvalidOptionError: If the value is of another type.
    """
    if value is None and optional:
        return None
    types, described = _KINDS[kind]
    if isinstance(value, types) and (kind == "bool" or not isinstance(value, bool)):
        return float(value) if kind == "float" else value
    also = " or null" if optional else ""
    raise InvalidOptionError(
        f"{owner}: {key} must be {described}{also}, got {type(value).__name__} {value!r}; "
        "fix the value in the options or config."
    )


def check_option_keys(owner: str, given: Mapping[str, Any], known: Sequence[str]) -> None:
    """Raise :class:`UnknownOptionError` (with "Did you mean") for a key not in ``known``."""
    for key in given:
        if key not in known:
            raise unknown_name(
                f"{owner} option",
                key,
                known,
                error=UnknownOptionError,
                advice="Remove the key or fix its spelling.",
            )


@dataclass(frozen=True)
class SamplingSettings:
    """How the diffusion world model samples chunk after chunk (SWM's hyper-parameters).

    Not to be confused with :class:`cityenv.rollout.RolloutConfig`, the settings of a rollout
    run. The chunk length must be a multiple of the model's VAE temporal ratio (checked by the
    model, which knows its VAE).

    Attributes:
        chunk_frames: Frames per chunk the model was set up for.
        history: ``H``: clean history latents from the previous chunks.
        max_references: ``K``: reference latents per chunk.
        gap: ``G``: RoPE gap between the generation window and the references.
        sink_offset: ``dVL``: RoPE offset of the lookahead sink after the targets.
        reference_stride: ``dref``: RoPE spacing of the references.
        use_sink: Whether the lookahead sink is used.
        num_inference_steps: Sampler steps per chunk.
        shift: The flow-matching timestep shift; ``None`` keeps the scheduler's own.
        guidance_scale: Classifier-free guidance scale (1 = no unconditional pass).
        guidance_drop: Conditions the unconditional branch drops: any of ``text``,
            ``references`` (references and sink) and ``warp``.
        ablate: Conditions never given to the model, in every branch (ablations such as
            City-Bench's "no warp channels"; names as ``guidance_drop``).

    Raises:
        InvalidOptionError: If a value has the wrong type or is out of range.
        UnknownNameError: If ``guidance_drop`` names an unknown condition (with "Did you mean").
    """

    chunk_frames: int = 12
    history: int = 3
    max_references: int = 1
    gap: int = 50
    sink_offset: int = 5
    reference_stride: int = 1
    use_sink: bool = True
    num_inference_steps: int = 4
    shift: float | None = None
    guidance_scale: float = 1.0
    guidance_drop: tuple[str, ...] = ("text",)
    ablate: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("guidance_drop", "ablate"):
                value = _drops(owner, value, f.name)
            elif f.name == "shift":
                value = check_option(owner, f.name, value, "float", optional=True)
            else:
                value = check_option(owner, f.name, value, _kind(f.type))
            object.__setattr__(self, f.name, value)
        if self.chunk_frames < 1 or self.num_inference_steps < 1:
            raise InvalidOptionError(
                f"{owner}: chunk_frames and num_inference_steps must be >= 1, got "
                f"{self.chunk_frames} and {self.num_inference_steps}."
            )
        if self.history < 0 or self.max_references < 0:
            raise InvalidOptionError(
                f"{owner}: history and max_references must be >= 0, got {self.history} and "
                f"{self.max_references}."
            )

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The settings' names (the keys a preset's ``sampling`` group and overrides may use)."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], **overrides: Any) -> SamplingSettings:
        """Settings from a preset group or a saved folder, with overrides.

        Raises:
            UnknownOptionError: If a key is not a setting (with "Did you mean").
            InvalidOptionError: If a value has the wrong type.
        """
        merged = {**values, **overrides}
        check_option_keys(cls.__name__, merged, cls.field_names())
        return cls(**merged)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values (``guidance_drop`` as a list)."""
        out = dataclasses.asdict(self)
        out["guidance_drop"] = list(self.guidance_drop)
        out["ablate"] = list(self.ablate)
        return out


def _kind(annotation: Any) -> str:
    return {"int": "int", "bool": "bool", "float": "float"}[str(annotation)]


def _drops(owner: str, value: Any, key: str = "guidance_drop") -> tuple[str, ...]:
    """``guidance_drop`` / ``ablate`` as a tuple of known condition names (one name alone is
    taken as one)."""
    names = (value,) if isinstance(value, str) else value
    if not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
        raise InvalidOptionError(
            f"{owner}: {key} must be a list of condition names from {list(CONDITIONS)}, "
            f"got {type(value).__name__} {value!r}."
        )
    return tuple(check_name(f"{key} condition", n, CONDITIONS) for n in names)
