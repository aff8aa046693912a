"""The retrieval-warp world model: retrieved street views forward-splatted into each frame.

A non-learned baseline behind the :class:`~cityenv.worldmodel.base.WorldModel` interface, and the
geometric-referencing input of the SWM-style model. Per chunk of ``L`` frames:

1. Splat: each frame's nearest reference (``references.per_frame``) is forward-splatted with its
   metric depth into the frame (:func:`cityenv.geometry.splat.forward_splat`, one batched call).
   Sky pixels (depth 0 in the reference) are splatted as if at infinity (rotation only), so the
   sky follows the camera instead of becoming a hole.
2. Fill from references: frames left with large holes (disocclusions, parts outside the nearest
   view) get the next references splatted into their holes, in rank order and then the lookahead
   sink, at most ``max_extra_references`` per frame.
3. Inpaint: what is left (one-pixel cracks of magnified surfaces, uncovered corners) is filled by
   push-pull interpolation (a masked image pyramid, OpenCV), all frames of the chunk at once.

Frames: ENU world, OpenCV cameras, camera-to-world poses, metric z-depth (0 = none). The model is
deterministic: no randomness, the same inputs give byte-identical frames.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from cityenv.errors import CityEnvError, ShapeMismatchError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose, Trajectory
from cityenv.geometry.splat import forward_splat
from cityenv.worldmodel.base import ChunkOutput, ChunkReferences, ReferenceView, WorldModel

__all__ = ["SKY_DEPTH_M", "WarpWorldModel", "neutral_frame", "push_pull_fill"]

SKY_DEPTH_M = 1.0e5
"""Depth (metres) given to reference pixels without depth: far enough that a few metres of camera
travel move them by well under a pixel (sky at infinity), and behind every real surface."""

_SKY_ZENITH = np.array([118.0, 148.0, 192.0], np.float32)  # neutral frame colours, RGB
_SKY_HORIZON = np.array([196.0, 204.0, 212.0], np.float32)
_GROUND_NEAR = np.array([92.0, 92.0, 90.0], np.float32)
_GROUND_FAR = np.array([150.0, 150.0, 146.0], np.float32)
_ERODE_KERNEL = np.ones((5, 5), np.uint8)


# --- reference preparation ----------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _Prepared:
    """A reference resized to the target frames' size, ready to splat.

    Attributes:
        view: The reference it was made from (kept to check cache hits by identity).
        image: RGB uint8 ``(H, W, 3)`` at the target size.
        depth: float32 ``(H, W)``, pixels without depth set to :data:`SKY_DEPTH_M`.
        camera: The reference's intrinsics rescaled to ``(H, W)``.
        matrix: Camera-to-world, float64 ``(4, 4)``.
    """

    view: ReferenceView
    image: np.ndarray
    depth: np.ndarray
    camera: PinholeCamera
    matrix: np.ndarray


def _prepare(view: ReferenceView, width: int, height: int) -> _Prepared:
    """Resize ``view`` to ``(height, width)`` (area for colour, nearest for depth), sky at infinity.

    Raises:
        ShapeMismatchError: If the image or depth do not match the view's camera.
    """
    view.camera.check_image(view.image, "reference image")
    view.camera.check_image(view.depth, "reference depth")
    image, depth = view.image, np.asarray(view.depth, np.float32)
    if (view.camera.width, view.camera.height) != (width, height):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        depth = cv2.resize(depth, (width, height), interpolation=cv2.INTER_NEAREST)
    depth = np.where(depth > 0, depth, np.float32(SKY_DEPTH_M)).astype(np.float32, copy=False)
    return _Prepared(
        view=view,
        image=np.ascontiguousarray(image[..., :3], np.uint8),
        depth=depth,
        camera=view.camera.rescaled(width, height),
        matrix=view.pose.matrix,
    )


class _PreparedCache:
    """Least-recently-used prepared references, keyed by ``(view_id, W, H)``.

    A hit must be the very same :class:`ReferenceView` object, so two databases whose view ids
    collide never share an entry.

    Args:
        capacity: Number of prepared references kept (about 450 KiB each at 256x256).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self._items: OrderedDict[tuple[int, int, int], _Prepared] = OrderedDict()

    def get(self, view: ReferenceView, width: int, height: int) -> _Prepared:
        """The prepared form of ``view`` at ``(height, width)``."""
        key = (int(view.view_id), int(width), int(height))
        hit = self._items.get(key)
        if hit is not None and hit.view is view:
            self._items.move_to_end(key)
            return hit
        prepared = _prepare(view, width, height)
        self._items[key] = prepared
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return prepared

    def clear(self) -> None:
        """Drop every entry."""
        self._items.clear()


# --- filling ------------------------------------------------------------------------------------
def neutral_frame(camera: PinholeCamera, pose: Pose) -> np.ndarray:
    """A plain grey-ground, blue-grey-sky frame with the horizon where ``pose`` puts it.

    Used where no reference exists at all. Each pixel's colour depends only on the elevation of
    its viewing ray, so the frame is deterministic and turns and pitches with the camera.

    Args:
        camera: Intrinsics, image ``(H, W)``.
        pose: Camera-to-world pose (ENU world, OpenCV camera).

    Returns:
        uint8 ``(H, W, 3)``.
    """
    up = pose.rotation_matrix[2]  # world z of the camera axes: elevation = up . ray / |ray|
    x = ((np.arange(camera.width) + 0.5 - camera.cx) / camera.fx).astype(np.float32)
    y = ((np.arange(camera.height) + 0.5 - camera.cy) / camera.fy).astype(np.float32)
    rise = up[0] * x[None, :] + up[1] * y[:, None] + up[2]
    sine = rise / np.sqrt(x[None, :] ** 2 + y[:, None] ** 2 + 1.0)  # (H, W) in [-1, 1]
    sky_t = np.sqrt(np.clip(sine, 0.0, 1.0))[..., None]
    ground_t = np.sqrt(np.clip(-sine, 0.0, 1.0))[..., None]
    sky = _SKY_HORIZON + (_SKY_ZENITH - _SKY_HORIZON) * sky_t
    ground = _GROUND_FAR + (_GROUND_NEAR - _GROUND_FAR) * ground_t
    frame = np.where(sine[..., None] >= 0.0, sky, ground)
    return np.clip(frame + 0.5, 0, 255).astype(np.uint8)


def push_pull_fill(frames: np.ndarray, valid: np.ndarray) -> None:
    """Fill the invalid pixels of ``frames`` in place by push-pull interpolation.

    Push: a pyramid of valid-weighted colour sums and valid fractions (area downsampling by 2).
    Pull: from the coarsest level down, each level's estimate is its weighted sum plus the
    upsampled coarser estimate times its missing fraction. Holes take a smooth average of the
    valid pixels around them, the nearer the stronger; valid pixels are never changed. The
    full-resolution steps stay in uint8 OpenCV calls; frames without holes are skipped.

    Args:
        frames: uint8 ``(n, H, W, 3)``, modified in place; must be 0 wherever ``valid`` is false
            (forward-splat output is), so each frame is its own valid-weighted sum.
        valid: bool ``(n, H, W)``: pixels to keep. A frame with no valid pixel becomes black.
    """
    for frame, keep in zip(frames, valid, strict=True):
        if not keep.all():
            _push_pull_one(frame, keep)


def _push_pull_one(frame: np.ndarray, valid: np.ndarray) -> None:
    """:func:`push_pull_fill` of one frame: uint8 ``(H, W, 3)`` in place, bool ``(H, W)``."""
    height, width = valid.shape
    half = (max(width // 2, 1), max(height // 2, 1))
    # level 1 straight from uint8: area averages of the zero-holed colour and of 0/255 weights
    level = np.empty((half[1], half[0], 4), np.float32)
    level[..., :3] = cv2.resize(frame, half, interpolation=cv2.INTER_AREA).reshape(
        *level.shape[:2], 3
    )
    holes = cv2.compare(valid.view(np.uint8), 0, cv2.CMP_EQ)  # 255 on holes, 0 elsewhere
    level[..., 3] = 255.0 - cv2.resize(holes, half, interpolation=cv2.INTER_AREA)
    level *= 1.0 / 255.0  # colour sums and weights in [0, 1]
    estimate = np.clip(_pull(level) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    filled = cv2.resize(estimate, (width, height), interpolation=cv2.INTER_LINEAR)
    cv2.copyTo(filled, holes, frame)  # writes into frame's buffer where holes != 0


def _pull(level: np.ndarray) -> np.ndarray:
    """Push-pull below one level: its filled colour ``(h, w, 3)`` from sums and weights.

    Args:
        level: float32 ``(h, w, 4)``: ``[r*m, g*m, b*m, m]`` with colour in ``[0, 1]``.
    """
    h, w = level.shape[:2]
    sums, weights = level[..., :3], level[..., 3:]
    if h <= 1 or w <= 1:  # coarsest: the plain average (black where nothing is valid)
        return sums / np.maximum(weights, 1e-6)
    coarser = _pull(
        cv2.resize(level, (max(w // 2, 1), max(h // 2, 1)), interpolation=cv2.INTER_AREA)
    )
    up = cv2.resize(coarser, (w, h), interpolation=cv2.INTER_LINEAR)
    return sums + up * (1.0 - weights)


def _large_hole_pixels(holes: np.ndarray) -> int:
    """Hole pixels ``(H, W)`` bool left after a 5x5 erosion: cracks up to four pixels wide vanish.

    Cracks are what a magnified surface leaves between its splatted pixels; other references
    rarely fill them better than push-pull does, so they do not call for another splat.
    """
    return int(cv2.countNonZero(cv2.erode(holes.view(np.uint8), _ERODE_KERNEL)))


# --- the model ----------------------------------------------------------------------------------
class WarpWorldModel(WorldModel):
    """Frames made by forward-splatting retrieved references; no learning, no randomness.

    Each frame is its nearest reference forward-splatted with metric depth (the SWM geometric
    referencing input), its large holes filled from the next references in rank order and then
    the lookahead sink, and the rest filled by push-pull interpolation (see the module docstring).
    Reference sky (depth 0) is splatted at infinity. With no reference at all a frame is
    :func:`neutral_frame` and ``info["neutral_frames"]`` counts it.

    The text prompt is ignored: it is stored by :meth:`set_prompt` / :meth:`reset` (so
    ``self.prompt`` reads back) but never changes a frame; ``info["prompt_used"]`` is always
    ``False``. The ``generator`` of :meth:`reset` is ignored too: the model is deterministic.

    Args:
        max_extra_references: At most this many references beyond the nearest are splatted into a
            frame to fill its holes.
        hole_threshold: A frame gets another reference while more than this fraction of its
            pixels lies in holes wider than two pixels.
        cache_size: Number of references kept resized for the target size.
    """

    def __init__(
        self,
        *,
        max_extra_references: int = 1,
        hole_threshold: float = 0.02,
        cache_size: int = 64,
    ) -> None:
        if max_extra_references < 0 or not 0.0 <= hole_threshold <= 1.0:
            raise ValueError(
                "max_extra_references must be >= 0 and hole_threshold in [0, 1], got "
                f"{max_extra_references!r} and {hole_threshold!r}."
            )
        self.max_extra_references = int(max_extra_references)
        self.hole_threshold = float(hole_threshold)
        self.camera: PinholeCamera | None = None
        self.reset_info: dict[str, Any] = {}
        self._cache = _PreparedCache(cache_size)
        self._image_buffer = np.empty((0, 0, 0, 3), np.uint8)
        self._depth_buffer = np.empty((0, 0, 0), np.float32)

    # --- WorldModel API -------------------------------------------------------------------------
    def reset(
        self,
        *,
        pose: Pose,
        camera: PinholeCamera,
        references: ChunkReferences,
        start_image: np.ndarray | None = None,
        prompt: str | None = None,
        generator: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Start an episode at ``pose``; see :meth:`WorldModel.reset`.

        The first frame is ``start_image`` resized to ``camera`` when given, otherwise made from
        the references like any generated frame (a chunk of one frame). ``prompt`` is stored and
        ignored, ``generator`` ignored. What was done is in ``self.reset_info``.

        Returns:
            The first frame, uint8 ``(H, W, 3)``.

        Raises:
            ShapeMismatchError: If ``start_image`` is not an RGB uint8 ``(h, w, 3)`` image.
        """
        self.camera = camera
        self.prompt = prompt
        if start_image is not None:
            self.reset_info = {"source": "start_image", "references_used": 0}
            return _fit_start_image(start_image, camera)
        first = ChunkReferences(
            references.views, _first_per_frame(references.per_frame), references.sink
        )
        output = self.generate(Trajectory.from_poses([pose]), first)
        self.reset_info = {"source": "references", **output.info}
        return output.frames[0]

    def generate(self, trajectory: Trajectory, references: ChunkReferences) -> ChunkOutput:
        """Generate the frames of one chunk; see :meth:`WorldModel.generate`.

        Args:
            trajectory: The chunk's ``L`` camera-to-world poses (ENU); timestamps are not used.
            references: The chunk's loaded references (possibly none), ``per_frame`` ``(L,)``.

        Returns:
            A :class:`ChunkOutput` with ``frames`` uint8 ``(L, H, W, 3)``; ``warps`` uint8
            ``(L, H, W, 3)``, each frame's nearest reference splatted (sky at infinity included),
            zero where nothing landed; ``masks`` bool ``(L, H, W)``, where something landed; and
            ``info``: ``splat_s`` (every splat), ``fill_s`` (push-pull), ``total_s`` (seconds),
            ``hole_fraction`` (mean
            fraction of pixels the nearest reference left empty), ``reference_fill_fraction``
            (filled from further references), ``inpaint_fraction`` (filled by push-pull),
            ``references_used`` (distinct references splatted), ``extra_splats``,
            ``neutral_frames``, ``prompt_used`` (always ``False``).

        Raises:
            CityEnvError: If :meth:`reset` was never called (the model needs the camera).
            ShapeMismatchError: If ``references.per_frame`` does not have one entry per pose.
        """
        camera = self._require_camera()
        start = time.perf_counter()
        plans = self._plan(references, len(trajectory), camera)
        matrices = trajectory.matrices
        chunk = _Chunk.empty(len(trajectory), camera)
        splat_s = self._splat_nearest(chunk, plans, matrices, camera)
        chunk.neutral(plans, trajectory, camera)
        splat_s += self._fill_from_references(chunk, plans, matrices, camera)
        fill_start = time.perf_counter()
        inpainted = chunk.inpaint(plans)
        fill_s = time.perf_counter() - fill_start
        info = chunk.info(plans, inpainted, splat_s, fill_s, time.perf_counter() - start)
        return ChunkOutput(chunk.frames, chunk.warps, chunk.masks, references, info)

    # --- steps ----------------------------------------------------------------------------------
    def reference_at_size(
        self, view: ReferenceView, width: int, height: int
    ) -> tuple[np.ndarray, PinholeCamera]:
        """``view``'s image resized to ``(height, width)``, uint8 ``(H, W, 3)``, and its
        intrinsics rescaled to match (from the same cache the splatting uses)."""
        prepared = self._cache.get(view, width, height)
        return prepared.image, prepared.camera

    def _require_camera(self) -> PinholeCamera:
        if self.camera is None:
            raise CityEnvError(
                "WarpWorldModel.generate needs the frame camera: call reset(pose=..., camera=..., "
                "references=...) first."
            )
        return self.camera

    def _plan(
        self, references: ChunkReferences, length: int, camera: PinholeCamera
    ) -> list[list[_Prepared]]:
        """Per frame, the references to splat in order: nearest, next by rank, then the sink.

        Raises:
            ShapeMismatchError: If ``per_frame`` does not hold ``length`` entries.
        """
        per_frame = np.asarray(references.per_frame).reshape(-1)
        if per_frame.shape[0] != length:
            raise ShapeMismatchError(
                f"references.per_frame must hold one reference index per pose ({length}), got "
                f"{per_frame.shape[0]}; retrieve references for this trajectory chunk."
            )
        views = [self._cache.get(v, camera.width, camera.height) for v in references.views]
        sink = references.sink
        if sink is not None and all(v.view.view_id != sink.view_id for v in views):
            views.append(self._cache.get(sink, camera.width, camera.height))
        depth = 1 + self.max_extra_references
        ranked = list(range(len(views)))
        return [
            _frame_order(ranked, int(p), len(references.views), views, depth) for p in per_frame
        ]

    def _splat_nearest(
        self,
        chunk: _Chunk,
        plans: list[list[_Prepared]],
        matrices: np.ndarray,
        camera: PinholeCamera,
    ) -> float:
        """Splat each frame's first reference into ``chunk`` (warps, masks, frames); seconds."""
        start = time.perf_counter()
        frames = [i for i, plan in enumerate(plans) if plan]
        if frames:
            warped, valid = self._splat([plans[i][0] for i in frames], matrices[frames], camera)
            chunk.warps[frames] = warped
            chunk.masks[frames] = valid
            chunk.frames[frames] = warped
            chunk.filled[frames] = valid
            chunk.splatted.update(plans[i][0].view.view_id for i in frames)
        return time.perf_counter() - start

    def _fill_from_references(
        self,
        chunk: _Chunk,
        plans: list[list[_Prepared]],
        matrices: np.ndarray,
        camera: PinholeCamera,
    ) -> float:
        """Splat further references into frames with large holes, one round per rank; seconds."""
        start = time.perf_counter()
        limit = self.hole_threshold * camera.width * camera.height
        for rank in range(1, 1 + self.max_extra_references):
            frames = [
                i
                for i, plan in enumerate(plans)
                if len(plan) > rank and _large_hole_pixels(~chunk.filled[i]) > limit
            ]
            if not frames:
                break
            warped, valid = self._splat([plans[i][rank] for i in frames], matrices[frames], camera)
            for j, i in enumerate(frames):
                take = valid[j] & ~chunk.filled[i]
                chunk.frames[i][take] = warped[j][take]
                chunk.filled[i] |= take
                chunk.from_references += int(take.sum())
            chunk.extra_splats += len(frames)
            chunk.splatted.update(plans[i][rank].view.view_id for i in frames)
        return time.perf_counter() - start

    def _splat(
        self, sources: list[_Prepared], matrices: np.ndarray, camera: PinholeCamera
    ) -> tuple[np.ndarray, np.ndarray]:
        """Forward-splat ``sources[i]`` into the frame at ``matrices[i]``, batched per intrinsics.

        Args:
            sources: ``n`` prepared references (the same one may repeat).
            matrices: Target camera-to-world, float64 ``(n, 4, 4)``.
            camera: Target intrinsics, image ``(H, W)``.

        Returns:
            ``(warped, valid)``: uint8 ``(n, H, W, 3)`` and bool ``(n, H, W)``.
        """
        warped = np.empty((len(sources), camera.height, camera.width, 3), np.uint8)
        valid = np.empty((len(sources), camera.height, camera.width), bool)
        groups: dict[PinholeCamera, list[int]] = {}
        for i, source in enumerate(sources):
            groups.setdefault(source.camera, []).append(i)
        for src_camera, members in groups.items():
            images, depths = self._stacked([sources[i] for i in members])
            src = np.stack([sources[i].matrix for i in members])
            out, hit = forward_splat(images, depths, src_camera, src, camera, matrices[members])
            warped[members], valid[members] = out, hit
        return warped, valid

    def _stacked(self, sources: Sequence[_Prepared]) -> tuple[np.ndarray, np.ndarray]:
        """Images ``(n, H, W, 3)`` and depths ``(n, H, W)`` of ``sources`` in reused buffers."""
        n, (height, width) = len(sources), sources[0].depth.shape
        if self._depth_buffer.shape[0] < n or self._depth_buffer.shape[1:] != (height, width):
            self._image_buffer = np.empty((n, height, width, 3), np.uint8)
            self._depth_buffer = np.empty((n, height, width), np.float32)
        images, depths = self._image_buffer[:n], self._depth_buffer[:n]
        for i, source in enumerate(sources):
            images[i] = source.image
            depths[i] = source.depth
        return images, depths


# --- per-chunk bookkeeping ----------------------------------------------------------------------
@dataclass(eq=False)
class _Chunk:
    """The arrays of one chunk of ``L`` frames while it is being made.

    Attributes:
        frames: uint8 ``(L, H, W, 3)``, the output frames.
        warps: uint8 ``(L, H, W, 3)``, the nearest reference's splat.
        masks: bool ``(L, H, W)``, where that splat landed.
        filled: bool ``(L, H, W)``, pixels of ``frames`` final before push-pull.
        splatted: Ids of the references splatted.
        from_references: Pixels filled by further references.
        extra_splats: Splats beyond the nearest reference.
        neutral_count: Frames without any reference (given :func:`neutral_frame`).
    """

    frames: np.ndarray
    warps: np.ndarray
    masks: np.ndarray
    filled: np.ndarray
    splatted: set[int]
    from_references: int = 0
    extra_splats: int = 0
    neutral_count: int = 0

    @classmethod
    def empty(cls, length: int, camera: PinholeCamera) -> _Chunk:
        shape = (length, camera.height, camera.width)
        return cls(
            frames=np.zeros((*shape, 3), np.uint8),
            warps=np.zeros((*shape, 3), np.uint8),
            masks=np.zeros(shape, bool),
            filled=np.zeros(shape, bool),
            splatted=set(),
        )

    def neutral(
        self, plans: list[list[_Prepared]], trajectory: Trajectory, camera: PinholeCamera
    ) -> None:
        """Give frames without any reference the :func:`neutral_frame` of their pose."""
        for i, plan in enumerate(plans):
            if not plan:
                self.frames[i] = neutral_frame(camera, trajectory[i])
                self.neutral_count += 1

    def inpaint(self, plans: list[list[_Prepared]]) -> int:
        """Push-pull fill what no reference filled in frames with references; pixels filled."""
        with_refs = np.flatnonzero([bool(p) for p in plans])
        if len(with_refs) == len(plans):
            holes = int(self.filled.size - np.count_nonzero(self.filled))
            push_pull_fill(self.frames, self.filled)
            return holes
        frames, filled = self.frames[with_refs], self.filled[with_refs]
        push_pull_fill(frames, filled)
        self.frames[with_refs] = frames
        return int(filled.size - np.count_nonzero(filled))

    def info(
        self,
        plans: list[list[_Prepared]],
        inpainted: int,
        splat_s: float,
        fill_s: float,
        total_s: float,
    ) -> dict[str, Any]:
        """The JSON-serialisable ``ChunkOutput.info`` (see :meth:`WarpWorldModel.generate`)."""
        pixels = max(sum(1 for p in plans if p) * self.masks[0].size, 1)
        holes = int(sum((~self.masks[i]).sum() for i, p in enumerate(plans) if p))
        return {
            "model": "warp",
            "splat_s": splat_s,
            "fill_s": fill_s,
            "total_s": total_s,
            "hole_fraction": holes / pixels,
            "reference_fill_fraction": self.from_references / pixels,
            "inpaint_fraction": int(inpainted) / pixels,
            "references_used": len(self.splatted),
            "extra_splats": self.extra_splats,
            "neutral_frames": self.neutral_count,
            "prompt_used": False,
        }


# --- small helpers ------------------------------------------------------------------------------
def _frame_order(
    ranked: list[int], nearest: int, num_views: int, views: list[_Prepared], depth: int
) -> list[_Prepared]:
    """A frame's references to splat: ``nearest`` (if a valid view index), then the rest by rank.

    ``views`` holds the chunk's references in rank order followed by the sink (if it is not one of
    them); a frame whose nearest index is ``-1`` starts from the best-ranked one.
    """
    first = nearest if 0 <= nearest < num_views else None
    order = ([first] if first is not None else []) + [i for i in ranked if i != first]
    return [views[i] for i in order[:depth]]


def _first_per_frame(per_frame: np.ndarray) -> np.ndarray:
    """The first frame's entry of ``per_frame`` as an int64 ``(1,)`` (``-1`` if it is empty)."""
    flat = np.asarray(per_frame, np.int64).reshape(-1)
    return flat[:1].copy() if flat.size else np.full(1, -1, np.int64)


def _fit_start_image(image: np.ndarray, camera: PinholeCamera) -> np.ndarray:
    """``image`` as a fresh uint8 ``(H, W, 3)`` at the camera's size (area resampling).

    Raises:
        ShapeMismatchError: If ``image`` is not uint8 ``(h, w, 3)``.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ShapeMismatchError(
            f"start_image must be an RGB uint8 image of shape (H, W, 3), got shape {image.shape} "
            f"and dtype {image.dtype}; convert it with np.asarray(img, np.uint8)."
        )
    if image.shape[:2] == camera.shape:
        return image.copy()
    return cv2.resize(image, (camera.width, camera.height), interpolation=cv2.INTER_AREA)
