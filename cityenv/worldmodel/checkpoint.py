"""The diffusion world model's folder format: ``save_pretrained`` / ``from_pretrained``.

A model folder holds::

    config.json     {"_class_name": "DiffusionWorldModel",
                     "sampling": {SamplingSettings fields},
                     "text_encoder": {make_text_encoder arguments: kind, path, max_length, ...}}
    transformer/    CityDiT (diffusers config.json + safetensors)
    vae/            AutoencoderKLWan (diffusers config.json + safetensors)
    scheduler/      FlowMatchEulerDiscreteScheduler (scheduler_config.json)

The text encoder is not copied: its kind and local path are recorded. Folders written before the
settings were renamed ``SamplingSettings`` say ``"rollout"`` for ``"sampling"``; they load the
same. Weights are read from safetensors only: a folder holding pickled weights is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from cityenv.errors import CheckpointError
from cityenv.worldmodel.dit import CityDiT
from cityenv.worldmodel.settings import SamplingSettings
from cityenv.worldmodel.vae import PICKLED_WEIGHT_SUFFIXES, VideoVAE

__all__ = ["ModelFolder", "load_folder", "refuse_pickles", "save_folder"]

CONFIG_FILE = "config.json"
_SETTINGS_KEYS = ("sampling", "rollout")  # current name first; "rollout" in older folders


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
    """

    path: Path
    transformer: CityDiT
    vae: VideoVAE
    scheduler: FlowMatchEulerDiscreteScheduler
    sampling: dict[str, Any]
    text_encoder: dict[str, Any]


def save_folder(
    path: str | Path,
    *,
    class_name: str,
    transformer: CityDiT,
    vae: VideoVAE,
    scheduler: FlowMatchEulerDiscreteScheduler,
    settings: SamplingSettings,
    text_encoder: dict[str, Any],
) -> Path:
    """Write a model folder (see the module docstring); returns it."""
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
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    return path


def load_folder(
    path: str | Path, *, class_name: str, torch_dtype: torch.dtype | None = None
) -> ModelFolder:
    """Read a model folder written by :func:`save_folder` (or by an older cityenv).

    Raises:
        CheckpointError: If the folder has no ``config.json``, describes another class, lacks
            the settings, or holds pickled weights.
    """
    path = Path(path)
    meta = _read_config(path, class_name)
    transformer = CityDiT.from_pretrained(
        path / "transformer",
        use_safetensors=True,
        local_files_only=True,
        torch_dtype=torch_dtype,
    )
    vae = VideoVAE.from_pretrained(path / "vae", torch_dtype=torch_dtype)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path / "scheduler")
    sampling = next(meta[k] for k in _SETTINGS_KEYS if k in meta)
    return ModelFolder(path, transformer, vae, scheduler, dict(sampling), meta["text_encoder"])


def _read_config(path: Path, class_name: str) -> dict[str, Any]:
    meta_path = path / CONFIG_FILE
    if not meta_path.is_file():
        raise CheckpointError(
            f"expected a world-model folder with config.json (written by "
            f"{class_name}.save_pretrained) at {path}; none is there."
        )
    refuse_pickles(path)
    meta = json.loads(meta_path.read_text())
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
