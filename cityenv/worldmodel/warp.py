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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from cityenv.errors import CityEnvError, ShapeMismatchError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose, Trajectory
from cityenv.worldmodel.base import ChunkOutput, ChunkReferences, WorldModel
from cityenv.worldmodel.options import WarpOptions
from cityenv.worldmodel.referencing import (
    SKY_DEPTH_M,
    PreparedChunk,
    PreparedReference,
    Referencer,
    ReferenceView,
)

__all__ = [
    "SKY_DEPTH_M",
    "WarpOptions",
    "WarpWorldModel",
    "first_frame",
    "neutral_frame",
    "push_pull_fill",
    "warp_chunk",
]

_SKY_ZENITH = np.array([118.0, 148.0, 192.0], np.float32)  # neutral frame colours, RGB
_SKY_HORIZON = np.array([196.0, 204.0, 212.0], np.float32)
_GROUND_NEAR = np.array([92.0, 92.0, 90.0], np.float32)
_GROUND_FAR = np.array([150.0, 150.0, 146.0], np.float32)
_ERODE_KERNEL = np.ones((5, 5), np.uint8)


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


# --- the steps, as functions of a referencer ----------------------------------------------------
def warp_chunk(
    referencer: Referencer,
    trajectory: Trajectory,
    references: ChunkReferences,
    camera: PinholeCamera,
    *,
    max_extra_references: int = 1,
    hole_threshold: float = 0.02,
) -> ChunkOutput:
    """The warp baseline's frames of one chunk (see the module docstring for the three steps).

    Args:
        referencer: Prepares and splats the references (its cache is reused across chunks).
        trajectory: The chunk's ``L`` camera-to-world poses (ENU); timestamps are not used.
        references: The chunk's loaded references (possibly none), ``per_frame`` ``(L,)``.
        camera: The frames' intrinsics, image ``(H, W)``.
        max_extra_references: See :class:`WarpWorldModel`.
        hole_threshold: See :class:`WarpWorldModel`.

    Returns:
        See :meth:`WarpWorldModel.generate`.

    Raises:
        ShapeMismatchError: If ``references.per_frame`` does not have one entry per pose.
    """
    start = time.perf_counter()
    prepared = referencer.prepare_chunk(references, len(trajectory), camera)
    plans = [prepared.frame_order(i, 1 + max_extra_references) for i in range(len(trajectory))]
    matrices = trajectory.matrices
    chunk = _Chunk.empty(len(trajectory), camera)
    splat_s = _splat_nearest(referencer, chunk, prepared, matrices, camera)
    chunk.neutral(plans, trajectory, camera)
    splat_s += _fill_from_references(
        referencer, chunk, plans, matrices, camera, max_extra_references, hole_threshold
    )
    fill_start = time.perf_counter()
    inpainted = chunk.inpaint(plans)
    fill_s = time.perf_counter() - fill_start
    info = chunk.info(plans, inpainted, splat_s, fill_s, time.perf_counter() - start)
    return ChunkOutput(chunk.frames, chunk.warps, chunk.masks, references, info)


def first_frame(
    referencer: Referencer,
    pose: Pose,
    camera: PinholeCamera,
    references: ChunkReferences,
    start_image: np.ndarray | None = None,
    **fill: Any,
) -> tuple[np.ndarray, dict[str, Any]]:
    """An episode's first frame: ``start_image`` resized to ``camera``, or else the references
    warped into ``pose`` (:func:`warp_chunk` on a chunk of one frame, its ``per_frame`` the
    first entry of ``references.per_frame``).

    Args:
        referencer: Prepares and splats the references.
        pose: The first frame's camera-to-world pose.
        camera: Its intrinsics.
        references: References retrieved for it.
        start_image: uint8 ``(h, w, 3)`` or ``None``.
        **fill: ``max_extra_references`` / ``hole_threshold`` of :func:`warp_chunk`.

    Returns:
        ``(frame, info)``: uint8 ``(H, W, 3)`` and what was done (``source``: ``start_image`` or
        ``references``, with :func:`warp_chunk`'s info in the latter case).

    Raises:
        ShapeMismatchError: If ``start_image`` is not an RGB uint8 ``(h, w, 3)`` image.
    """
    if start_image is not None:
        return _fit_start_image(start_image, camera), {
            "source": "start_image",
            "references_used": 0,
        }
    first = ChunkReferences(
        references.views, _first_per_frame(references.per_frame), references.sink
    )
    output = warp_chunk(referencer, Trajectory.from_poses([pose]), first, camera, **fill)
    return output.frames[0], {"source": "references", **output.info}


def _splat_nearest(
    referencer: Referencer,
    chunk: _Chunk,
    prepared: PreparedChunk,
    matrices: np.ndarray,
    camera: PinholeCamera,
) -> float:
    """Splat each frame's nearest reference into ``chunk`` (warps, masks, frames); seconds."""
    start = time.perf_counter()
    chunk.warps, chunk.masks = referencer.warp_nearest(prepared, matrices, camera)
    chunk.frames[:] = chunk.warps
    chunk.filled[:] = chunk.masks
    chunk.splatted.update(prepared.sources[i].view.view_id for i in prepared.nearest if i >= 0)
    return time.perf_counter() - start


def _fill_from_references(
    referencer: Referencer,
    chunk: _Chunk,
    plans: list[list[PreparedReference]],
    matrices: np.ndarray,
    camera: PinholeCamera,
    max_extra_references: int,
    hole_threshold: float,
) -> float:
    """Splat further references into frames with large holes, one round per rank; seconds."""
    start = time.perf_counter()
    limit = hole_threshold * camera.width * camera.height
    for rank in range(1, 1 + max_extra_references):
        frames = [
            i
            for i, plan in enumerate(plans)
            if len(plan) > rank and _large_hole_pixels(~chunk.filled[i]) > limit
        ]
        if not frames:
            break
        warped, valid = referencer.splat([plans[i][rank] for i in frames], matrices[frames], camera)
        for j, i in enumerate(frames):
            take = valid[j] & ~chunk.filled[i]
            chunk.frames[i][take] = warped[j][take]
            chunk.filled[i] |= take
            chunk.from_references += int(take.sum())
        chunk.extra_splats += len(frames)
        chunk.splatted.update(plans[i][rank].view.view_id for i in frames)
    return time.perf_counter() - start


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
        cache_size: Number of references kept resized for the target size (when no
            ``referencer`` is given).
        referencer: The part that prepares and splats references (``None``: a new one with
            ``cache_size`` entries).
    """

    def __init__(
        self,
        *,
        max_extra_references: int = 1,
        hole_threshold: float = 0.02,
        cache_size: int = 64,
        referencer: Referencer | None = None,
    ) -> None:
        options = WarpOptions(max_extra_references, hole_threshold, cache_size)
        self.max_extra_references = options.max_extra_references
        self.hole_threshold = options.hole_threshold
        self.referencer = referencer if referencer is not None else Referencer(options.cache_size)
        self.camera: PinholeCamera | None = None
        self.reset_info: dict[str, Any] = {}

    @classmethod
    def create(
        cls, options: WarpOptions | Mapping[str, Any] | None = None, /, **kwargs: Any
    ) -> WarpWorldModel:
        """The environment's factory (``world_model="warp"``), from checked options.

        Args:
            options: A :class:`WarpOptions` or a mapping of its fields.
            **kwargs: Its fields as keywords (instead of ``options``).

        Raises:
            UnknownOptionError: If a key is not an option (with "Did you mean").
            InvalidOptionError: If a value has the wrong type or is out of range.
        """
        opts = WarpOptions.coerce(options, **kwargs)
        return cls(
            max_extra_references=opts.max_extra_references,
            hole_threshold=opts.hole_threshold,
            cache_size=opts.cache_size,
        )

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
        frame, self.reset_info = first_frame(
            self.referencer, pose, camera, references, start_image, **self._fill
        )
        return frame

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
        return warp_chunk(self.referencer, trajectory, references, camera, **self._fill)

    # --- steps ----------------------------------------------------------------------------------
    def reference_at_size(
        self, view: ReferenceView, width: int, height: int
    ) -> tuple[np.ndarray, PinholeCamera]:
        """``view``'s image resized to ``(height, width)``, uint8 ``(H, W, 3)``, and its
        intrinsics rescaled to match (from the same cache the splatting uses)."""
        prepared = self.referencer.prepare(view, width, height)
        return prepared.image, prepared.camera

    @property
    def _fill(self) -> dict[str, Any]:
        return {
            "max_extra_references": self.max_extra_references,
            "hole_threshold": self.hole_threshold,
        }

    def _require_camera(self) -> PinholeCamera:
        if self.camera is None:
            raise CityEnvError(
                "WarpWorldModel.generate needs the frame camera: call reset(pose=..., camera=..., "
                "references=...) first."
            )
        return self.camera


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
        self, plans: list[list[PreparedReference]], trajectory: Trajectory, camera: PinholeCamera
    ) -> None:
        """Give frames without any reference the :func:`neutral_frame` of their pose."""
        for i, plan in enumerate(plans):
            if not plan:
                self.frames[i] = neutral_frame(camera, trajectory[i])
                self.neutral_count += 1

    def inpaint(self, plans: list[list[PreparedReference]]) -> int:
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
        plans: list[list[PreparedReference]],
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
