"""Where cityenv keeps what it builds or downloads once: the cache folder.

Used by the library (the built-in town's database) and by the apps (training and evaluation
caches), so it sits below both.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """The cache folder: ``$CITYENV_CACHE``, else ``~/.cache/cityenv`` (not created here)."""
    env = os.environ.get("CITYENV_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cityenv"
