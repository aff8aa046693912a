"""The diffusion world model's presets: ``configs/worldmodel/<name>.yaml``.

A preset holds the parts' configs: ``vae`` (``AutoencoderKLWan`` arguments), ``transformer``
(:class:`~cityenv.worldmodel.dit.CityDiT` arguments), ``text_encoder``
(:func:`~cityenv.worldmodel.text.make_text_encoder` arguments), ``scheduler``
(``FlowMatchEulerDiscreteScheduler`` arguments) and ``sampling``
(:class:`~cityenv.worldmodel.settings.SamplingSettings`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cityenv.config import config_dir
from cityenv.errors import unknown_name

__all__ = ["PRESETS", "load_preset", "preset_names"]

#: The presets cityenv ships (a YAML file added to ``configs/worldmodel/`` is a preset too).
PRESETS = ("tiny", "small", "town", "swm-tf", "swm-sf")


def _folder() -> Path:
    return config_dir() / "worldmodel"


def preset_names() -> tuple[str, ...]:
    """The presets found in ``configs/worldmodel/`` (file names without ``.yaml``), sorted."""
    return tuple(sorted(p.stem for p in _folder().glob("*.yaml")))


def load_preset(name: str) -> dict[str, Any]:
    """The settings of a preset in ``configs/worldmodel/<name>.yaml``.

    Returns:
        A dict with ``vae``, ``transformer``, ``text_encoder``, ``scheduler`` and ``sampling``.
        (A preset file written before the rename that still says ``rollout`` for ``sampling``
        is read as ``sampling``.)

    Raises:
        UnknownNameError: If ``name`` is not a preset (with "Did you mean").
    """
    path = _folder() / f"{name}.yaml"
    if not isinstance(name, str) or "/" in name or not path.is_file():
        raise unknown_name(
            "world-model preset",
            name,
            preset_names() or PRESETS,
            advice=f"Presets are the YAML files in {_folder()}.",
        )
    cfg = yaml.safe_load(path.read_text()) or {}
    if "rollout" in cfg and "sampling" not in cfg:
        cfg["sampling"] = cfg.pop("rollout")
    return cfg
