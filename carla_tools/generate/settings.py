"""The generator's settings: typed dataclasses, the single source of every default.

They are plain dataclasses (the Python API: ``generate(GenerateSettings(out=...))``) and, with
field types Hydra understands, also the schema of ``python -m carla_tools.generate``
(:mod:`carla_tools.generate.config` registers them in Hydra's ConfigStore): a command-line key is
a field path (``clips.count=1000``), ``configs/generate.yaml`` and the presets hold only values
that differ from these defaults. Hydra checks types and rejects unknown keys; ``__post_init__``
checks values and names, so the Python API and the command line fail alike, before any work.

Times are held as ISO 8601 UTC text (``"2024-05-01T03:00:00Z"``: YAML and the command line give
text, and Hydra has no datetime type); datetimes given to the Python API (naive = UTC) are
converted, and ``capture_times`` / ``start_times`` give them back as aware UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from carla_tools.backends import BACKENDS
from carla_tools.conditions import WEATHERS
from carla_tools.generate.trajectories import KINDS
from cityenv.citydb.format import IMAGE_FORMATS
from cityenv.errors import check_name

__all__ = ["ClipSettings", "GenerateSettings", "ReferenceSettings", "SimSettings", "parse_time"]


def parse_time(value: str | datetime, key: str) -> datetime:
    """An aware UTC datetime from a datetime or ISO 8601 text (``Z`` and naive mean UTC).

    Raises:
        ValueError: If ``value`` is neither; the message names ``key``.
    """
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"{key} must hold ISO 8601 times such as '2024-05-01T03:00:00Z', got {value!r}."
            ) from None
    if not isinstance(value, datetime):
        raise ValueError(
            f"{key} must hold datetimes or ISO 8601 text, got {type(value).__name__} {value!r}."
        )
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _times(values: Iterable[str | datetime], key: str) -> tuple[str, ...]:
    """Times as canonical ISO 8601 UTC text, checked."""
    if isinstance(values, (str, datetime)):
        values = (values,)  # one time given where a list was expected
    times = tuple(_iso(parse_time(v, key)) for v in values)
    if not times:
        raise ValueError(f"{key} must hold at least one time, got none.")
    return times


def _names(values: Iterable[str] | str, key: str, choices: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        values = (values,)
    names = tuple(check_name(key, v, choices) for v in values)
    if not names:
        raise ValueError(f"{key} must name at least one of {sorted(choices)}, got none.")
    return names


def _at_least(key: str, value: float, low: float, *, strict: bool = False) -> None:
    if value < low or (strict and value == low):
        raise ValueError(f"{key} must be {'>' if strict else '>='} {low}, got {value!r}.")


@dataclass
class SimSettings:
    """Which world to capture.

    Attributes:
        backend: Simulator backend name (``"town"`` or ``"carla"``, see
            :data:`carla_tools.backends.BACKENDS`).
        options: Keyword arguments of the backend (the town's: ``seed``, ``blocks``,
            ``vehicle_density``, ``pedestrian_density``; CARLA's: ``host``, ``port``, ...).
    """

    backend: str = "town"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.backend = check_name("sim.backend", self.backend, BACKENDS.names())
        self.options = dict(self.options)


@dataclass
class ReferenceSettings:
    """Street-view reference captures (the CityDB).

    Attributes:
        spacing_m: Distance between capture points along each lane centre, metres.
        dedupe_m: Drop points closer than this to a kept one (None: ``0.7 * spacing_m``).
        camera_height: Camera height above the road, metres.
        size: Width and height of each view, pixels (square views).
        fov_deg: Field of view of each view, degrees (8 views at 45-degree steps).
        times: Capture times, ISO 8601 UTC text (or datetimes, converted); each is one
            reference capture run (a traversal). The default, 03:00Z, is noon in Seoul.
        weather: Weather of the captures.
        image_format: CityDB image encoding (``"png"``, lossless, or ``"jpeg"``).
    """

    spacing_m: float = 10.0
    dedupe_m: float | None = None
    camera_height: float = 2.5
    size: int = 256
    fov_deg: float = 90.0
    times: tuple[str, ...] = ("2024-05-01T03:00:00Z",)
    weather: str = "clear"
    image_format: str = "png"

    @property
    def capture_times(self) -> tuple[datetime, ...]:
        """:attr:`times` as aware UTC datetimes."""
        return tuple(parse_time(t, "references.times") for t in self.times)

    def __post_init__(self) -> None:
        _at_least("references.spacing_m", self.spacing_m, 0.0, strict=True)
        _at_least("references.size", self.size, 1)
        _at_least("references.fov_deg", self.fov_deg, 0.0, strict=True)
        self.times = _times(self.times, "references.times")
        self.weather = check_name("references.weather", self.weather, WEATHERS)
        self.image_format = check_name("references.image_format", self.image_format, IMAGE_FORMATS)


@dataclass
class ClipSettings:
    """Target clips (the clip store).

    Attributes:
        count: Number of clips.
        num_frames: Frames per clip.
        fps: Frame rate.
        width: Frame width, pixels.
        height: Frame height, pixels.
        fov_deg: Horizontal field of view, degrees.
        kinds: Trajectory kinds (``vehicle``, ``pedestrian``, ``free``), taken round-robin.
        times: Base start times, ISO 8601 UTC text (or datetimes, converted), other than the
            reference times (cross-temporal pairing).
        weathers: Weathers (``clear``, ``overcast``, ``wet``, ``fog``), cycled.
        time_jitter_s: Largest random offset added to a clip's base time, seconds.
    """

    count: int = 20
    num_frames: int = 49
    fps: float = 10.0
    width: int = 256
    height: int = 256
    fov_deg: float = 90.0
    kinds: tuple[str, ...] = ("vehicle", "pedestrian", "free")
    times: tuple[str, ...] = ("2024-05-01T09:30:00Z",)
    weathers: tuple[str, ...] = ("clear", "overcast", "wet", "fog")
    time_jitter_s: float = 900.0

    @property
    def start_times(self) -> tuple[datetime, ...]:
        """:attr:`times` as aware UTC datetimes."""
        return tuple(parse_time(t, "clips.times") for t in self.times)

    def __post_init__(self) -> None:
        _at_least("clips.count", self.count, 0)
        _at_least("clips.num_frames", self.num_frames, 2)
        _at_least("clips.fps", self.fps, 0.0, strict=True)
        _at_least("clips.width", self.width, 1)
        _at_least("clips.height", self.height, 1)
        _at_least("clips.fov_deg", self.fov_deg, 0.0, strict=True)
        _at_least("clips.time_jitter_s", self.time_jitter_s, 0.0)
        self.kinds = _names(self.kinds, "clips.kinds", KINDS)
        self.times = _times(self.times, "clips.times")
        self.weathers = _names(self.weathers, "clips.weathers", WEATHERS)


@dataclass
class GenerateSettings:
    """Everything one generator run needs.

    Attributes:
        out: Output folder (required; held as a Path): ``citydb/``, ``clips/``, ``references/``,
            ``split.json``.
        sim: The world.
        references: Reference captures.
        clips: Target clips.
        cell_m: Edge of the square area cells of the train / test split, metres.
        test_fraction: Expected fraction of test cells.
        seed: Seed of the plan (trajectories, clip times, the area split).
        workers: Worker processes that render (0 renders in this process).
        shard: Index of this shard in ``[0, num_shards)``.
        num_shards: Number of shards the work is split into (cluster jobs).
        city: City name stored in the CityDB.
        progress: Show progress bars.
    """

    out: str | Path
    sim: SimSettings = field(default_factory=SimSettings)
    references: ReferenceSettings = field(default_factory=ReferenceSettings)
    clips: ClipSettings = field(default_factory=ClipSettings)
    cell_m: float = 100.0
    test_fraction: float = 0.2
    seed: int = 0
    workers: int = 0
    shard: int = 0
    num_shards: int = 1
    city: str = "procedural-town"
    progress: bool = True

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        _at_least("cell_m", self.cell_m, 0.0, strict=True)
        if not 0.0 <= self.test_fraction <= 1.0:
            raise ValueError(f"test_fraction must lie in [0, 1], got {self.test_fraction!r}.")
        _at_least("workers", self.workers, 0)
        _at_least("num_shards", self.num_shards, 1)
        if not 0 <= self.shard < self.num_shards:
            raise ValueError(
                f"shard must lie in [0, num_shards={self.num_shards}), got {self.shard}."
            )
