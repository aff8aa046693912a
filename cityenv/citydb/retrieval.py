"""Two-stage retrieval of street-view references for a trajectory chunk.

Stage 1 (geometry only, microseconds): panoramas within ``radius`` of any frame of the chunk
(one KD-tree ball query around the chunk's bounding sphere, then an exact distance check), minus
the excluded traversals / capture times; their views that look toward what the target sees (the
angle pre-filter); capped at the ``max_candidates`` nearest. The tests run on a dozen panoramas
per chunk, so the cost is the number of numpy calls, not arithmetic: per-panorama records and a
per-frame layout (built once) turn the distance and angle tests into two small matmuls.

Stage 2 (depth reprojection, milliseconds): each candidate's depth, at low resolution and cached,
is projected into the target frame nearest to it; candidates covering at least
``coverage_threshold`` of that frame are kept and ranked by coverage, then distance.

The result holds up to ``k`` references, the nearest reference of each target frame (for
geometric referencing: forward splatting) and a lookahead-sink reference near the chunk's end.
A view whose stored depth is damaged scores 0 and is recorded in ``db.damaged`` (warned about once);
views recorded there (by this or by reference loading) are never returned.
Frames: ENU world (metres), OpenCV cameras, camera-to-world poses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from cityenv.cache import LRUCache
from cityenv.citydb.reader import DAMAGE_ERRORS, CityDB
from cityenv.citydb.writer import to_utc_micros
from cityenv.errors import InvalidPoseError, ShapeMismatchError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import (
    QUATERNION_PRODUCTS_TO_MATRIX,
    Pose,
    Trajectory,
    poses_to_matrices,
    quaternion_product_features,
)
from cityenv.geometry.splat import coverage

__all__ = [
    "Candidates",
    "ChunkQuery",
    "DepthCache",
    "DepthProvider",
    "Reference",
    "RetrievalResult",
    "Retriever",
]

DepthProvider = Callable[[int, tuple[int, int]], np.ndarray]
"""``(view_id, (w, h)) -> depth (h, w) float32``: a view's metric z-depth at a given size."""


class DepthCache(LRUCache[tuple[int, int, int], np.ndarray]):
    """The least-recently-used cache of low-resolution depth maps, keyed by ``(view_id, w, h)``.

    A :class:`~cityenv.cache.LRUCache` with the retriever's default size (hits and misses are
    counted there).

    Args:
        capacity: Maximum number of depth maps kept (a 64x64 map is 16 KiB).
    """

    def __init__(self, capacity: int = 4096) -> None:
        super().__init__(capacity)


@dataclass(frozen=True)
class Reference:
    """A retrieved street-view view.

    Attributes:
        view_id: Id of the view in the database (load it with ``db.load_view``).
        panorama_index: Index of its panorama.
        pose: Camera-to-world pose (ENU).
        camera: Full-resolution intrinsics of the stored view.
        coverage: Fraction of the nearest target frame its depth reprojects onto, ``[0, 1]``.
        distance: Distance in metres from its panorama to the nearest target frame.
        frame_index: Index of that nearest target frame in the chunk.
    """

    view_id: int
    panorama_index: int
    pose: Pose
    camera: PinholeCamera
    coverage: float
    distance: float
    frame_index: int


@dataclass
class RetrievalResult:
    """What :meth:`Retriever.retrieve` found for a chunk of ``L`` frames.

    Attributes:
        references: Up to ``k`` references, best first (coverage, then distance).
        per_frame: Shape ``(L,)`` int: index into ``references`` of the reference nearest to each
            frame (the one to forward-splat), -1 when there are no references.
        sink: The lookahead-sink reference near the chunk's last pose, or ``None``.
        candidates_considered: Number of stage-1 candidate views scored in stage 2.
    """

    references: list[Reference]
    per_frame: np.ndarray
    sink: Reference | None
    candidates_considered: int

    @property
    def empty(self) -> bool:
        """True when no reference passed the coverage threshold."""
        return not self.references


@dataclass(slots=True)
class Candidates:
    """Stage-1 output: candidate views, nearest first.

    Attributes:
        view_ids: Shape ``(n,)`` int64.
        panorama_index: Shape ``(n,)`` int64, the panorama of each view.
        frame_index: Shape ``(n,)`` int64, the target frame nearest to the view's panorama.
        distance: Shape ``(n,)`` float64 metres, panorama to that frame.
    """

    view_ids: np.ndarray
    panorama_index: np.ndarray
    frame_index: np.ndarray
    distance: np.ndarray

    def __len__(self) -> int:
        return int(self.view_ids.shape[0])

    def take(self, keep: np.ndarray) -> Candidates:
        """The candidates selected by an index or mask array."""
        return Candidates(
            self.view_ids[keep],
            self.panorama_index[keep],
            self.frame_index[keep],
            self.distance[keep],
        )


def _no_candidates() -> Candidates:
    empty = np.empty(0, np.int64)
    return Candidates(empty, empty.copy(), empty.copy(), np.empty(0, np.float64))


@dataclass(slots=True)
class ChunkQuery:
    """A chunk's ``L`` target frames, laid out once for both stages (:meth:`Retriever.prepare`).

    Attributes:
        positions: Camera centres ``(L, 3)`` float64 ENU.
        forwards: Optical axes ``(L, 3)`` unit.
        matrices: Camera-to-world ``(L, 4, 4)``.
        look: Points ``look_distance`` ahead of each frame ``(L, 3)``: what the frame sees.
        centre: Centre of the frames' bounding box, ``[x, y, z]``.
        half_diagonal: Half the diagonal of that box, metres (every frame is this close to
            ``centre``).
        distance_rhs: ``(5, L)`` rows ``x, y, z, 1, |p|^2`` of the frames, so that
            ``[-2x, -2y, -2z, |q|^2, 1] @ distance_rhs`` is ``|q - p|^2`` for a point ``q``.
        frame_rhs: ``(L, 5, 2)``: per frame, the columns ``[look, 1, |look|^2]`` and
            ``[p, 1, |p|^2]`` (the panorama records of stage 1 multiply them).
    """

    positions: np.ndarray
    forwards: np.ndarray
    matrices: np.ndarray
    look: np.ndarray
    centre: list[float]
    half_diagonal: float
    distance_rhs: np.ndarray
    frame_rhs: np.ndarray

    @classmethod
    def build(
        cls, positions: np.ndarray, forwards: np.ndarray, matrices: np.ndarray, look_distance: float
    ) -> ChunkQuery:
        """Lay out ``L`` frames: positions ``(L, 3)``, forwards ``(L, 3)``, poses ``(L, 4, 4)``."""
        xyz = np.asarray(positions, dtype=np.float64).T
        rows = np.zeros((16, xyz.shape[1]))  # the rows of _frame_layout
        rows[0:6:2] = xyz + look_distance * np.asarray(forwards, dtype=np.float64).T
        rows[1:6:2] = xyz
        rows[6:8] = 1.0
        rows[10:13] = xyz
        rows[13:16] = -xyz
        return cls._from_rows(rows, positions, forwards, matrices)

    @classmethod
    def _from_rows(
        cls, rows: np.ndarray, positions: np.ndarray, forwards: np.ndarray, matrices: np.ndarray
    ) -> ChunkQuery:
        """Finish a chunk from its ``(16, L)`` rows of :func:`_frame_layout` (squared norms still
        to fill in)."""
        n = rows.shape[1]
        squares = rows[:6] * rows[:6]  # |look|^2, |p|^2 into rows 8, 9
        np.add(squares[0:2], squares[2:4], out=rows[8:10])
        np.add(rows[8:10], squares[4:6], out=rows[8:10])
        box = rows[10:16].min(1).tolist()  # [min x, y, z, -max x, y, z] in one reduction
        lo, hi = box[:3], [-v for v in box[3:]]
        frame_rhs = np.ascontiguousarray(rows[:10].T).reshape(n, 5, 2)
        return cls(
            positions,
            forwards,
            matrices,
            frame_rhs[:, :3, 0],
            [0.5 * (a + b) for a, b in zip(lo, hi, strict=True)],
            0.5 * math.dist(lo, hi),
            rows[1:10:2],  # x, y, z, 1, |p|^2: contiguous rows
            frame_rhs,
        )


class Retriever:
    """Two-stage street-view retrieval over a :class:`~cityenv.citydb.reader.CityDB`.

    Args:
        db: The opened database.
        radius: Stage 1 keeps panoramas within this many metres of some frame of the chunk.
        max_candidates: Stage 1 keeps at most this many views (nearest first).
        max_angle_deg: Angle pre-filter: a view is a candidate when the point ``look_distance``
            metres ahead of its nearest target frame lies within this angle of its optical axis.
        look_distance: Metres ahead of a target frame that the angle pre-filter aims at.
        coverage_threshold: Stage 2 keeps views whose depth covers at least this fraction of the
            nearest target frame.
        depth_size: ``(w, h)`` at which candidate depths are reprojected.
        target_width: Width in pixels of the target frame in stage 2 (height keeps the aspect).
        depth_provider: ``(view_id, (w, h)) -> (h, w)`` float32 depth; ``db.load_depth`` if
            ``None`` (benchmarks pass in-memory depths).
        cache: Depth cache to use (a new :class:`DepthCache` of 4096 entries if ``None``; any
            :class:`~cityenv.cache.LRUCache` keyed by ``(view_id, w, h)`` works).
    """

    def __init__(
        self,
        db: CityDB,
        *,
        radius: float = 40.0,
        max_candidates: int = 16,
        max_angle_deg: float = 60.0,
        look_distance: float = 10.0,
        coverage_threshold: float = 0.15,
        depth_size: tuple[int, int] = (64, 64),
        target_width: int = 32,
        depth_provider: DepthProvider | None = None,
        cache: LRUCache[tuple[int, int, int], np.ndarray] | None = None,
    ) -> None:
        self.db = db
        self.radius = float(radius)
        self.max_candidates = int(max_candidates)
        self.cos_max_angle = math.cos(math.radians(max_angle_deg))
        self.look_distance = float(look_distance)
        self.coverage_threshold = float(coverage_threshold)
        self.depth_size = (int(depth_size[0]), int(depth_size[1]))
        self.target_width = int(target_width)
        self.depth_provider = db.load_depth if depth_provider is None else depth_provider
        self.cache = DepthCache() if cache is None else cache
        self._kdtree = db.kdtree
        self._block = db.views_per_panorama  # views of panorama p: block*p .. block*p + block - 1
        self._panorama_positions = db.panorama_positions
        self._forwards = db.view_forwards
        # The angle test `f . u >= cos |u|` becomes `(f / cos) . u >= |u|` when cos > 0 (folded
        # into the records' view rows, which only uniform layouts have).
        self._scaled = self.cos_max_angle > 0.0 and self._block is not None
        blocks = None if self._block is None else self._forwards.reshape(-1, self._block, 3)
        scale = 1.0 / self.cos_max_angle if self._scaled else 1.0
        self._records = _panorama_records(db.panorama_positions, blocks, scale)
        self._layout = _frame_layout(self.look_distance)
        # pose matrices and stage-1 rows of a chunk, both linear in its quaternion products
        self._from_quaternions = np.vstack(
            [QUATERNION_PRODUCTS_TO_MATRIX, self._layout.T @ QUATERNION_PRODUCTS_TO_MATRIX]
        )
        if self._block is not None:  # flat index into (panoramas, block) -> (row, slot)
            self._row_of, self._slot_of = np.divmod(np.arange(_SLOTS * self._block), self._block)
        db.panorama_views(np.empty(0, np.int64))  # build that map now, not in the first query

    # --- public API -----------------------------------------------------------------------------
    def retrieve(
        self,
        trajectory: Trajectory | Sequence[Pose] | ChunkQuery,
        camera: PinholeCamera,
        *,
        k: int = 5,
        exclude_traversals: Iterable[str] = (),
        exclude_time: tuple[datetime, timedelta] | None = None,
    ) -> RetrievalResult:
        """Retrieve references for one trajectory chunk.

        Args:
            trajectory: The chunk's ``L >= 1`` target camera poses (camera-to-world, ENU), or a
                chunk from :meth:`prepare`.
            camera: Target camera intrinsics.
            k: Maximum number of references.
            exclude_traversals: Traversal ids whose panoramas must not be used (cross-temporal
                pairing: the target's own capture pass).
            exclude_time: ``(time, window)``: drop panoramas captured within ``window`` of
                ``time`` (inclusive).

        Returns:
            The references, per-frame nearest reference, sink and candidate count; ``empty`` is
            True when nothing in range covers the target.

        Raises:
            InvalidPoseError: If the chunk has no poses.
        """
        chunk = self.prepare(trajectory)
        exclude = self._exclusions(exclude_traversals, exclude_time)
        candidates = self._stage1(chunk, *exclude)
        scores = self.stage2(candidates, chunk.matrices, camera)
        kept = candidates.take(scores >= self.coverage_threshold)
        kept_scores = scores[scores >= self.coverage_threshold]
        order = np.lexsort((kept.view_ids, kept.distance, -kept_scores))[: max(int(k), 0)]
        references = [self._reference(kept, kept_scores, i) for i in order]
        sink = self._sink(chunk, camera, kept, kept_scores, exclude)
        return RetrievalResult(
            references=references,
            per_frame=_nearest_reference(chunk.positions, references),
            sink=sink,
            candidates_considered=len(candidates),
        )

    def prepare(self, trajectory: Trajectory | Sequence[Pose] | ChunkQuery) -> ChunkQuery:
        """Lay out a chunk's poses for both stages (done once per chunk; idempotent).

        Args:
            trajectory: The chunk's ``L >= 1`` target poses (camera-to-world, ENU).

        Raises:
            InvalidPoseError: If the chunk has no poses.
        """
        if isinstance(trajectory, ChunkQuery):
            return trajectory
        if isinstance(trajectory, Trajectory):
            # One matmul of the quaternions' products and positions gives the matrices and the
            # stage-1 rows (Trajectory.matrices alone costs several times the whole layout).
            positions = trajectory.positions
            rows = self._from_quaternions @ quaternion_product_features(trajectory.wxyz, positions)
            n = rows.shape[1]
            matrices = np.ascontiguousarray(rows[:16].T).reshape(n, 4, 4)
        else:
            matrices = _chunk_matrices(trajectory)
            rows = self._layout.T @ matrices.reshape(-1, 16).T
            positions = matrices[:, :3, 3]
        return ChunkQuery._from_rows(rows[-16:], positions, matrices[:, :3, 2], matrices)

    def stage1(
        self,
        trajectory: Trajectory | Sequence[Pose] | ChunkQuery,
        *,
        exclude_traversals: Iterable[str] = (),
        exclude_time: tuple[datetime, timedelta] | None = None,
    ) -> Candidates:
        """Stage 1 alone: candidate views near the chunk that look toward what it sees.

        Args:
            trajectory: The chunk's target poses, or a chunk from :meth:`prepare`.
            exclude_traversals: Traversal ids to exclude.
            exclude_time: ``(time, window)`` of capture times to exclude.

        Returns:
            Up to ``max_candidates`` views, sorted by distance then view id.
        """
        chunk = self.prepare(trajectory)
        if not exclude_traversals and exclude_time is None:  # the hot path: no filters to build
            return self._stage1(chunk, None, None)
        return self._stage1(chunk, *self._exclusions(exclude_traversals, exclude_time))

    def stage2(
        self, candidates: Candidates, target_poses: np.ndarray, camera: PinholeCamera
    ) -> np.ndarray:
        """Stage 2: coverage of each candidate's depth in its nearest target frame.

        Args:
            candidates: Stage-1 candidates (``frame_index`` picks the target frame).
            target_poses: Target camera-to-world matrices, shape ``(L, 4, 4)``.
            camera: Target intrinsics (rescaled to ``target_width`` internally).

        Returns:
            Covered fraction per candidate, shape ``(n,)`` float64.
        """
        n = len(candidates)
        if n == 0:
            return np.empty(0, np.float64)
        w, h = self.depth_size
        dst_camera = camera.rescaled(
            self.target_width, max(1, round(self.target_width * camera.height / camera.width))
        )
        depths = np.stack([self._depth(int(v)) for v in candidates.view_ids])
        src_poses = poses_to_matrices(
            self.db.view_positions(candidates.view_ids), self.db.rotations[candidates.view_ids]
        )
        dst_poses = np.asarray(target_poses)[candidates.frame_index]
        cams = self.db.view_camera_index[candidates.view_ids]
        scores = np.empty(n, np.float64)
        for cam in np.unique(cams):  # one batch per distinct intrinsics (usually one)
            sel = np.flatnonzero(cams == cam)
            src_camera = self.db.cameras[cam].rescaled(w, h)
            scores[sel] = coverage(
                depths[sel], src_camera, src_poses[sel], dst_camera, dst_poses[sel]
            )
        if len(self.db.damaged):  # views that could not be read are never references
            scores[np.isin(candidates.view_ids, self.db.damaged.view_ids)] = 0.0
        return scores

    # --- internals ------------------------------------------------------------------------------
    def _exclusions(
        self,
        exclude_traversals: Iterable[str],
        exclude_time: tuple[datetime, timedelta] | None,
    ) -> tuple[np.ndarray | None, tuple[int, int] | None]:
        """Traversal codes to drop and a ``(centre, half-width)`` time window in microseconds."""
        if isinstance(exclude_traversals, str):
            exclude_traversals = [exclude_traversals]
        codes = [self.db.traversal_index(t) for t in exclude_traversals]
        codes_arr = np.array([c for c in codes if c >= 0], dtype=np.int32)
        window = None
        if exclude_time is not None:
            centre, width = exclude_time
            window = (to_utc_micros(centre), abs(width) // timedelta(microseconds=1))
        return (codes_arr if codes_arr.size else None), window

    def _stage1(
        self,
        chunk: ChunkQuery,
        exclude_codes: np.ndarray | None,
        window: tuple[int, int] | None,
    ) -> Candidates:
        """Candidate views of the panoramas near ``chunk`` that face what it sees.

        One ball query around the frames' bounding sphere gathers a superset (sorted, so that
        equal distances fall back to view id order); one gather of the panoramas' records and a
        matmul with the frames give the panorama x frame squared distances, hence each panorama's
        nearest frame; a second (batched) matmul of the records with that frame's columns gives,
        per panorama, the squared distances to the frame and to its look point and every view's
        ``forward . (look - panorama)``. A view is kept when that passes the angle test and its
        panorama lies within ``radius``; panoramas are sorted by distance (stable, so equal
        distances keep the ascending index order of the ball query) and the first
        ``max_candidates`` facing views taken in that order.
        """
        found = self._kdtree.query_ball_point(
            chunk.centre, self.radius + chunk.half_diagonal, return_sorted=False
        )
        if not found:
            return _no_candidates()
        # sorted here: cKDTree's own return_sorted costs several times this sort
        panos = np.sort(np.array(found, dtype=np.int64))
        if exclude_codes is not None or window is not None:
            panos = panos[self._allowed(panos, exclude_codes, window)]
            if panos.size == 0:
                return _no_candidates()
        # ndarray.take: a third of the cost of fancy indexing when gathering rows of a 3-d array
        records = self._records.take(panos, 0)  # (n, 1 + block, 5)
        # nearest frame of each panorama (np.dot: a fraction of the @ dispatch cost on tiny arrays)
        frame = np.dot(records[:, 0], chunk.distance_rhs).argmin(1)
        # (n, 1 + block, 2): [0] = (|look - p|^2, |frame - p|^2); [1:, 0] = forward . (look - p)
        tests = np.matmul(records, chunk.frame_rhs.take(frame, 0))
        # (n, 1) |look - p|; the expanded square can dip just below 0 at the look point
        threshold = np.sqrt(np.maximum(tests[:, :1, 0], 0.0))
        if not self._scaled:
            threshold *= self.cos_max_angle
        if self._block is None:
            return self._ragged_views(chunk, panos, frame, tests, threshold[:, 0])
        facing = tests[:, 1:, 0] >= threshold  # (n, block)
        dist2 = tests[:, 0, 1]
        order = dist2.argsort(kind="stable")  # panoramas nearest first (ties: ascending index)
        # flat (rank, slot) indices of the facing views in (distance, view id) order
        picked = facing.take(order, 0).ravel().nonzero()[0][: self.max_candidates]
        if panos.size <= _SLOTS:
            rank, slot = self._row_of[picked], self._slot_of[picked]
        else:
            rank, slot = np.divmod(picked, self._block)
        row = order[rank]
        dist2 = dist2[row]
        if dist2.size and dist2[-1] > self.radius * self.radius:  # fewer in range than the cap
            inside = int(np.searchsorted(dist2, self.radius * self.radius, side="right"))
            row, slot, dist2 = row[:inside], slot[:inside], dist2[:inside]
        panos = panos[row]
        return Candidates(panos * self._block + slot, panos, frame[row], _sqrt(dist2))

    def _allowed(
        self, panos: np.ndarray, exclude_codes: np.ndarray | None, window: tuple[int, int] | None
    ) -> np.ndarray:
        """Mask of ``panos`` not excluded by traversal or capture time."""
        keep = np.ones(panos.size, dtype=bool)
        if exclude_codes is not None:
            keep &= ~np.isin(self.db.panorama_traversal[panos], exclude_codes)
        if window is not None:
            keep &= np.abs(self.db.panorama_times[panos] - window[0]) > window[1]
        return keep

    def _ragged_views(
        self,
        chunk: ChunkQuery,
        panos: np.ndarray,
        frame: np.ndarray,
        tests: np.ndarray,
        threshold: np.ndarray,
    ) -> Candidates:
        """:meth:`_stage1`'s view selection when panoramas hold varying, scattered view ids."""
        views, owner = self.db.panorama_views(panos)
        to_look = chunk.look[frame] - self._panorama_positions[panos]  # (n, 3)
        along = np.einsum("mk,mk->m", self._forwards[views], to_look[owner])
        key = np.where(along >= threshold[owner], tests[owner, 0, 1], np.inf)
        picked = np.lexsort((views, key))[: self.max_candidates]
        dist2 = key[picked]
        inside = int(np.searchsorted(dist2, self.radius * self.radius, side="right"))
        picked, dist2 = picked[:inside], dist2[:inside]
        row = owner[picked]
        return Candidates(views[picked], panos[row], frame[row], _sqrt(dist2))

    def _depth(self, view_id: int) -> np.ndarray:
        """Low-resolution depth of a view, through the cache."""
        w, h = self.depth_size
        return self.cache.get_or_create((view_id, w, h), lambda: self._load_depth(view_id))

    def _load_depth(self, view_id: int) -> np.ndarray:
        """A view's depth ``(h, w)`` float32 from the provider, checked against ``depth_size``.

        A damaged view (its bytes or part unreadable) gets no depth (it covers nothing) and is
        recorded in ``db.damaged``, so one bad view does not abort an episode.
        """
        w, h = self.depth_size
        try:
            depth = np.asarray(self.depth_provider(view_id, (w, h)), dtype=np.float32)
        except DAMAGE_ERRORS as exc:
            self.db.damaged.report(view_id, exc)
            return np.zeros((h, w), np.float32)
        if depth.shape != (h, w):
            raise ShapeMismatchError(
                f"depth_provider must return shape (h, w) = ({h}, {w}) for view {view_id}, "
                f"got {depth.shape}; resample to the requested (w, h) size."
            )
        return depth

    def _reference(self, cands: Candidates, scores: np.ndarray, i: int) -> Reference:
        view_id = int(cands.view_ids[i])
        return Reference(
            view_id=view_id,
            panorama_index=int(cands.panorama_index[i]),
            pose=self.db.pose(view_id),
            camera=self.db.camera(view_id),
            coverage=float(scores[i]),
            distance=float(cands.distance[i]),
            frame_index=int(cands.frame_index[i]),
        )

    def _sink(
        self,
        chunk: ChunkQuery,
        camera: PinholeCamera,
        kept: Candidates,
        kept_scores: np.ndarray,
        exclude: tuple[np.ndarray | None, tuple[int, int] | None],
    ) -> Reference | None:
        """The kept view nearest to the last pose, else the stage-1 view nearest to it."""
        if len(kept):
            d = np.linalg.norm(self.db.view_positions(kept.view_ids) - chunk.positions[-1], axis=1)
            best = int(np.lexsort((kept.view_ids, -kept_scores, d))[0])
            return self._reference(kept, kept_scores, best)
        end = ChunkQuery.build(
            chunk.positions[-1:], chunk.forwards[-1:], chunk.matrices[-1:], self.look_distance
        )
        around = self._stage1(end, *exclude)
        last = np.array([chunk.positions.shape[0] - 1])  # index in the chunk, not in `end`
        for i in range(len(around)):  # the nearest readable one (almost always the first)
            first = around.take(np.array([i]))
            score = self.stage2(first, end.matrices, camera)
            if int(first.view_ids[0]) in self.db.damaged:
                continue
            first = Candidates(first.view_ids, first.panorama_index, last, first.distance)
            return self._reference(first, score, 0)
        return None


_SLOTS = 4096
"""Ball queries with up to this many panoramas decode flat (panorama, view) indices by lookup."""


def _sqrt(d2: np.ndarray) -> np.ndarray:
    """``sqrt(max(d2, 0))`` in place (the expanded squared distance can dip just below 0)."""
    np.maximum(d2, 0.0, out=d2)
    return np.sqrt(d2, out=d2)


def _panorama_records(
    positions: np.ndarray, forward_blocks: np.ndarray | None, scale: float
) -> np.ndarray:
    """Per-panorama rows for stage 1 ``(P, 1 + c, 5)`` float64 (``(P, 1, 5)`` without blocks).

    Row 0 is ``[-2p, |p|^2, 1]``: times a column ``[q, 1, |q|^2]`` it gives ``|p - q|^2``. Rows
    ``1..c`` are ``scale * [f, -f . p, 0]`` for the optical axis ``f`` of each of the panorama's
    ``c`` views (``forward_blocks`` ``(P, c, 3)``): times ``[q, 1, |q|^2]`` they give
    ``scale * f . (q - p)``. So one gather and one matmul per query do the distance and angle
    tests of a set of panoramas.
    """
    c = 0 if forward_blocks is None else forward_blocks.shape[1]
    records = np.empty((positions.shape[0], 1 + c, 5))  # filled in place: 432 MB at 1.2M
    row = records[:, 0]
    np.multiply(positions, -2.0, out=row[:, :3])
    np.einsum("pk,pk->p", positions, positions, out=row[:, 3])
    row[:, 4] = 1.0
    if forward_blocks is not None:
        views = records[:, 1:]
        np.multiply(forward_blocks, scale, out=views[..., :3])
        np.einsum("pvk,pk->pv", views[..., :3], positions, out=views[..., 3])
        np.negative(views[..., 3], out=views[..., 3])
        views[..., 4] = 0.0
    return records


def _frame_layout(look_distance: float) -> np.ndarray:
    """``(16, 16)``: a flattened camera-to-world matrix times this is a frame's stage-1 row.

    Columns: ``look_x, p_x, look_y, p_y, look_z, p_z, 1, 1`` (so that ``[:10]`` reshaped to
    ``(5, 2)`` is the frame's ``[look, 1, |look|^2]`` and ``[p, 1, |p|^2]`` once columns 8 and 9
    hold the squared norms), ``0, 0`` (for them), then ``p`` and ``-p`` (for the bounding box).
    Flat matrix index ``4 i + j``: the position is ``3, 7, 11``, the optical axis (third column)
    ``2, 6, 10``, the homogeneous 1 is ``15``.
    """
    layout = np.zeros((16, 16))
    for axis in range(3):
        pos, fwd = 4 * axis + 3, 4 * axis + 2
        layout[pos, 2 * axis] = 1.0
        layout[fwd, 2 * axis] = look_distance
        layout[pos, 2 * axis + 1] = 1.0
        layout[pos, 10 + axis] = 1.0
        layout[pos, 13 + axis] = -1.0
    layout[15, 6:8] = 1.0
    return layout


def _chunk_matrices(trajectory: Trajectory | Sequence[Pose]) -> np.ndarray:
    """Camera-to-world matrices ``(L, 4, 4)`` of a chunk's poses."""
    if isinstance(trajectory, Trajectory):
        return trajectory.matrices
    poses = list(trajectory)
    if not poses:
        raise InvalidPoseError(
            "the trajectory chunk must hold at least one Pose, got none; pass the target "
            "camera poses of the chunk."
        )
    return np.stack([p.matrix for p in poses])


def _nearest_reference(positions: np.ndarray, references: list[Reference]) -> np.ndarray:
    """Index of the reference nearest to each frame ``(L,)`` int64, -1 if there is none."""
    if not references:
        return np.full(positions.shape[0], -1, dtype=np.int64)
    ref_positions = np.stack([r.pose.position for r in references])
    d2 = ((positions[:, None, :] - ref_positions[None]) ** 2).sum(-1)
    return d2.argmin(1).astype(np.int64)
