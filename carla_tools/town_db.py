"""The built-in town's street-view database: the ``town`` city provider of cityenv.

``CityWorld-Town-v0`` needs no data from the user: the first time it is made, the procedural
town of :mod:`carla_tools.town` is captured by the data generator (:mod:`carla_tools.generate`,
references only, no target clips) into ``$CITYENV_CACHE/<TownSpec.folder_name>/citydb``
(:func:`cityenv.envs.town.town_db_path`; ``CITYENV_CACHE`` defaults to ``~/.cache/cityenv``),
with a progress bar. Later uses open the cached database. The build runs in a temporary folder
that is renamed into place, under a file lock, so the workers of an asynchronous vector
environment that start together build it once.

cityenv finds :func:`town_provider` through the entry point
``[project.entry-points."cityenv.cities"] town = "carla_tools.town_db:town_provider"``
(:data:`cityenv.envs.cities.CITY_PROVIDERS`); the library never imports this module.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import shutil
import time
from pathlib import Path

from cityenv.envs.town import TownSpec, town_db_path
from cityenv.errors import CityDataNotFoundError

__all__ = ["build_town_db", "town_provider"]

log = logging.getLogger(__name__)


def town_provider(options: TownSpec | None = None, *, progress: bool = True) -> Path:
    """The ``town`` city provider: the cached database of ``options``, built on first use.

    Args:
        options: What the database holds; ``None`` = the default :class:`TownSpec`.
        progress: Show a progress bar while rendering.

    Returns:
        The database folder (holding ``manifest.json``).
    """
    return build_town_db(options, progress=progress)


def build_town_db(
    spec: TownSpec | None = None,
    path: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
    workers: int = 0,
) -> Path:
    """Build the town's street-view database, or return the cached one.

    Args:
        spec: What the database holds (seed, blocks, view size, spacing); ``None`` = defaults.
        path: The database folder to create; ``None`` for the cache (:func:`town_db_path`).
        progress: Show a progress bar while rendering.
        workers: Render processes; 0 (the default) renders in this process, which is safe
            inside daemonic workers (an asynchronous vector environment's) and in scripts
            without a ``__main__`` guard.

    Returns:
        The database folder (holding ``manifest.json``).

    Raises:
        CityDataNotFoundError: If it must be built but the ``town`` extra (moderngl) is missing.
        ConfigError: If ``spec`` holds a value :class:`TownSpec` refuses (zero blocks).
    """
    # A copy re-runs TownSpec's checks: a spec edited after it was made (blocks = [0, 0]) is
    # refused here with a ConfigError, before a folder is made.
    spec = dataclasses.replace(spec) if spec is not None else TownSpec()
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
    _check_renderer(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("building the town database %s (first use; takes under a minute)", target)
    t0 = time.perf_counter()
    try:
        _generate_into(tmp, spec, progress, workers)
    except BaseException:  # a failed or interrupted build leaves no temporary folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():  # left by a build that died before committing its manifest
        shutil.rmtree(target)
    os.replace(tmp / "citydb", target)  # atomic on one file system
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("town database ready in %.1f s", time.perf_counter() - t0)


def _generate_into(tmp: Path, spec: TownSpec, progress: bool, workers: int) -> None:
    """Run the data generator for ``spec``'s references (no target clips) into ``tmp``."""
    # Imported here: a cached database opens without the generator (and without moderngl).
    from carla_tools.generate import (
        ClipSettings,
        GenerateSettings,
        ReferenceSettings,
        SimSettings,
        generate,
    )

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


def _check_renderer(target: Path) -> None:
    """Say which extra to install when the town's renderer (moderngl) is missing."""
    if importlib.util.find_spec("moderngl") is None:
        raise CityDataNotFoundError(
            f"the built-in town's database must be built into {target} on first use, which "
            "renders the procedural town with moderngl, got no moderngl installed; install the "
            "extra with pip install 'cityenv[town]' (or pass city_db=PATH of a built CityDB)."
        )
