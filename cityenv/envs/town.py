"""The built-in town's street-view database, generated on first use and cached.

``CityWorld-Town-v0`` needs no data from the user: the first time it is made, the procedural town
of :mod:`carla_tools.town` is captured by the data generator (:mod:`carla_tools.generate`,
references only, no target clips) into ``$CITYENV_CACHE/town-seed<seed>-v<format>/citydb``
(``CITYENV_CACHE`` defaults to ``~/.cache/cityenv``), with a progress bar. Later uses open the
cached database. The build runs in a temporary folder that is renamed into place, under a file
lock, so the workers of an asynchronous vector environment that start together build it once.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from cityenv.citydb.format import FORMAT_VERSION

__all__ = ["TownSpec", "build_town_db", "cache_dir", "town_db_path"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TownSpec:
    """What the cached town database holds.

    Attributes:
        seed: Seed of the procedural town (layout, buildings, traffic).
        blocks: City blocks ``(east, north)``; ``(2, 2)`` is about 1 km of road.
        size: Width and height of each reference view, pixels.
        spacing_m: Distance between reference captures along a lane, metres.
    """

    seed: int = 0
    blocks: tuple[int, int] = (2, 2)
    size: int = 256
    spacing_m: float = 10.0

    @property
    def folder_name(self) -> str:
        """``town-seed<seed>-v<format>``, plus the sizes when they are not the defaults."""
        name = f"town-seed{self.seed}-v{FORMAT_VERSION}"
        if (self.blocks, self.size, self.spacing_m) != (TownSpec.blocks, 256, 10.0):
            name += f"-{self.blocks[0]}x{self.blocks[1]}-{self.size}px-{self.spacing_m:g}m"
        return name


def cache_dir() -> Path:
    """The cache folder: ``$CITYENV_CACHE``, else ``~/.cache/cityenv``."""
    env = os.environ.get("CITYENV_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cityenv"


def town_db_path(spec: TownSpec | None = None) -> Path:
    """Where the town database of ``spec`` is cached (``<cache>/<folder_name>/citydb``)."""
    return cache_dir() / (spec or TownSpec()).folder_name / "citydb"


def build_town_db(
    path: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
    blocks: tuple[int, int] = (2, 2),
    size: int = 256,
    spacing_m: float = 10.0,
    workers: int = 0,
) -> Path:
    """Build the town's street-view database, or return the cached one.

    Args:
        path: The database folder to create; ``None`` for the cache (:func:`town_db_path`).
        seed: Seed of the procedural town.
        progress: Show a progress bar while rendering.
        blocks: City blocks ``(east, north)``.
        size: Reference view size, pixels.
        spacing_m: Reference spacing along lanes, metres.
        workers: Render processes; 0 (the default) renders in this process, which is safe
            inside daemonic workers (an asynchronous vector environment's) and in scripts
            without a ``__main__`` guard.

    Returns:
        The database folder (holding ``manifest.json``).
    """
    spec = TownSpec(int(seed), (int(blocks[0]), int(blocks[1])), int(size), float(spacing_m))
    target = Path(path) if path is not None else town_db_path(spec)
    if (target / "manifest.json").is_file():
        return target
    from filelock import FileLock  # a torch / huggingface dependency; only needed to build

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.with_name(target.name + ".lock"))):
        if not (target / "manifest.json").is_file():  # another process may have built it
            _build(spec, target, progress, workers)
    return target


def _build(spec: TownSpec, target: Path, progress: bool, workers: int) -> None:
    """Generate into a temporary sibling folder, then rename its database into place."""
    from carla_tools.generate import (
        ClipSettings,
        GenerateSettings,
        ReferenceSettings,
        SimSettings,
        generate,
    )

    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("building the town database %s (first use; takes under a minute)", target)
    t0 = time.perf_counter()
    generate(
        GenerateSettings(
            out=tmp,
            sim=SimSettings("town", {"seed": spec.seed, "blocks": list(spec.blocks)}),
            references=ReferenceSettings(spacing_m=spec.spacing_m, size=spec.size),
            clips=ClipSettings(count=0),
            seed=spec.seed,
            workers=workers,
            city="procedural-town",
            progress=progress,
        )
    )
    if target.exists():  # left by a build that died before committing its manifest
        shutil.rmtree(target)
    os.replace(tmp / "citydb", target)  # atomic on one file system
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("town database ready in %.1f s", time.perf_counter() - t0)
