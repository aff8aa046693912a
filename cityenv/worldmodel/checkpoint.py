"""The diffusion world model's folder format: ``save_pretrained`` / ``from_pretrained``.

A model folder holds::

    config.json     {"_class_name": "DiffusionWorldModel",
                     "sampling": {SamplingSettings fields},
                     "text_encoder": {make_text_encoder arguments: kind, path, max_length, ...},
                     "trained": {"frame_size": [W, H], "chunk_frames": L,    (optional)
                                 "stage": "transformer", "steps": N}}
    transformer/    CityDiT (diffusers config.json + safetensors)
    vae/            AutoencoderKLWan (diffusers config.json + safetensors)
    scheduler/      FlowMatchEulerDiscreteScheduler (scheduler_config.json)

The text encoder is not copied: its kind and local path are recorded. Folders written before the
settings were renamed ``SamplingSettings`` say ``"rollout"`` for ``"sampling"``; they load the
same. Weights are read from safetensors only: a folder holding pickled weights is refused.

``"trained"`` (:class:`TrainedOn`) records what the model was trained on; the training app writes
it. A model that records a frame size or a chunk length refuses others
(:meth:`~cityenv.worldmodel.diffusion.DiffusionWorldModel.check_settings`) and makes frames of its
own size by default. Folders without it (random presets, older saves) load as before.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from safetensors import safe_open

from cityenv.errors import CheckpointError, ConfigError, TextEncoderNotFoundError, unknown_name
from cityenv.worldmodel.dit import CityDiT
from cityenv.worldmodel.settings import SamplingSettings
from cityenv.worldmodel.text import LazyTextEncoder
from cityenv.worldmodel.vae import PICKLED_WEIGHT_SUFFIXES, VideoVAE

__all__ = [
    "ModelFolder",
    "TrainedOn",
    "check_weights",
    "load_folder",
    "refuse_pickles",
    "save_folder",
    "weights_mismatch",
]

CONFIG_FILE = "config.json"
_SETTINGS_KEYS = ("sampling", "rollout")  # current name first; "rollout" in older folders
TRAINED_KEY = "trained"


@dataclass(frozen=True)
class TrainedOn:
    """What a model was trained on: the ``"trained"`` entry of its folder's ``config.json``.

    Each fact is optional (``None``: not recorded). A model that records ``frame_size`` or
    ``chunk_frames`` refuses other frame sizes and chunk lengths.

    Attributes:
        frame_size: ``(width, height)`` of the training frames, pixels.
        chunk_frames: Frames per training chunk (the model's chunk length ``L``).
        stage: The training stage that trained the transformer (``"transformer"``).
        steps: Optimiser steps of that stage when the folder was written.
    """

    frame_size: tuple[int, int] | None = None
    chunk_frames: int | None = None
    stage: str | None = None
    steps: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON entry: the recorded facts only (``frame_size`` as ``[W, H]``)."""
        out: dict[str, Any] = {}
        if self.frame_size is not None:
            out["frame_size"] = [int(v) for v in self.frame_size]
        if self.chunk_frames is not None:
            out["chunk_frames"] = int(self.chunk_frames)
        if self.stage is not None:
            out["stage"] = str(self.stage)
        if self.steps is not None:
            out["steps"] = int(self.steps)
        return out

    @classmethod
    def from_mapping(cls, values: Any, *, where: str | Path = CONFIG_FILE) -> TrainedOn:
        """Read a ``"trained"`` entry strictly (``null`` values count as not recorded).

        Args:
            values: The entry.
            where: The file it comes from, for messages.

        Raises:
            CheckpointError: If it is not a mapping, has an unknown key ("Did you mean"), or a
                value of the wrong kind: ``frame_size`` two whole numbers >= 1, ``chunk_frames``
                a whole number >= 1, ``stage`` a non-empty string, ``steps`` a whole number
                >= 0. The message names the file and the key.
        """
        if not isinstance(values, Mapping):
            raise CheckpointError(
                f"{where}: {TRAINED_KEY!r} must be a mapping (frame_size, chunk_frames, stage, "
                f"steps), got {type(values).__name__} {values!r}; fix it or remove the entry."
            )
        known = [f.name for f in fields(cls)]
        for key in values:
            if key not in known:
                raise unknown_name(
                    f"{where}: {TRAINED_KEY!r} key",
                    key,
                    known,
                    error=CheckpointError,
                    advice="Fix the key or remove it.",
                )
        return cls(
            frame_size=_frame_size(where, values.get("frame_size")),
            chunk_frames=_whole(where, "chunk_frames", values.get("chunk_frames"), low=1),
            stage=_stage(where, values.get("stage")),
            steps=_whole(where, "steps", values.get("steps"), low=0),
        )


def _bad_trained(where: str | Path, key: str, want: str, value: Any) -> CheckpointError:
    return CheckpointError(
        f"{where}: {TRAINED_KEY}.{key} must be {want}, got {type(value).__name__} {value!r}; "
        "restore the value the training app wrote, or remove the key if it is not known."
    )


def _whole(where: str | Path, key: str, value: Any, *, low: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _bad_trained(where, key, f"a whole number >= {low}", value)
    return int(value)


def _frame_size(where: str | Path, value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    ok = isinstance(value, (list, tuple)) and len(value) == 2
    if not ok or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise _bad_trained(where, "frame_size", "[width, height] in whole pixels >= 1", value)
    return int(value[0]), int(value[1])


def _stage(where: str | Path, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _bad_trained(where, "stage", "a non-empty string (e.g. 'transformer')", value)
    return value


@dataclass(eq=False)
class ModelFolder:
    """The parts read from a model folder.

    Attributes:
        path: The folder.
        transformer: The denoiser.
        vae: The video VAE.
        scheduler: The flow-matching scheduler.
        sampling: The saved :class:`SamplingSettings` values.
        text_encoder: The saved :func:`~cityenv.worldmodel.text.make_text_encoder` arguments.
        trained: What the model was trained on (``None``: the folder does not say).
    """

    path: Path
    transformer: CityDiT
    vae: VideoVAE
    scheduler: FlowMatchEulerDiscreteScheduler
    sampling: dict[str, Any]
    text_encoder: dict[str, Any]
    trained: TrainedOn | None = None


def save_folder(
    path: str | Path,
    *,
    class_name: str,
    transformer: CityDiT,
    vae: VideoVAE,
    scheduler: FlowMatchEulerDiscreteScheduler,
    settings: SamplingSettings,
    text_encoder: dict[str, Any],
    trained: TrainedOn | None = None,
) -> Path:
    """Write a model folder (see the module docstring); returns it.

    ``trained`` is written as the ``"trained"`` entry when given (left out for ``None``).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    transformer.save_pretrained(path / "transformer", safe_serialization=True)
    vae.save_pretrained(path / "vae")
    scheduler.save_pretrained(path / "scheduler")
    meta = {
        "_class_name": class_name,
        "sampling": settings.as_dict(),
        "text_encoder": dict(text_encoder),
    }
    if trained is not None:
        meta[TRAINED_KEY] = trained.as_dict()
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    return path


def load_folder(
    path: str | Path, *, class_name: str, torch_dtype: torch.dtype | None = None
) -> ModelFolder:
    """Read a model folder written by :func:`save_folder` (or by an older cityenv), strictly.

    Everything is checked before a weight is read into a model: ``config.json`` is JSON with the
    keys :func:`save_folder` writes; the ``"trained"`` entry, when there is one, holds facts of
    the right kinds (:meth:`TrainedOn.from_mapping`); the saved sampling settings can generate
    (:class:`SamplingSettings` takes them); the text encoder's kind is known and its folder, if
    one is named, exists; each part's safetensors hold exactly the tensors, of exactly the
    shapes, that its ``config.json`` describes. So a folder whose parts disagree (one transformer
    block fewer or more, another width) fails here with the keys named, not later with a
    half-random model or an error from inside diffusers.

    Raises:
        CheckpointError: If the folder has no ``config.json`` or it is not JSON, describes
            another class, lacks or garbles the settings, holds settings that cannot generate
            or pickled weights, has a garbled ``"trained"`` entry (naming the key), has
            scheduler settings that cannot sample (``num_train_timesteps`` below 1, ``shift``
            not a finite number > 0), or a part's
            config and weights disagree (the message names the missing, unexpected and
            reshaped keys).
        TextEncoderNotFoundError: If the text encoder's folder does not exist or is incomplete.
    """
    path = Path(path)
    meta = _read_config(path, class_name)
    sampling = _check_sampling(path / CONFIG_FILE, meta)
    trained = (
        TrainedOn.from_mapping(meta[TRAINED_KEY], where=path / CONFIG_FILE)
        if TRAINED_KEY in meta
        else None
    )
    _check_text_encoder(path / CONFIG_FILE, meta["text_encoder"])
    check_weights(path / "transformer", _transformer_shapes(path / "transformer"))
    check_weights(path / "vae", _vae_shapes(path / "vae"))
    _check_scheduler(path / "scheduler" / "scheduler_config.json")
    transformer = CityDiT.from_pretrained(
        path / "transformer",
        use_safetensors=True,
        local_files_only=True,
        torch_dtype=torch_dtype,
    )
    vae = VideoVAE.from_pretrained(path / "vae", torch_dtype=torch_dtype)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path / "scheduler")
    text = dict(meta["text_encoder"])
    return ModelFolder(path, transformer, vae, scheduler, sampling, text, trained)


def check_weights(folder: Path, expected: Mapping[str, tuple[int, ...]]) -> None:
    """Raise unless ``folder``'s safetensors hold exactly the tensors ``expected`` names.

    Only the files' headers are read (names and shapes), so this costs no memory.

    Args:
        folder: A diffusers model folder (``config.json`` + one or more ``*.safetensors``).
        expected: Parameter name -> shape of the model its ``config.json`` describes.

    Raises:
        CheckpointError: If there is no weights file, one cannot be read, or the names and
            shapes differ (naming the missing, unexpected and reshaped keys).
    """
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(
            f"expected safetensors weights in {folder} (written by save_pretrained), found "
            "none; copy the complete model folder again."
        )
    saved: dict[str, tuple[int, ...]] = {}
    for file in files:
        saved.update(_header_shapes(file))
    problem = weights_mismatch(expected, saved)
    if problem:
        raise CheckpointError(
            f"the weights in {folder} do not fit its config.json: {problem}. The config and the "
            "weights come from different models (an edited config.json, or files copied from "
            "another save); save the model again or restore the matching config.json."
        )


def weights_mismatch(
    expected: Mapping[str, tuple[int, ...]], saved: Mapping[str, tuple[int, ...]], few: int = 6
) -> str:
    """How two name -> shape maps differ, for a message; ``""`` when they agree.

    Args:
        expected: The model's parameters (name -> shape).
        saved: The file's tensors (name -> shape).
        few: Keys listed per kind of difference (the count is always given).

    Returns:
        ``"N missing keys [...] and M more; N unexpected keys [...]; N reshaped keys ['k:
        saved (..), model (..)']"``, the kinds without a difference left out.
    """
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    reshaped = [
        f"{k}: saved {tuple(saved[k])}, model {tuple(expected[k])}"
        for k in sorted(set(saved) & set(expected))
        if tuple(saved[k]) != tuple(expected[k])
    ]
    kinds = (("missing", missing), ("unexpected", unexpected), ("reshaped", reshaped))
    return "; ".join(
        f"{len(keys)} {label} keys {keys[:few]}"
        + (f" and {len(keys) - few} more" if len(keys) > few else "")
        for label, keys in kinds
        if keys
    )


def _header_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header."""
    try:
        with safe_open(str(file), framework="pt") as handle:
            names = handle.keys()  # a safe_open handle is not iterable
            return {k: tuple(handle.get_slice(k).get_shape()) for k in names}
    except Exception as exc:  # safetensors raises its own SafetensorError, or OSError
        raise CheckpointError(
            f"{file} cannot be read as safetensors ({exc}); the file is truncated or damaged: "
            "copy it again or save the model again."
        ) from exc


def _transformer_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """The parameter shapes of the transformer that ``folder/config.json`` describes."""
    config = _read_json(folder / "config.json", "the transformer's config")
    return _meta_shapes(folder, lambda: CityDiT.from_config(config))


def _vae_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """The parameter shapes of the VAE that ``folder/config.json`` describes."""
    config = _read_json(folder / "config.json", "the VAE's config")
    return _meta_shapes(folder, lambda: VideoVAE.from_config(config).vae)


def _meta_shapes(folder: Path, build: Callable[[], torch.nn.Module]) -> dict[str, tuple[int, ...]]:
    # Built on the meta device: shapes without memory or time, even for the 2B presets.
    try:
        with torch.device("meta"):
            module = build()
    except Exception as exc:  # the constructor's own error for a value it cannot take
        raise CheckpointError(
            f"{folder / 'config.json'} does not describe a model that can be built ({exc}); "
            "restore the config.json that save_pretrained wrote."
        ) from exc
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _read_json(path: Path, what: str) -> Any:
    """``path``'s JSON value, or a :class:`CheckpointError` saying which file is wrong."""
    if not path.is_file():
        raise CheckpointError(
            f"expected {what} at {path}, found no such file; copy the complete model folder "
            "again (config.json, transformer/, vae/, scheduler/)."
        )
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{path} ({what}) must be JSON, got a file that is not ({exc}); restore the file "
            "save_pretrained wrote."
        ) from None


def _check_scheduler(path: Path) -> None:
    """Refuse scheduler settings that cannot sample (diffusers would fail inside, or silently)."""
    values = _read_json(path, "the scheduler's settings")
    if not isinstance(values, dict):
        raise CheckpointError(
            f"{path} must hold a JSON object of scheduler settings, got a "
            f"{type(values).__name__}; restore the file save_pretrained wrote."
        )
    steps = values.get("num_train_timesteps", 1)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise CheckpointError(
            f"{path}: num_train_timesteps must be a whole number >= 1, got {steps!r}; restore "
            "the value the model was trained with (1000 by default)."
        )
    shift = values.get("shift", 1.0)
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not 0 < shift < math.inf:
        raise CheckpointError(
            f"{path}: shift must be a finite number > 0, got {shift!r}; restore the value the "
            "model was trained with (1.0 by default)."
        )


def _read_config(path: Path, class_name: str) -> dict[str, Any]:
    meta_path = path / CONFIG_FILE
    if not meta_path.is_file():
        raise CheckpointError(
            f"expected a world-model folder with config.json (written by "
            f"{class_name}.save_pretrained) at {path}; none is there."
        )
    refuse_pickles(path)
    meta = _read_json(meta_path, "the world model's config")
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{meta_path} must hold a JSON object (_class_name, sampling, text_encoder), got "
            f"a {type(meta).__name__}; restore the file save_pretrained wrote."
        )
    if meta.get("_class_name") != class_name:
        raise CheckpointError(
            f"{meta_path} describes a {meta.get('_class_name')!r}, not a {class_name}."
        )
    missing = [k for k in ("text_encoder",) if k not in meta]
    if not any(k in meta for k in _SETTINGS_KEYS):
        missing.insert(0, "sampling")
    if missing:
        raise CheckpointError(
            f"{meta_path} lacks {missing}; expected the keys save_pretrained writes "
            f"(_class_name, sampling, text_encoder). Save the model again."
        )
    return meta


def _check_sampling(meta_path: Path, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The saved sampling settings, checked to be settings that can generate."""
    key = next(k for k in _SETTINGS_KEYS if k in meta)
    values = meta[key]
    if not isinstance(values, Mapping):
        raise CheckpointError(
            f"{meta_path}: {key!r} must be a mapping of SamplingSettings, got "
            f"{type(values).__name__} {values!r}; save the model again."
        )
    try:
        SamplingSettings.from_mapping(values)
    except ConfigError as exc:
        raise CheckpointError(
            f"{meta_path}: the saved {key!r} settings cannot generate: {exc} Fix the value in "
            "config.json or save the model again."
        ) from exc
    return dict(values)


def _check_text_encoder(meta_path: Path, spec: Any) -> None:
    """The saved text encoder's kind is known and its folder, if one is named, is complete."""
    if not isinstance(spec, Mapping):
        raise CheckpointError(
            f"{meta_path}: 'text_encoder' must be a mapping (kind, path, max_length), got "
            f"{type(spec).__name__} {spec!r}; save the model again."
        )
    try:
        LazyTextEncoder(spec)  # checks the kind, the length and the folder; loads nothing
    except FileNotFoundError as exc:
        raise TextEncoderNotFoundError(
            f"{meta_path} names a text encoder that cannot be found: {exc}. Put the folder "
            "there, or set text_encoder.path in config.json to where it is."
        ) from exc
    except (ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{meta_path}: 'text_encoder' is not a text encoder spec: {exc}"
        ) from exc


def refuse_pickles(path: Path) -> None:
    """Raise :class:`CheckpointError` if any file under ``path`` holds pickled weights."""
    pickled = sorted(p for p in path.rglob("*") if p.suffix in PICKLED_WEIGHT_SUFFIXES)
    if pickled:
        raise CheckpointError(
            f"{path} holds pickled weights ({', '.join(str(p.name) for p in pickled[:3])}); "
            "pickles can run code when loaded, so cityenv loads safetensors only. Convert them "
            "(e.g. load with torch.load(weights_only=True) and save_pretrained(..., "
            "safe_serialization=True)) and remove the pickled files."
        )
