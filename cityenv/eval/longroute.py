"""Long rollouts: a world model driven along a ~1 km route, scored per 100 m segment (drift).

A clip window is about 100 m; whether a model drifts or collapses over a kilometre shows only on
routes no recorded clip covers, so the ground truth is rendered (:mod:`cityenv.eval.render`):

1. :func:`plan_route` walks the street-view database's :class:`~cityenv.citydb.roadgraph.RoadGraph`
   (panoramas joined along their traversals and across junctions) without visiting a panorama
   twice, so the route keeps reaching new streets instead of circling; it is resampled every
   ``step_m`` metres, smoothed, and the camera looks along it at the panoramas' capture height.
2. :func:`evaluate_long_route` renders the route's ground truth under one condition, rolls the
   model along it chunk by chunk with references retrieved for each chunk
   (:func:`roll_out`, :class:`RouteReferences`: the :class:`~cityenv.citydb.retrieval.Retriever`
   and :class:`~cityenv.worldmodel.referencing.ReferenceLoader`, as the environment and
   :class:`~cityenv.eval.replay.Replayer` use them), starting from the ground truth's first frame
   (the replay protocol; frame 0 is not scored).
3. Per segment of ``segment_m`` metres travelled: static PSNR and SSIM
   (:func:`~cityenv.eval.metrics.frame_metrics`) and, for both the generated and the ground-truth
   frames, colour statistics (per-channel mean and standard deviation in CIE Lab, OpenCV's
   float conversion: L in [0, 100], a and b in about [-127, 127]) and sharpness (variance of the
   Laplacian of the grey frame), all on the ground truth's static pixels
   (:func:`frame_statistics`). A segment's generated statistic is *inside the ground truth's
   range* when it lies within ``[min, max]`` of the ground truth's per-segment values over the
   whole route, widened on both sides by ``margin`` times that range's width (default 0.25): a
   model that collapses to grey or blurs out over the kilometre leaves it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cityenv.citydb.reader import CityDB
from cityenv.citydb.retrieval import Retriever
from cityenv.citydb.roadgraph import RoadGraph
from cityenv.errors import EvaluationError, ShapeMismatchError
from cityenv.eval.metrics import DistanceWindow, frame_metrics, travelled
from cityenv.eval.plots import pyplot, save_figure
from cityenv.eval.render import Condition, GroundTruthRenderer, get_condition, render_condition
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose, Trajectory
from cityenv.worldmodel.base import ChunkReferences, WorldModel
from cityenv.worldmodel.referencing import ReferenceLoader

__all__ = [
    "STATISTICS",
    "LongRouteResult",
    "Rollout",
    "Route",
    "RouteReferences",
    "SegmentResult",
    "chunk_length",
    "evaluate_long_route",
    "frame_statistics",
    "plan_route",
    "plot_long_route",
    "roll_out",
    "route_segments",
]

STATISTICS = ("L_mean", "a_mean", "b_mean", "L_std", "a_std", "b_std", "sharpness")
"""The per-frame image statistics of :func:`frame_statistics`, in order."""


# --- references along any trajectory ---------------------------------------------------------
class RouteReferences:
    """Retrieves and loads the references of trajectory chunks from a CityDB.

    Args:
        citydb: The street-view database (a folder or opened).
        num_references: ``K``, references per chunk.
        exclude_traversals: Traversal ids never used as references.
        exclude_time: ``(time, window)``: panoramas captured within ``window`` of ``time`` are
            not used (``None``: any capture time).
        retrieval: Keyword arguments of :class:`~cityenv.citydb.retrieval.Retriever`.
    """

    def __init__(
        self,
        citydb: str | os.PathLike[str] | CityDB,
        *,
        num_references: int = 5,
        exclude_traversals: Iterable[str] = (),
        exclude_time: tuple[datetime, timedelta] | None = None,
        retrieval: Mapping[str, Any] | None = None,
    ) -> None:
        self.db = citydb if isinstance(citydb, CityDB) else CityDB.open(citydb)
        self.num_references = int(num_references)
        self.exclude_traversals = tuple(exclude_traversals)
        self.exclude_time = exclude_time
        self.retriever = Retriever(self.db, **dict(retrieval or {}))
        self.loader = ReferenceLoader(self.db, capacity=128)

    def __call__(self, chunk: Trajectory, camera: PinholeCamera) -> ChunkReferences:
        """The loaded references of one chunk of ``L`` poses (``per_frame`` ``(L,)``)."""
        result = self.retriever.retrieve(
            chunk,
            camera,
            k=self.num_references,
            exclude_traversals=self.exclude_traversals,
            exclude_time=self.exclude_time,
        )
        return self.loader.load(result)


# --- rolling a model along a trajectory -----------------------------------------------------------
@dataclass(eq=False)
class Rollout:
    """What a world model generated along a trajectory.

    Attributes:
        frames: uint8 ``(T, H, W, 3)``; frame 0 is the model's reset frame.
        chunk_frames: ``L``, frames per generated chunk.
        references: Per chunk (the reset first), the ids of the reference views used.
        timings: Seconds: ``reset``, ``retrieval`` (retrieving and loading), ``generate``,
            ``total``.
    """

    frames: np.ndarray
    chunk_frames: int
    references: list[list[int]]
    timings: dict[str, float]


def chunk_length(model: WorldModel, given: int | None, num_frames: int) -> int:
    """The chunk length ``L``: ``given``, or the model's ``settings.chunk_frames``.

    Raises:
        EvaluationError: If neither gives one, or ``num_frames`` is not ``1 + n * L``.
    """
    settings = getattr(model, "settings", None)
    length = given if given is not None else getattr(settings, "chunk_frames", None)
    if length is None or int(length) < 1:
        raise EvaluationError(
            f"rolling out {type(model).__name__} needs a chunk length >= 1 (chunk_frames=), got "
            f"{length}; the warp model has no chunk length of its own."
        )
    length = int(length)
    if num_frames < 2 or (num_frames - 1) % length:
        below = 1 + (num_frames - 1) // length * length
        sizes = [n for n in (below, below + length) if n > 1]
        raise EvaluationError(
            f"a rolled-out trajectory holds a start frame and whole chunks, 1 + n x {length} "
            f"frames with n >= 1, got {num_frames}; use {' or '.join(map(str, sizes))} frames."
        )
    return length


def roll_out(
    model: WorldModel,
    trajectory: Trajectory,
    camera: PinholeCamera,
    references: RouteReferences,
    *,
    chunk_frames: int,
    prompt: str | None = None,
    start_image: np.ndarray | None = None,
    seed: int = 0,
) -> Rollout:
    """Reset ``model`` at the first pose, then generate the rest chunk by chunk.

    Args:
        model: Any world model.
        trajectory: ``T = 1 + n * L`` camera-to-world poses (ENU).
        camera: Intrinsics (and size) of the frames.
        references: Retrieves each chunk's references (and the reset's, for the first pose).
        chunk_frames: ``L`` (:func:`chunk_length`).
        prompt: The text prompt of the reset.
        start_image: uint8 ``(H, W, 3)`` start image, or ``None`` for the model to make the first
            frame from the references.
        seed: Seeds the reset's ``generator``.

    Raises:
        ShapeMismatchError: If the model returns frames of another shape or dtype.
    """
    start = time.perf_counter()
    timings = {"reset": 0.0, "retrieval": 0.0, "generate": 0.0}
    frames = np.zeros((len(trajectory), camera.height, camera.width, 3), np.uint8)
    t0 = time.perf_counter()
    refs = references(trajectory[:1], camera)
    timings["retrieval"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    first = model.reset(
        pose=trajectory[0],
        camera=camera,
        references=refs,
        start_image=start_image,
        prompt=prompt,
        generator=np.random.default_rng(seed),
    )
    timings["reset"] = time.perf_counter() - t0
    frames[0] = _checked(np.asarray(first)[None], frames[:1], 0)[0]
    used = [[v.view_id for v in refs.views]]
    for begin in range(1, len(trajectory), chunk_frames):
        chunk = trajectory[begin : begin + chunk_frames]
        t0 = time.perf_counter()
        refs = references(chunk, camera)
        t1 = time.perf_counter()
        output = model.generate(chunk, refs)
        timings["retrieval"] += t1 - t0
        timings["generate"] += time.perf_counter() - t1
        end = begin + len(chunk)
        frames[begin:end] = _checked(np.asarray(output.frames), frames[begin:end], begin)
        used.append([v.view_id for v in refs.views])
    timings["total"] = time.perf_counter() - start
    return Rollout(frames, chunk_frames, used, timings)


def _checked(frames: np.ndarray, slot: np.ndarray, begin: int) -> np.ndarray:
    if frames.shape != slot.shape or frames.dtype != np.uint8:
        raise ShapeMismatchError(
            f"the world model must return uint8 frames {slot.shape} for frames {begin} to "
            f"{begin + len(slot) - 1}, got {frames.dtype} {frames.shape}; check its camera and "
            "chunk handling."
        )
    return frames


# --- image statistics -----------------------------------------------------------------------------
def frame_statistics(frames: np.ndarray, static: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Colour and sharpness statistics of each frame (:data:`STATISTICS`).

    Args:
        frames: uint8 ``(T, H, W, 3)`` RGB.
        static: bool ``(T, H, W)``: the pixels to describe (``None``: all).

    Returns:
        Name -> float64 ``(T,)``: ``L_mean``, ``a_mean``, ``b_mean``, ``L_std``, ``a_std``,
        ``b_std`` (CIE Lab, OpenCV's float conversion) and ``sharpness`` (variance of the
        Laplacian of the grey frame, 0-255 scale, over the pixels); NaN for a frame without a
        pixel.

    Raises:
        ShapeMismatchError: If the shapes or dtypes are wrong.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ShapeMismatchError(
            f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}."
        )
    keep = np.ones(frames.shape[:3], bool) if static is None else np.asarray(static, bool)
    if keep.shape != frames.shape[:3]:
        raise ShapeMismatchError(
            f"static must be (T, H, W) = {frames.shape[:3]}, got {keep.shape}."
        )
    out = {name: np.full(len(frames), math.nan) for name in STATISTICS}
    for i, (frame, mask) in enumerate(zip(frames, keep, strict=True)):
        if not mask.any():
            continue
        lab = cv2.cvtColor(frame.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)[mask]  # (n, 3)
        for c, channel in enumerate("Lab"):
            out[f"{channel}_mean"][i] = float(lab[:, c].mean())
            out[f"{channel}_std"][i] = float(lab[:, c].std())
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
        out["sharpness"][i] = float(cv2.Laplacian(grey, cv2.CV_32F, ksize=1)[mask].var())
    return out


# --- routes -------------------------------------------------------------------------------------
@dataclass(eq=False)
class Route:
    """A camera route along the road graph.

    Attributes:
        nodes: The road-graph nodes (panorama indices) it passes, in order.
        trajectory: ``T`` camera-to-world poses, ``step_m`` apart, looking along the route.
        distance_m: float64 ``(T,)``, distance travelled to each pose along the road polyline
            (0 at the first; the smoothed camera path is a little shorter at corners).
    """

    nodes: list[int]
    trajectory: Trajectory
    distance_m: np.ndarray

    @property
    def length_m(self) -> float:
        """Distance travelled from the first to the last pose, metres."""
        return float(self.distance_m[-1])

    def __len__(self) -> int:
        return len(self.trajectory)


def plan_route(
    graph: RoadGraph,
    length_m: float,
    *,
    rng: np.random.Generator,
    step_m: float = 2.0,
    speed_mps: float = 10.0,
    chunk_frames: int = 1,
    smoothing_m: float = 8.0,
    turn_probability: float = 0.2,
    attempts: int = 32,
) -> Route:
    """A route of at least ``length_m`` metres that visits no road-graph node twice.

    Not visiting a node twice keeps the route reaching new streets (a model cannot re-use what
    it generated a minute before) and bounds what a road network allows. A depth-first search
    from a random node of the largest component tries the straightest unvisited neighbour
    first, or with probability ``turn_probability`` another one turning less than 100 degrees
    (a junction), U-turns last, and backtracks from dead ends (at most ``20 x nodes`` steps per
    attempt). The node path is resampled every ``step_m``
    metres, its positions smoothed over ``smoothing_m`` metres (corners become curves), and the
    camera looks along the smoothed direction, level, at the nodes' height (the panoramas'
    capture height). It has ``1 + n * chunk_frames`` poses, timed at ``speed_mps``.

    Args:
        graph: The road graph (``RoadGraph.from_citydb(db, link_radius_m=20)`` connects the
            built-in town's junctions).
        length_m: The least route length, metres (> 0).
        rng: Source of randomness (start and turns).
        step_m: Distance between poses, metres.
        speed_mps: Speed that times the poses (traffic and sun move with it), metres/second.
        chunk_frames: The pose count is ``1 + n * chunk_frames`` (whole chunks).
        smoothing_m: Width of the positions' moving average, metres.
        turn_probability: Chance of leaving the straightest way where another one is open.
        attempts: Searches (from new random starts) tried before giving up.

    Raises:
        ValueError: If a length, step, speed or count is not positive.
        EvaluationError: If no search finds a path that long (the network is too small).
    """
    if not (length_m > 0 and step_m > 0 and speed_mps > 0 and chunk_frames >= 1 and attempts >= 1):
        raise ValueError(
            "length_m, step_m, speed_mps, chunk_frames and attempts must be positive, got "
            f"{length_m}, {step_m}, {speed_mps}, {chunk_frames}, {attempts}."
        )
    steps = math.ceil(length_m / step_m - 1e-9)
    count = 1 + math.ceil(steps / chunk_frames) * chunk_frames
    need = (count - 1) * step_m
    best: list[int] = []
    for _ in range(attempts):
        nodes = _walk(graph, rng, need, turn_probability, budget=20 * graph.num_nodes)
        if graph.path_length(nodes) >= need:
            return _route(graph, nodes, count, step_m, speed_mps, smoothing_m)
        best = max(best, nodes, key=graph.path_length)
    raise EvaluationError(
        f"a route must follow the road graph for {length_m:.0f} m ({need:.0f} m in whole chunks) "
        f"without visiting a panorama twice, got at most {graph.path_length(best):.0f} m in "
        f"{attempts} walks over {graph.num_nodes} panoramas; ask for a shorter route or use a "
        "larger town (more blocks)."
    )


def _walk(
    graph: RoadGraph, rng: np.random.Generator, need: float, turn_p: float, budget: int
) -> list[int]:
    """A path over distinct nodes, ``need`` metres long if one is found within ``budget`` steps.

    A depth-first search: each node's unvisited neighbours are tried straightest first (another
    one under 100 degrees first with probability ``turn_p``); a dead end backtracks. The longest
    path seen is returned when the budget runs out.
    """
    labels = graph.component()
    main = np.flatnonzero(labels == np.bincount(labels).argmax())
    path = [int(rng.choice(main))]
    lengths = [0.0]
    on_path = {path[0]}
    stack = [_options(graph, path, on_path, rng, turn_p)]
    best = list(path)
    for _ in range(budget):
        if lengths[-1] >= need or not stack:
            break
        if not stack[-1]:  # dead end: step back
            stack.pop()
            on_path.discard(path.pop())
            lengths.pop()
            continue
        node = stack[-1].pop(0)
        lengths.append(
            lengths[-1] + float(np.linalg.norm(graph.positions[node] - graph.positions[path[-1]]))
        )
        path.append(node)
        on_path.add(node)
        stack.append(_options(graph, path, on_path, rng, turn_p))
        if lengths[-1] > graph.path_length(best):
            best = list(path)
    return path if lengths and lengths[-1] >= need else best


def _options(
    graph: RoadGraph, path: list[int], on_path: set[int], rng: np.random.Generator, turn_p: float
) -> list[int]:
    """The unvisited neighbours of the path's end in the order to try them (U-turns last)."""
    here = path[-1]
    options = [int(n) for n in graph.neighbors(here) if int(n) not in on_path]
    if not options:
        return []
    step = graph.positions[options, :2] - graph.positions[here, :2]
    step /= np.maximum(np.linalg.norm(step, axis=1, keepdims=True), 1e-9)
    if len(path) < 2:
        turns = rng.random(len(options))  # the first step: any direction
    else:
        back = graph.positions[here, :2] - graph.positions[path[-2], :2]
        back /= max(float(np.linalg.norm(back)), 1e-9)
        turns = np.arccos(np.clip(step @ back, -1.0, 1.0))
    order = [int(i) for i in np.argsort(turns, kind="stable")]
    turning = [i for i in order[1:] if turns[i] < math.radians(100.0)]
    if turning and rng.random() < turn_p:  # take a turn at this junction first
        first = turning[int(rng.integers(len(turning)))]
        order.remove(first)
        order.insert(0, first)
    return [options[i] for i in order]


def _route(
    graph: RoadGraph, nodes: list[int], count: int, step_m: float, speed: float, smooth_m: float
) -> Route:
    """The walk resampled to ``count`` poses ``step_m`` apart, smoothed, looking ahead."""
    corners = graph.positions[nodes]
    along = travelled(corners)
    at = np.arange(count) * step_m
    points = np.stack([np.interp(at, along, corners[:, k]) for k in range(3)], axis=1)
    half = max(int(round(smooth_m / step_m / 2)), 0)
    padded = np.pad(points, ((half, half), (0, 0)), mode="edge")
    kernel = np.ones(2 * half + 1) / (2 * half + 1)
    smooth = np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(3)], axis=1)
    ahead = np.gradient(points[:, :2] if half == 0 else smooth[:, :2], axis=0)
    headings = np.degrees(np.arctan2(ahead[:, 0], ahead[:, 1]))  # compass: clockwise from north
    poses = [Pose.from_heading(p, h) for p, h in zip(smooth, headings, strict=True)]
    trajectory = Trajectory.from_poses(poses, timestamps=at / speed)
    return Route(list(nodes), trajectory, at)


def route_segments(distance_m: np.ndarray, segment_m: float = 100.0) -> list[DistanceWindow]:
    """Consecutive segments of ``segment_m`` metres covering ``[0, distance_m[-1]]``.

    The last segment ends at the route's end (it may be shorter) and holds the last pose.

    Raises:
        ValueError: If ``segment_m`` is not positive.
    """
    if not segment_m > 0:
        raise ValueError(f"segment_m must be > 0 metres, got {segment_m}.")
    distance = np.asarray(distance_m, np.float64)
    total = float(distance[-1])
    count = max(1, math.ceil(total / segment_m - 1e-9))
    out = []
    for k in range(count):
        start, end = k * segment_m, min((k + 1) * segment_m, total)
        inside = (distance >= start) & ((distance < end) | (k == count - 1))
        out.append(DistanceWindow(start, end, np.flatnonzero(inside)))
    return out


# --- the evaluation -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentResult:
    """The scores of one route segment (its scored frames only: frame 0 is the start image).

    Attributes:
        start_m: Segment start along the route, metres.
        end_m: Segment end, metres.
        frames: How many scored frames it holds.
        psnr_static: Mean static PSNR, dB (capped at 100).
        ssim_static: Mean static SSIM.
        generated: :data:`STATISTICS` of the generated frames (means over the frames).
        truth: The same of the ground-truth frames.
        inside: Per statistic, whether ``generated`` lies in the ground truth's widened range.
    """

    start_m: float
    end_m: float
    frames: int
    psnr_static: float
    ssim_static: float
    generated: dict[str, float]
    truth: dict[str, float]
    inside: dict[str, bool]

    @property
    def all_inside(self) -> bool:
        """Every statistic inside the ground truth's range."""
        return all(self.inside.values())


@dataclass(frozen=True)
class LongRouteResult:
    """A world model's long rollout along a route, per segment.

    Attributes:
        condition: The ground truth's condition.
        length_m: The route's length, metres.
        num_frames: ``T``, poses of the route (frame 0 not scored).
        chunk_frames: ``L``.
        segment_m: Segment length, metres.
        margin: The range widening, a fraction of its width.
        ranges: Per statistic, the ground truth's widened ``(low, high)`` over the segments.
        segments: The segments, in route order.
        timings: Seconds: ``render`` (ground truth), the rollout's, ``metrics``.
    """

    condition: str
    length_m: float
    num_frames: int
    chunk_frames: int
    segment_m: float
    margin: float
    ranges: dict[str, tuple[float, float]]
    segments: list[SegmentResult]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def inside_fraction(self) -> float:
        """Fraction of the segments with every statistic inside the ground truth's range."""
        return sum(s.all_inside for s in self.segments) / len(self.segments)

    def as_dict(self) -> dict[str, Any]:
        """Every number, JSON-serialisable (NaN stays NaN)."""
        return {
            "condition": self.condition,
            "length_m": self.length_m,
            "num_frames": self.num_frames,
            "chunk_frames": self.chunk_frames,
            "segment_m": self.segment_m,
            "margin": self.margin,
            "inside_fraction": self.inside_fraction,
            "ranges": {k: list(v) for k, v in self.ranges.items()},
            "segments": [{**s.__dict__, "all_inside": s.all_inside} for s in self.segments],
            "timings": dict(self.timings),
        }


def evaluate_long_route(
    model: WorldModel,
    route: Route,
    camera: PinholeCamera,
    renderer: GroundTruthRenderer,
    references: RouteReferences,
    *,
    condition: str | Condition = "clear_noon",
    chunk_frames: int | None = None,
    segment_m: float = 100.0,
    margin: float = 0.25,
    prompt: str | None = None,
    seed: int = 0,
) -> LongRouteResult:
    """Render ``route`` under ``condition``, roll ``model`` along it and score each segment.

    The model starts from the ground truth's first frame (the replay protocol) with the
    condition's caption as prompt (unless ``prompt`` is given); frames 1.. are scored.

    Args:
        model: Any world model.
        route: The route (:func:`plan_route`); ``len(route) = 1 + n * L``.
        camera: Intrinsics and size of the frames.
        renderer: The ground-truth renderer of the world the CityDB shows (open).
        references: The chunks' references (:class:`RouteReferences`).
        condition: A :data:`~cityenv.eval.render.CONDITIONS` name or condition.
        chunk_frames: ``L`` (default: the model's ``settings.chunk_frames``).
        segment_m: Segment length, metres.
        margin: Widening of the ground truth's range, a fraction of its width (>= 0).
        prompt: The text prompt (default: the condition's caption).
        seed: Seeds the model's reset.

    Raises:
        UnknownNameError: For an unknown condition ("Did you mean ...?").
        EvaluationError: If the chunk length is unknown or does not divide ``T - 1``.
        ShapeMismatchError: If the model cannot make frames of ``camera``'s size (its
            ``check_settings``) or returns others.
        ValueError: If ``segment_m`` is not positive or ``margin`` negative.
    """
    cond = condition if isinstance(condition, Condition) else get_condition(condition)
    length = chunk_length(model, chunk_frames, len(route))
    model.check_settings(camera, length)  # before any rendering: a clear error first
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0 (a fraction of the range), got {margin}.")
    windows = route_segments(route.distance_m, segment_m)
    t0 = time.perf_counter()
    truth, dynamic = render_condition(renderer, route.trajectory, camera, cond)
    render_s = time.perf_counter() - t0
    rollout = roll_out(
        model,
        route.trajectory,
        camera,
        references,
        chunk_frames=length,
        prompt=cond.caption if prompt is None else prompt,
        start_image=truth[0],
        seed=seed,
    )
    t0 = time.perf_counter()
    segments, ranges = _score(rollout.frames, truth, dynamic, windows, margin)
    timings = {"render": render_s, **rollout.timings, "metrics": time.perf_counter() - t0}
    return LongRouteResult(
        cond.name, route.length_m, len(route), length, segment_m, margin, ranges, segments, timings
    )


def _score(
    generated: np.ndarray,
    truth: np.ndarray,
    dynamic: np.ndarray,
    windows: list[DistanceWindow],
    margin: float,
) -> tuple[list[SegmentResult], dict[str, tuple[float, float]]]:
    """Per-segment scores of frames 1.. and the ground truth's widened ranges."""
    scored = slice(1, None)
    metrics = frame_metrics(generated[scored], truth[scored], dynamic[scored])
    static = ~dynamic[scored]
    gen_stats = frame_statistics(generated[scored], static)
    true_stats = frame_statistics(truth[scored], static)
    rows = []
    for window in windows:
        frames = window.frames[window.frames > 0] - 1  # indices into the scored frames
        rows.append(
            (
                window,
                frames,
                {k: _mean(v[frames]) for k, v in gen_stats.items()},
                {k: _mean(v[frames]) for k, v in true_stats.items()},
            )
        )
    ranges = _ranges([r[3] for r in rows if len(r[1])], margin)
    segments = [
        SegmentResult(
            start_m=window.start_m,
            end_m=window.end_m,
            frames=int(len(frames)),
            psnr_static=_mean(metrics.psnr_static[frames]),
            ssim_static=_mean(metrics.ssim_static[frames]),
            generated=gen,
            truth=true,
            inside={k: bool(ranges[k][0] <= gen[k] <= ranges[k][1]) for k in STATISTICS},
        )
        for window, frames, gen, true in rows
    ]
    return segments, ranges


def _ranges(truths: list[dict[str, float]], margin: float) -> dict[str, tuple[float, float]]:
    out = {}
    for name in STATISTICS:
        values = np.array([t[name] for t in truths], np.float64)
        values = values[np.isfinite(values)]
        if not values.size:
            out[name] = (math.nan, math.nan)
            continue
        low, high = float(values.min()), float(values.max())
        out[name] = (low - margin * (high - low), high + margin * (high - low))
    return out


def _mean(values: np.ndarray) -> float:
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


# --- plot ---------------------------------------------------------------------------------------
def plot_long_route(result: LongRouteResult, path: str | os.PathLike[str]) -> Path:
    """Metric over distance: static PSNR, SSIM and generated vs ground-truth statistics (PNG).

    Args:
        result: A long rollout.
        path: The PNG to write (its folder is created).

    Returns:
        The written path.
    """
    plt = pyplot()

    centres = [(s.start_m + s.end_m) / 2 for s in result.segments]
    panels = [("psnr_static", "static PSNR (dB)"), ("ssim_static", "static SSIM")]
    panels += [(name, name) for name in ("L_mean", "L_std", "sharpness")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (name, label) in zip(axes[0], panels, strict=True):
        if name in STATISTICS:
            ax.plot(centres, [s.generated[name] for s in result.segments], "o-", label="generated")
            ax.plot(centres, [s.truth[name] for s in result.segments], "s--", label="ground truth")
            ax.axhspan(*result.ranges[name], color="grey", alpha=0.15, label="GT range")
            ax.legend(fontsize=7)
        else:
            ax.plot(centres, [getattr(s, name) for s in result.segments], "o-")
        ax.set_xlabel("distance travelled (m)")
        ax.set_title(label, fontsize=9)
    fig.suptitle(f"long rollout, {result.length_m:.0f} m, {result.condition}", fontsize=10)
    return save_figure(fig, path)
