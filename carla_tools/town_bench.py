"""Town-Bench: the built-in town's evaluation data, the ``town`` bench provider of cityenv.eval.

``python -m cityenv.eval bench=town`` needs no data from the user: on first use the procedural
town of :mod:`carla_tools.town` is captured by the data generator (:mod:`carla_tools.generate`)
into ``$CITYENV_CACHE/<TownBenchSpec.folder_name>/`` (``citydb/`` + ``clips/``;
``CITYENV_CACHE`` defaults to ``~/.cache/cityenv``), with progress bars. Later uses open the
cached folder. As the town database (:mod:`carla_tools.town_db`), the build runs in a temporary
folder renamed into place under a file lock.

What it holds (the defaults, about a minute on 2 CPU cores):

- references every 10 m of lane at noon (03:00Z, 128 x 128 views, clear weather);
- clips of about ``distance_m`` = 100 m at 128 x 128, ``num_frames`` = 49 frames: vehicle,
  pedestrian and free-camera trajectories in the morning, afternoon, at dusk and at night, in
  clear, overcast, wet and foggy weather, never at the references' time. Each kind moves at its
  own speed, so each kind gets its own frame rate (``(num_frames - 1) x speed / distance_m``):
  the generator renders each kind as one shard of a three-shard run (shards share the plan of
  references and the area split, and their clip ids never collide), then merges the shards'
  reference databases;
- an area split of 200 m cells, 70 % of them held out (``split=test``): the bench replays
  test-split clips only (``configs/eval/bench/town.yaml``). Train a model for Town-Bench on data
  generated with the same town and split (``sim.options.blocks=[2,2] cell_m=200
  test_fraction=0.7``) so its areas stay held out.

cityenv finds :func:`town_bench_provider` through the entry point
``[project.entry-points."cityenv.benches"] town = "carla_tools.town_bench:town_bench_provider"``
(:data:`cityenv.eval.bench.BENCH_PROVIDERS`); the library never imports this module.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cityenv.citydb.format import FORMAT_VERSION
from cityenv.errors import ConfigError, unknown_name
from cityenv.paths import cache_dir

__all__ = ["TownBenchSpec", "build_town_bench", "town_bench_provider"]

log = logging.getLogger(__name__)

SPEEDS_MPS = {"vehicle": 8.0, "pedestrian": 1.4, "free": 4.5}
"""Mean speed of each kind in the generator (:data:`DEFAULT_KIND_PARAMS`), metres per second:
sets each kind's frame rate so a clip covers about ``distance_m``."""

CLIP_TIMES = (
    "2024-05-01T00:30:00Z",  # Seoul morning
    "2024-05-01T06:30:00Z",  # afternoon
    "2024-05-01T10:10:00Z",  # dusk
    "2024-05-01T14:00:00Z",  # night
)
"""Clip start times (UTC): other than the references' noon, so references are cross-temporal."""


@dataclass
class TownBenchSpec:
    """What Town-Bench holds (``bench.provider_options``): the one source of its defaults.

    Attributes:
        seed: Seed of the town and of the plan.
        blocks: City blocks ``[east, north]``.
        size: Width and height of clips and reference views, pixels.
        spacing_m: Distance between reference captures along a lane, metres.
        clips_per_kind: Clips rendered per kind (test and train areas; the bench takes the
            test ones).
        num_frames: Frames per clip.
        distance_m: Distance a clip covers, metres (about; speeds are drawn per clip).
        cell_m: Edge of the area split's square cells, metres.
        test_fraction: Expected fraction of held-out (test) cells.
    """

    seed: int = 0
    blocks: list[int] = field(default_factory=lambda: [2, 2])
    size: int = 128
    spacing_m: float = 10.0
    clips_per_kind: int = 6
    num_frames: int = 49
    distance_m: float = 100.0
    cell_m: float = 200.0
    test_fraction: float = 0.7

    def __post_init__(self) -> None:
        if len(self.blocks) != 2 or min(self.blocks) < 1:
            raise ConfigError(f"Town-Bench blocks must be [east, north] >= 1, got {self.blocks}.")
        low = {"size": 16, "clips_per_kind": 1, "num_frames": 2}
        for key, minimum in low.items():
            if int(getattr(self, key)) < minimum:
                raise ConfigError(
                    f"Town-Bench {key} must be >= {minimum}, got {getattr(self, key)!r}."
                )
        if self.spacing_m <= 0 or self.distance_m <= 0 or self.cell_m <= 0:
            raise ConfigError(
                "Town-Bench spacing_m, distance_m and cell_m must be metres > 0, got "
                f"{self.spacing_m}, {self.distance_m}, {self.cell_m}."
            )

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | TownBenchSpec | None) -> TownBenchSpec:
        """The spec of ``bench.provider_options``.

        Raises:
            ConfigError: For a key that is not a field ("Did you mean ...?") or a bad value.
        """
        if isinstance(options, TownBenchSpec):
            return options
        names = [f.name for f in dataclasses.fields(cls)]
        given = dict(options or {})
        for key in given:
            if key not in names:
                raise unknown_name("Town-Bench option", key, names, error=ConfigError)
        if "blocks" in given:
            given["blocks"] = list(given["blocks"])
        return cls(**given)

    @property
    def folder_name(self) -> str:
        """``town-bench-seed<seed>-v<format>``, plus every value that is not a default."""
        name = f"town-bench-seed{self.seed}-v{FORMAT_VERSION}"
        default = TownBenchSpec(seed=self.seed)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != getattr(default, f.name):
                text = "x".join(map(str, value)) if isinstance(value, list) else f"{value:g}"
                name += f"-{f.name}{text}"
        return name

    def fps(self, kind: str) -> float:
        """The frame rate of ``kind``'s clips: ``num_frames - 1`` steps over ``distance_m``."""
        return (self.num_frames - 1) * SPEEDS_MPS[kind] / self.distance_m


def town_bench_provider(options: Mapping[str, Any] | None = None, *, progress: bool = True) -> Path:
    """The ``town`` bench provider: the cached Town-Bench folder of ``options``, built on first
    use.

    Returns:
        The folder holding ``citydb/`` and ``clips/``.
    """
    return build_town_bench(TownBenchSpec.from_options(options), progress=progress)


def build_town_bench(
    spec: TownBenchSpec | None = None,
    path: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
) -> Path:
    """Build Town-Bench, or return the cached one.

    Args:
        spec: What it holds; ``None`` = the defaults.
        path: The folder to create; ``None`` for the cache (``<cache>/<spec.folder_name>``).
        progress: Show progress bars.

    Returns:
        The folder (``citydb/`` + ``clips/`` + ``bench.json``).
    """
    spec = spec or TownBenchSpec()
    target = Path(path) if path is not None else cache_dir() / spec.folder_name
    if (target / "bench.json").is_file():
        return target
    from filelock import FileLock  # only needed to build

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.with_name(target.name + ".lock"))):
        if not (target / "bench.json").is_file():  # another process may have built it
            _build(spec, target, progress)
    return target


def _build(spec: TownBenchSpec, target: Path, progress: bool) -> None:
    """Generate one shard per kind into a temporary sibling folder, merge, rename into place."""
    from carla_tools.generate import (
        ClipSettings,
        GenerateSettings,
        ReferenceSettings,
        SimSettings,
        generate,
    )
    from carla_tools.generate.pipeline import merge_shards
    from carla_tools.town_db import _check_renderer

    _check_renderer(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("building Town-Bench %s (first use; about a minute)", target)
    t0 = time.perf_counter()
    kinds = list(SPEEDS_MPS)
    for shard, kind in enumerate(kinds):
        generate(
            GenerateSettings(
                out=tmp,
                sim=SimSettings("town", {"seed": spec.seed, "blocks": list(spec.blocks)}),
                references=ReferenceSettings(spacing_m=spec.spacing_m, size=spec.size),
                clips=ClipSettings(
                    count=spec.clips_per_kind * len(kinds),
                    num_frames=spec.num_frames,
                    fps=spec.fps(kind),
                    width=spec.size,
                    height=spec.size,
                    kinds=(kind,),
                    times=CLIP_TIMES,
                ),
                cell_m=spec.cell_m,
                test_fraction=spec.test_fraction,
                seed=spec.seed,
                shard=shard,
                num_shards=len(kinds),
                city="procedural-town",
                progress=progress,
            )
        )
    merge_shards(tmp, progress=progress)
    shutil.rmtree(tmp / "citydb-shards")
    (tmp / "bench.json").write_text(_marker(spec))  # written last: the folder is complete
    if target.exists():  # left by a build that died before renaming
        shutil.rmtree(target)
    os.replace(tmp, target)  # atomic on one file system
    log.info("Town-Bench ready in %.1f s", time.perf_counter() - t0)


def _marker(spec: TownBenchSpec) -> str:
    import json

    fps = {kind: spec.fps(kind) for kind in SPEEDS_MPS}
    return json.dumps({"bench": "town", "spec": dataclasses.asdict(spec), "fps": fps}, indent=2)
