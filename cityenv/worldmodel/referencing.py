"""Referencing: street-view references loaded, prepared for a frame size and warped into frames.

What both world models (and the training data code) do with retrieved references, in one place:

- :class:`ReferenceView` and :class:`ReferenceLoader`: a reference as decoded from a CityDB (the
  loader keeps the most recently used ones in an :class:`~cityenv.cache.LRUCache`);
- :func:`fit_image` / :func:`prepare_reference`: a reference (or a sink frame) resized to the
  model's frame size with its intrinsics rescaled; pixels without depth are put at
  :data:`SKY_DEPTH_M`, so the sky follows the camera when splatted;
- :func:`nearest_sources` / :func:`warp_nearest`: the nearest reference of each target frame
  forward-splatted with its depth into that frame (SWM's geometric referencing input);
- :class:`Referencer`: the same steps with ONE cache of prepared references and reused splat
  buffers, the part a world model owns.

The functions take numpy arrays and :class:`ReferenceView` objects only, so code without a world
model (training pairs: target window + references + per-frame warp + sink) calls them directly.
Frames: ENU world, OpenCV cameras, camera-to-world poses, metric z-depth (0 = none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from cityenv.cache import LRUCache
from cityenv.errors import (
    CityDBFormatError,
    CorruptImageError,
    ShapeMismatchError,
)
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose
from cityenv.geometry.splat import forward_splat
from cityenv.worldmodel.base import ChunkReferences

if TYPE_CHECKING:  # a loader only calls db.load_view and reads a result's fields
    from cityenv.citydb.reader import CityDB
    from cityenv.citydb.retrieval import RetrievalResult

__all__ = [
    "SKY_DEPTH_M",
    "PreparedChunk",
    "PreparedReference",
    "ReferenceLoader",
    "ReferenceView",
    "Referencer",
    "SplatBuffers",
    "fit_image",
    "nearest_sources",
    "prepare_reference",
    "splat_sources",
    "warp_nearest",
]

SKY_DEPTH_M = 1.0e5
"""Depth (metres) given to reference pixels without depth: far enough that a few metres of camera
travel move them by well under a pixel (sky at infinity), and behind every real surface."""


# --- references as loaded -----------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ReferenceView:
    """A loaded street-view reference.

    Attributes:
        view_id: Id of the view in its CityDB.
        image: RGB, uint8 ``(h, w, 3)``.
        depth: Metric z-depth, float32 ``(h, w)``, 0 = none.
        camera: Intrinsics of ``image``.
        pose: Camera-to-world pose (ENU).
        traversal_id: Capture pass the view belongs to.
    """

    view_id: int
    image: np.ndarray
    depth: np.ndarray
    camera: PinholeCamera
    pose: Pose
    traversal_id: str = ""


class ReferenceLoader:
    """Loads retrieved views from a CityDB, keeping the most recently used ones in memory.

    A view that cannot be read (damaged bytes or part) is left out of :meth:`load`'s result and
    recorded in ``db.damaged`` (which warns once per view id), so one bad view does not abort an
    episode.

    Args:
        db: The opened database (anything with ``load_view(view_id)`` as :class:`CityDB` has).
        capacity: Number of decoded views kept (a 256x256 view with depth is about 450 KiB).

    Attributes:
        cache: The decoded views, by view id (:meth:`LRUCache.clear` forgets them).
    """

    def __init__(self, db: CityDB, capacity: int = 256) -> None:
        self.db = db
        self.cache: LRUCache[int, ReferenceView] = LRUCache(capacity)

    @property
    def capacity(self) -> int:
        """Number of decoded views kept."""
        return self.cache.capacity

    def view(self, view_id: int) -> ReferenceView:
        """The decoded view ``view_id`` (from the cache when present)."""
        view_id = int(view_id)
        return self.cache.get_or_create(view_id, lambda: self._load(view_id))

    def _load(self, view_id: int) -> ReferenceView:
        loaded = self.db.load_view(view_id)
        return ReferenceView(
            view_id=view_id,
            image=loaded.image,
            depth=loaded.depth,
            camera=loaded.camera,
            pose=loaded.pose,
            traversal_id=loaded.metadata.traversal_id,
        )

    def load(self, result: RetrievalResult) -> ChunkReferences:
        """Load every reference and the sink of a retrieval result, skipping damaged views.

        Frames whose nearest reference was skipped take the loaded reference nearest to it
        (-1 when none is left).
        """
        loaded = [self._readable(r.view_id) for r in result.references]
        sink = self._readable(result.sink.view_id) if result.sink is not None else None
        per_frame = np.asarray(result.per_frame, np.int64).copy()
        kept = [i for i, v in enumerate(loaded) if v is not None]
        if len(kept) < len(loaded):
            per_frame = _remap_per_frame(per_frame, result, kept)
        return ChunkReferences([loaded[i] for i in kept], per_frame, sink)

    def _readable(self, view_id: int) -> ReferenceView | None:
        """The view, or ``None`` (recorded as damaged) if its stored data cannot be read."""
        damaged = getattr(self.db, "damaged", None)
        if damaged is not None and view_id in damaged:
            return None
        try:
            return self.view(view_id)
        except (CorruptImageError, CityDBFormatError) as exc:
            if damaged is None:  # a duck-typed database without a damage log: nowhere to count
                raise
            damaged.report(view_id, exc)
            return None


def _remap_per_frame(per_frame: np.ndarray, result: RetrievalResult, kept: list[int]) -> np.ndarray:
    """``per_frame`` (indices into ``result.references``) as indices into the kept references."""
    if not kept:
        return np.full_like(per_frame, -1)
    positions = np.stack([r.pose.position for r in result.references])
    # each reference -> the nearest kept one (itself when kept)
    d2 = ((positions[:, None] - positions[kept][None]) ** 2).sum(-1)
    nearest_kept = d2.argmin(1)
    nearest_kept[kept] = np.arange(len(kept))
    return np.where(per_frame >= 0, nearest_kept[np.maximum(per_frame, 0)], -1)


# --- preparation --------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PreparedReference:
    """A reference resized to the target frames' size, ready to splat and to encode.

    Attributes:
        view: The reference it was made from (cache hits are checked against it by identity).
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


def fit_image(
    image: np.ndarray, camera: PinholeCamera, width: int, height: int
) -> tuple[np.ndarray, PinholeCamera]:
    """An image resized to ``(height, width)`` (area resampling) and its intrinsics rescaled.

    For a sink frame, a start image or a reference's colour: the resized image is what the model
    encodes, the camera what its Plücker rays are computed from.

    Args:
        image: uint8 ``(h, w, 3)`` (or ``(h, w, C)``; the first 3 channels are kept), of ``camera``.
        camera: Its intrinsics.
        width: Target width ``W``.
        height: Target height ``H``.

    Returns:
        ``(image, camera)``: a contiguous uint8 ``(H, W, 3)`` and the rescaled intrinsics.

    Raises:
        ShapeMismatchError: If ``image`` does not match ``camera``.
    """
    camera.check_image(image, "image")
    if (camera.width, camera.height) != (width, height):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image[..., :3], np.uint8), camera.rescaled(width, height)


def prepare_reference(view: ReferenceView, width: int, height: int) -> PreparedReference:
    """``view`` resized to ``(height, width)`` (area for colour, nearest for depth), sky at
    infinity (:data:`SKY_DEPTH_M` where the depth is 0).

    Raises:
        ShapeMismatchError: If the image or depth do not match the view's camera.
    """
    view.camera.check_image(view.image, "reference image")
    view.camera.check_image(view.depth, "reference depth")
    image, camera = fit_image(view.image, view.camera, width, height)
    depth = np.asarray(view.depth, np.float32)
    if (view.camera.width, view.camera.height) != (width, height):
        depth = cv2.resize(depth, (width, height), interpolation=cv2.INTER_NEAREST)
    depth = np.where(depth > 0, depth, np.float32(SKY_DEPTH_M)).astype(np.float32, copy=False)
    return PreparedReference(
        view=view, image=image, depth=depth, camera=camera, matrix=view.pose.matrix
    )


@dataclass(frozen=True, eq=False)
class PreparedChunk:
    """The references of one chunk of ``L`` frames, prepared at the frame size.

    Attributes:
        views: The chunk's ``K`` references in rank order.
        sink: The lookahead sink, prepared, or ``None``.
        sources: What may be splatted: ``views``, then the sink unless it is one of them.
        nearest: int ``(L,)``: index into ``sources`` of each frame's nearest reference
            (:func:`nearest_sources`), -1 where there is none.
    """

    views: list[PreparedReference]
    sink: PreparedReference | None
    sources: list[PreparedReference]
    nearest: np.ndarray

    def frame_order(self, frame: int, depth: int) -> list[PreparedReference]:
        """Frame ``frame``'s first ``depth`` references to splat: its nearest, then by rank.

        Returns:
            Up to ``depth`` sources (none when the chunk has none).
        """
        first = int(self.nearest[frame])
        if first < 0:
            return []
        order = [first] + [i for i in range(len(self.sources)) if i != first]
        return [self.sources[i] for i in order[:depth]]


def nearest_sources(per_frame: np.ndarray, num_views: int, num_sources: int) -> np.ndarray:
    """Each frame's nearest source: its retrieved reference, or the best-ranked source.

    Args:
        per_frame: int ``(L,)``: index into the ``num_views`` ranked references of each frame's
            nearest one, -1 (or out of range) where the retriever found none for it.
        num_views: ``K``, the references (the first ``K`` sources).
        num_sources: Sources in all (``K``, plus one if the sink is not a reference).

    Returns:
        int64 ``(L,)``: index into the sources; a frame without its own reference takes source 0
        (the best-ranked reference, or the sink alone); -1 only when there is no source.
    """
    flat = np.asarray(per_frame, np.int64).reshape(-1)
    own = (flat >= 0) & (flat < num_views)
    return np.where(own, flat, 0 if num_sources else -1).astype(np.int64)


class SplatBuffers:
    """Reusable stacking buffers for batched splats (one per caller; not thread-safe)."""

    def __init__(self) -> None:
        self.images = np.empty((0, 0, 0, 3), np.uint8)
        self.depths = np.empty((0, 0, 0), np.float32)

    def stacked(self, sources: Sequence[PreparedReference]) -> tuple[np.ndarray, np.ndarray]:
        """Images ``(n, H, W, 3)`` and depths ``(n, H, W)`` of ``sources`` in these buffers."""
        n, (height, width) = len(sources), sources[0].depth.shape
        if self.depths.shape[0] < n or self.depths.shape[1:] != (height, width):
            self.images = np.empty((n, height, width, 3), np.uint8)
            self.depths = np.empty((n, height, width), np.float32)
        images, depths = self.images[:n], self.depths[:n]
        for i, source in enumerate(sources):
            images[i] = source.image
            depths[i] = source.depth
        return images, depths


def splat_sources(
    sources: Sequence[PreparedReference],
    matrices: np.ndarray,
    camera: PinholeCamera,
    buffers: SplatBuffers | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Forward-splat ``sources[i]`` into the frame at ``matrices[i]``, batched per intrinsics.

    Args:
        sources: ``n`` prepared references (the same one may repeat), all of one size.
        matrices: Target camera-to-world, float64 ``(n, 4, 4)``.
        camera: Target intrinsics, image ``(H, W)``.
        buffers: Stacking buffers to reuse (``None``: fresh arrays).

    Returns:
        ``(warped, valid)``: uint8 ``(n, H, W, 3)``, zero where nothing landed, and bool
        ``(n, H, W)``, true where something did.
    """
    buffers = buffers if buffers is not None else SplatBuffers()
    warped = np.empty((len(sources), camera.height, camera.width, 3), np.uint8)
    valid = np.empty((len(sources), camera.height, camera.width), bool)
    groups: dict[PinholeCamera, list[int]] = {}
    for i, source in enumerate(sources):
        groups.setdefault(source.camera, []).append(i)
    for src_camera, members in groups.items():
        images, depths = buffers.stacked([sources[i] for i in members])
        src = np.stack([sources[i].matrix for i in members])
        out, hit = forward_splat(images, depths, src_camera, src, camera, matrices[members])
        warped[members], valid[members] = out, hit
    return warped, valid


def warp_nearest(
    sources: Sequence[PreparedReference],
    nearest: np.ndarray,
    matrices: np.ndarray,
    camera: PinholeCamera,
    buffers: SplatBuffers | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """SWM's geometric referencing input: each frame's nearest reference splatted into it.

    Args:
        sources: The prepared references (:func:`prepare_reference`).
        nearest: int ``(L,)``: index into ``sources`` per frame, -1 for none
            (:func:`nearest_sources`).
        matrices: The frames' camera-to-world, float64 ``(L, 4, 4)``.
        camera: The frames' intrinsics, image ``(H, W)``.
        buffers: Stacking buffers to reuse.

    Returns:
        ``(warps, masks)``: uint8 ``(L, H, W, 3)``, zero where nothing landed (and in frames
        without a reference), and bool ``(L, H, W)``, true where a pixel landed.
    """
    nearest = np.asarray(nearest, np.int64).reshape(-1)
    shape = (len(nearest), camera.height, camera.width)
    warps, masks = np.zeros((*shape, 3), np.uint8), np.zeros(shape, bool)
    frames = np.flatnonzero(nearest >= 0)
    if len(frames):
        chosen = [sources[int(nearest[i])] for i in frames]
        warps[frames], masks[frames] = splat_sources(chosen, matrices[frames], camera, buffers)
    return warps, masks


# --- the part a world model owns ----------------------------------------------------------------
class Referencer:
    """Prepares a chunk's references once per frame size and warps them: one cache, one rule.

    Prepared references are kept in an :class:`~cityenv.cache.LRUCache` keyed by
    ``(view_id, W, H)``; a hit must have been prepared from the very same :class:`ReferenceView`
    object, so two databases whose view ids collide never share an entry.

    Args:
        cache_size: Number of prepared references kept (about 450 KiB each at 256x256).

    Attributes:
        cache: The prepared references.
    """

    def __init__(self, cache_size: int = 64) -> None:
        self.cache: LRUCache[tuple[int, int, int], PreparedReference] = LRUCache(cache_size)
        self._buffers = SplatBuffers()

    def prepare(self, view: ReferenceView, width: int, height: int) -> PreparedReference:
        """The prepared form of ``view`` at ``(height, width)`` (:func:`prepare_reference`)."""
        key = (int(view.view_id), int(width), int(height))
        return self.cache.get_or_create(
            key, lambda: prepare_reference(view, width, height), valid=lambda p: p.view is view
        )

    def prepare_chunk(
        self, references: ChunkReferences, length: int, camera: PinholeCamera
    ) -> PreparedChunk:
        """Prepare a chunk's references and sink at ``camera``'s size; find each frame's nearest.

        Raises:
            ShapeMismatchError: If ``references.per_frame`` does not hold ``length`` entries.
        """
        per_frame = np.asarray(references.per_frame).reshape(-1)
        if per_frame.shape[0] != length:
            raise ShapeMismatchError(
                f"references.per_frame must hold one reference index per pose ({length}), got "
                f"{per_frame.shape[0]}; retrieve references for this trajectory chunk."
            )
        size = (camera.width, camera.height)
        views = [self.prepare(v, *size) for v in references.views]
        sink = None if references.sink is None else self.prepare(references.sink, *size)
        sources = list(views)
        if sink is not None and all(v.view.view_id != sink.view.view_id for v in views):
            sources.append(sink)
        nearest = nearest_sources(per_frame, len(views), len(sources))
        return PreparedChunk(views, sink, sources, nearest)

    def splat(
        self, sources: Sequence[PreparedReference], matrices: np.ndarray, camera: PinholeCamera
    ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`splat_sources` with this referencer's buffers."""
        return splat_sources(sources, matrices, camera, self._buffers)

    def warp_nearest(
        self, chunk: PreparedChunk, matrices: np.ndarray, camera: PinholeCamera
    ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`warp_nearest` of a prepared chunk: warps ``(L, H, W, 3)``, masks ``(L, H, W)``."""
        return warp_nearest(chunk.sources, chunk.nearest, matrices, camera, self._buffers)

    def clear(self) -> None:
        """Forget every prepared reference."""
        self.cache.clear()
