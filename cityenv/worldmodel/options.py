"""Typed, checked options of the world models' factories (the environment's
``world_model_options``).

The environment passes ``world_model_options`` (a mapping, from Python or a Hydra config) to the
factory of the world model it was asked for: :meth:`WarpWorldModel.create
<cityenv.worldmodel.warp.WarpWorldModel.create>` takes :class:`WarpOptions`,
:meth:`DiffusionWorldModel.create <cityenv.worldmodel.diffusion.DiffusionWorldModel.create>`
:class:`DiffusionOptions`. Each accepts the dataclass or a mapping of its fields; an unknown key
raises :class:`~cityenv.errors.UnknownOptionError` with "Did you mean", a value of the wrong type
:class:`~cityenv.errors.InvalidOptionError` naming the option.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cityenv.errors import InvalidOptionError
from cityenv.worldmodel.settings import SamplingSettings, check_option, check_option_keys

__all__ = ["DiffusionOptions", "WarpOptions"]

_T = TypeVar("_T")


def _coerce(cls: type[_T], options: Any, kwargs: Mapping[str, Any]) -> _T:
    """``options`` (a ``cls``, a mapping or ``None``) and keyword options as one ``cls``."""
    if isinstance(options, cls):
        if kwargs:
            return dataclasses.replace(options, **kwargs)  # type: ignore[type-var]
        return options
    if options is not None and not isinstance(options, Mapping):
        raise InvalidOptionError(
            f"{cls.__name__}: expected a {cls.__name__} or a mapping of its fields, got "
            f"{type(options).__name__}."
        )
    return cls.from_mapping({**(options or {}), **kwargs})  # type: ignore[attr-defined]


@dataclass(frozen=True)
class WarpOptions:
    """Options of the warp world model (:class:`~cityenv.worldmodel.warp.WarpWorldModel`).

    Attributes:
        max_extra_references: At most this many references beyond the nearest are splatted into
            a frame to fill its holes (>= 0).
        hole_threshold: A frame gets another reference while more than this fraction of its
            pixels lies in holes wider than two pixels (in ``[0, 1]``).
        cache_size: Number of references kept resized for the frame size (>= 0).

    Raises:
        InvalidOptionError: If a value has the wrong type or is out of range.
    """

    max_extra_references: int = 1
    hole_threshold: float = 0.02
    cache_size: int = 64

    def __post_init__(self) -> None:
        owner = "warp world model"
        extra = check_option(owner, "max_extra_references", self.max_extra_references, "int")
        threshold = check_option(owner, "hole_threshold", self.hole_threshold, "float")
        cache = check_option(owner, "cache_size", self.cache_size, "int")
        if extra < 0 or not 0.0 <= threshold <= 1.0 or cache < 0:
            raise InvalidOptionError(
                f"{owner}: max_extra_references must be >= 0, hole_threshold in [0, 1] and "
                f"cache_size >= 0, got {extra!r}, {threshold!r} and {cache!r}."
            )
        object.__setattr__(self, "hole_threshold", threshold)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> WarpOptions:
        """Options from a mapping of their fields.

        Raises:
            UnknownOptionError: If a key is not an option (with "Did you mean").
            InvalidOptionError: If a value has the wrong type or is out of range.
        """
        check_option_keys("warp world model", values, [f.name for f in dataclasses.fields(cls)])
        return cls(**values)

    @classmethod
    def coerce(cls, options: WarpOptions | Mapping[str, Any] | None = None, /, **kwargs: Any):
        """A :class:`WarpOptions` from itself, a mapping, or keywords (``kwargs`` win)."""
        return _coerce(cls, options, kwargs)


@dataclass(frozen=True)
class DiffusionOptions:
    """Options of the diffusion world model's factory
    (:meth:`~cityenv.worldmodel.diffusion.DiffusionWorldModel.create`).

    As a mapping the sampling overrides may also be given flat (``{"preset": "tiny",
    "num_inference_steps": 2}``), as the environment's ``world_model_options`` and the rollout
    app's ``+world_model_options.history=2`` give them.

    Attributes:
        path: A folder written by ``save_pretrained``; ``None`` = random weights of ``preset``,
            or without a preset the shipped model (:mod:`cityenv.worldmodel.shipped`).
        preset: The preset for random weights (``configs/worldmodel/<preset>.yaml``); ``None``
            (with no ``path``) = the shipped, trained model.
        seed: Seeds random weights.
        device: Where the model runs (``"cpu"``, ``"cuda:0"``, a ``torch.device``); ``None`` =
            CUDA when available.
        torch_dtype: Weight dtype (``"bfloat16"`` or a ``torch.dtype``); ``None`` = as stored /
            float32.
        sampling: :class:`~cityenv.worldmodel.settings.SamplingSettings` overrides.

    Raises:
        InvalidOptionError: If a value has the wrong type.
        UnknownOptionError: If ``sampling`` names an unknown setting (with "Did you mean").
    """

    path: str | os.PathLike[str] | None = None
    preset: str | None = None
    seed: int = 0
    device: Any = None
    torch_dtype: Any = None
    sampling: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        owner = "diffusion world model"
        if self.path is not None and not isinstance(self.path, (str, os.PathLike)):
            raise InvalidOptionError(
                f"{owner}: path must be a folder path (str) or null, got "
                f"{type(self.path).__name__} {self.path!r}."
            )
        if self.preset is not None:
            check_option(owner, "preset", self.preset, "str")
        check_option(owner, "seed", self.seed, "int")
        for key in ("device", "torch_dtype"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, str) or _is_torch(value)):
                raise InvalidOptionError(
                    f"{owner}: {key} must be a name (str), a torch.{key.removeprefix('torch_')} "
                    f"or null, got {type(value).__name__} {value!r}."
                )
        if not isinstance(self.sampling, Mapping):
            raise InvalidOptionError(
                f"{owner}: sampling must be a mapping of SamplingSettings overrides, got "
                f"{type(self.sampling).__name__}."
            )
        check_option_keys(owner, self.sampling, SamplingSettings.field_names())
        object.__setattr__(self, "sampling", dict(self.sampling))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> DiffusionOptions:
        """Options from a mapping: its own fields, plus sampling overrides given flat.

        Raises:
            UnknownOptionError: If a key is neither an option nor a sampling setting.
            InvalidOptionError: If a value has the wrong type.
        """
        own = [f.name for f in dataclasses.fields(cls)]
        check_option_keys("diffusion world model", values, [*own, *SamplingSettings.field_names()])
        kwargs = {k: v for k, v in values.items() if k in own}
        flat = {k: v for k, v in values.items() if k not in own}
        if flat:
            kwargs["sampling"] = {**dict(kwargs.get("sampling") or {}), **flat}
        return cls(**kwargs)

    @classmethod
    def coerce(
        cls, options: DiffusionOptions | Mapping[str, Any] | None = None, /, **kwargs: Any
    ) -> DiffusionOptions:
        """A :class:`DiffusionOptions` from itself, a mapping, or keywords (``kwargs`` win)."""
        return _coerce(cls, options, kwargs)


def _is_torch(value: Any) -> bool:
    """Whether ``value`` is a torch object (a dtype or device) without importing torch here."""
    return type(value).__module__.split(".")[0] == "torch"
