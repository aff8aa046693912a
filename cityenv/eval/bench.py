"""A bench as data: which CityDB and clip store, which clip windows, how they are replayed.

:class:`BenchSpec` is the typed bench spec (``configs/eval/bench/*.yaml``, Hydra's ConfigStore
through :mod:`cityenv.eval.app`): the data (a CityDB + clip store of one city, or a built-in
bench from :data:`BENCH_PROVIDERS`), the clips (ids, or a filter: split, kinds, minimum length,
at most N), the window (``1 + n x chunk`` frames from a start frame), the start conditioning (the
window's first ground-truth frame), the prompt (the clip's caption, or none), the reference
exclusion (the clip's own traversal and a capture-time window around it), ``K`` and the seed.

:data:`BENCH_PROVIDERS` maps a bench name to a function that returns a folder holding
``citydb/`` and ``clips/`` (building it first if it must). ``town`` (Town-Bench, the built-in
town's) comes from ``carla_tools.town_bench`` through the entry point
``[project.entry-points."cityenv.benches"]``; the library never imports that package.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cityenv.citydb.clips import CLIP_KINDS, SPLITS, ClipInfo, ClipStore
from cityenv.errors import BenchError, ConfigError, check_name
from cityenv.eval.replay import ReplaySettings
from cityenv.registry import Registry

__all__ = [
    "BENCH_PROVIDERS",
    "PROMPTS",
    "BenchData",
    "BenchProvider",
    "BenchSpec",
    "ClipPlan",
    "resolve_bench_data",
    "select_clips",
]

PROMPTS = ("caption", "none")
"""Prompt sources: the clip's caption, or no prompt (the null text embedding)."""


class BenchProvider(Protocol):
    """Returns a folder holding a bench's ``citydb/`` and ``clips/``, building it if it must."""

    def __call__(self, options: Mapping[str, Any], *, progress: bool) -> Path:
        """The folder.

        Args:
            options: The bench's build options (``BenchSpec.provider_options``).
            progress: Show a progress bar while building.
        """
        ...


BENCH_PROVIDERS: Registry[BenchProvider] = Registry(
    "bench",
    "cityenv.benches",
    advice=(
        "Benches come from installed packages (entry-point group 'cityenv.benches'; Town-Bench "
        "'town' from carla_tools: pip install -e . in a checkout), or give bench.citydb=PATH "
        "and bench.clips=PATH."
    ),
)
"""Bench name -> provider of its data folder (entry-point group ``cityenv.benches``)."""


@dataclass
class BenchSpec:
    """What a bench replays and how (``configs/eval/bench/``); see ``docs/benchmark.md``."""

    name: str = "custom"
    """The bench's name in the report."""
    provider: str | None = None
    """A built-in bench that builds its own data (``town``: Town-Bench); else give the paths."""
    provider_options: dict[str, Any] = field(default_factory=dict)
    """Build options of the provider (Town-Bench: ``clips_per_kind``, ``size``, ...)."""
    root: str | None = None
    """A generator output folder holding ``citydb/`` and ``clips/``."""
    citydb: str | None = None
    """The CityDB the references come from (default ``ROOT/citydb``)."""
    clips: str | None = None
    """The clip store (default ``ROOT/clips``)."""
    clip_ids: list[str] | None = None
    """Exactly these clips (in this order); the filter below is then not applied."""
    split: str | None = "test"
    """Filter: clips of this split (``test`` = held-out areas; null = any)."""
    kinds: list[str] | None = None
    """Filter: clips of these kinds (vehicle, pedestrian, free; null = all)."""
    min_frames: int | None = None
    """Filter: clips of at least this many frames (default: the window's length)."""
    max_clips: int | None = None
    """At most this many clips per kind (the first by id; null = all)."""
    window_frames: int = 49
    """Frames per replayed window: a start frame and whole chunks, ``1 + n x chunk_frames``."""
    window_start: int = 0
    """The window's first frame in each clip."""
    chunk_frames: int = 12
    """Chunk length of models without their own (the warp); the diffusion model uses its own."""
    size: list[int] | None = None
    """``[width, height]`` frames are resized to (default: the clips' size)."""
    start: str = "first_frame"
    """Start conditioning: the window's first ground-truth frame (its weather and cars)."""
    prompt: str = "caption"
    """Prompt source: ``caption`` (the clip's) or ``none``."""
    num_references: int = 2
    """``K``: references retrieved per chunk."""
    cross_temporal: bool = True
    """Exclude the clip's own traversal and capture time from its references."""
    time_window_s: float = 1800.0
    """With ``cross_temporal``: panoramas within this many seconds of the clip are excluded."""
    seed: int = 0
    """Seeds every row's sampling noise (clip ``i`` of the bench gets ``seed + i``)."""
    distance_window_m: float = 25.0
    """Window of the per-distance (drift) means, metres."""

    def check(self) -> None:
        """Check what types cannot.

        Raises:
            ConfigError: For a value out of range or a bench without data.
            UnknownNameError: For an unknown split, kind, start or prompt source.
        """
        if self.split is not None:
            check_name("bench.split", self.split, SPLITS)
        for kind in self.kinds or ():
            check_name("bench.kinds", kind, CLIP_KINDS)
        check_name("bench.start", self.start, ("first_frame",))
        check_name("bench.prompt", self.prompt, PROMPTS)
        bad = {
            "bench.window_frames": self.window_frames >= 2,
            "bench.window_start": self.window_start >= 0,
            "bench.chunk_frames": self.chunk_frames >= 1,
            "bench.num_references": self.num_references >= 0,
            "bench.time_window_s": self.time_window_s >= 0,
            "bench.distance_window_m": self.distance_window_m > 0,
            "bench.max_clips": self.max_clips is None or self.max_clips >= 1,
            "bench.size": self.size is None or (len(self.size) == 2 and min(self.size) > 0),
        }
        wrong = [k for k, ok in bad.items() if not ok]
        if wrong:
            raise ConfigError(
                f"out of range: {', '.join(wrong)} (see docs/benchmark.md); got {self.as_dict()}"
            )
        if self.provider is None and self.root is None and not (self.citydb and self.clips):
            raise ConfigError(
                "a bench needs data: expected bench=town (a built-in bench), bench.root=FOLDER "
                "(a generator output with citydb/ and clips/) or bench.citydb=PATH and "
                f"bench.clips=PATH, got provider={self.provider}, root={self.root}, "
                f"citydb={self.citydb}, clips={self.clips}."
            )

    def replay_settings(self) -> ReplaySettings:
        """The replay's reference settings of this bench (rows may change ``cross_temporal``)."""
        return ReplaySettings(
            num_references=self.num_references,
            cross_temporal=self.cross_temporal,
            time_window_s=self.time_window_s,
        )

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """``(width, height)`` or ``None`` (the clips')."""
        return None if self.size is None else (int(self.size[0]), int(self.size[1]))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return asdict(self)


@dataclass(frozen=True)
class BenchData:
    """Where a bench's data is.

    Attributes:
        citydb: The CityDB folder.
        clips: The clip store folder.
    """

    citydb: Path
    clips: Path


def resolve_bench_data(spec: BenchSpec, *, progress: bool = True) -> BenchData:
    """The CityDB and clip store of ``spec``: given paths, else the provider's (built on first
    use). Paths given win over the provider's (``bench=town bench.citydb=...`` uses your DB).

    Raises:
        UnknownNameError: If ``spec.provider`` is not registered ("Did you mean ...?").
        BenchError: If a folder does not exist.
    """
    root = Path(spec.root).expanduser() if spec.root else None
    if root is None and spec.provider is not None and not (spec.citydb and spec.clips):
        root = Path(BENCH_PROVIDERS.get(spec.provider)(spec.provider_options, progress=progress))
    citydb = Path(spec.citydb).expanduser() if spec.citydb else root / "citydb"
    clips = Path(spec.clips).expanduser() if spec.clips else root / "clips"
    for key, path in (("bench.citydb", citydb), ("bench.clips", clips)):
        if not path.exists():
            raise BenchError(
                f"{key} must be an existing folder, got {str(path)!r}, which does not exist; "
                "make data with python -m carla_tools.generate out=FOLDER and give "
                "bench.root=FOLDER."
            )
    return BenchData(citydb, clips)


@dataclass(frozen=True)
class ClipPlan:
    """One clip window of a bench.

    Attributes:
        index: Its position in the bench (seeds its sampling noise: ``seed + index``).
        clip_id: The clip.
        kind: Its kind.
        start: The window's first frame.
        num_frames: The window's length.
    """

    index: int
    clip_id: str
    kind: str
    start: int
    num_frames: int


def select_clips(spec: BenchSpec, store: ClipStore) -> list[ClipPlan]:
    """The bench's clip windows in ``store``: ``spec.clip_ids``, or the filter's clips by id.

    Raises:
        BenchError: If a named clip does not exist (with the closest ids), is too short for the
            window, or the filter leaves no clip.
    """
    need = spec.window_start + spec.window_frames
    if spec.clip_ids is not None:
        infos = [_named(store, clip_id) for clip_id in spec.clip_ids]
        short = [i.clip_id for i in infos if i.num_frames < need]
        if short:
            raise BenchError(
                f"bench.clip_ids: clips {short} hold fewer than the {need} frames a window "
                f"from frame {spec.window_start} of {spec.window_frames} frames needs; pick "
                "longer clips or a shorter bench.window_frames."
            )
    else:
        infos = _filtered(spec, store, max(need, spec.min_frames or 0))
    return [
        ClipPlan(i, info.clip_id, info.kind, spec.window_start, spec.window_frames)
        for i, info in enumerate(infos)
    ]


def _named(store: ClipStore, clip_id: str) -> ClipInfo:
    """The info of a clip the spec names (any split), or a :class:`BenchError` naming it."""
    if not store.has_clip(clip_id):
        from cityenv.errors import unknown_name

        raise unknown_name(
            f"bench.clip_ids: clip in {store.root}",
            clip_id,
            store.clip_ids(),
            error=BenchError,
            advice="List the store's clips with ClipStore(PATH).clip_ids().",
        )
    return store.info(clip_id)


def _filtered(spec: BenchSpec, store: ClipStore, min_frames: int) -> list[ClipInfo]:
    """The clips passing the filter, sorted by id, at most ``max_clips`` per kind."""
    infos = store.clips(split=spec.split)
    kinds = set(spec.kinds) if spec.kinds else None
    picked: list[ClipInfo] = []
    per_kind: dict[str, int] = {}
    for info in infos:
        if (kinds is not None and info.kind not in kinds) or info.num_frames < min_frames:
            continue
        if spec.max_clips is not None and per_kind.get(info.kind, 0) >= spec.max_clips:
            continue
        per_kind[info.kind] = per_kind.get(info.kind, 0) + 1
        picked.append(info)
    if not picked:
        raise BenchError(
            f"the bench's filter (split={spec.split}, kinds={spec.kinds}, at least {min_frames} "
            f"frames) leaves none of the {len(infos)} clips of {store.root}; loosen the filter "
            "or generate more or longer clips."
        )
    return picked
