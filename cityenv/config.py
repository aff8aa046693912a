"""Where the Hydra configs live.

The top-level ``configs/`` folder of a source checkout is linked into the package as
``cityenv/configs`` (a symlink in the repository, a real folder inside a built wheel), so entry
points find the same configs from a checkout, an editable install and an installed wheel.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def config_dir() -> Path:
    """The folder holding cityenv's Hydra configs (``configs/`` of the repository)."""
    if not CONFIG_DIR.is_dir():
        raise FileNotFoundError(
            f"cityenv's configs were expected at {CONFIG_DIR} but that folder is missing; "
            "reinstall the package (pip install cityenv) or restore configs/ in your checkout"
        )
    return CONFIG_DIR
