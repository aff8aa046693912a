"""Depth for ingested photos through one pluggable interface: :data:`DEPTH_SOURCES`.

A depth source is built by a factory ``factory(**options) -> DepthSource``; a source maps the
views of one traversal (undistorted pinhole images, their cameras and the sparse metric depth that
structure from motion found, if any) to a metric z-depth map per view, or ``None`` for a view it
cannot give depth to. Built in:

- ``"none"``: no depth (the views can serve only as the lookahead sink; a warning says so).
- ``"sfm"``: the reconstruction's sparse points densified along each view: inverse depth is
  interpolated linearly between the points' pixels (exact on planar patches), ``0`` outside their
  convex hull. Needs ``refine="sfm"``.
- ``"depth-anything"``: a monocular metric depth network (Depth Anything V2 metric, transformers'
  ``DepthAnythingForDepthEstimation``) loaded from a local folder (``model=PATH``), scale-aligned
  per view to the sparse SfM depth (median ratio) when there is one; the SfM reconstruction takes
  its metric scale from the GPS alignment, so the aligned depth is in GPS metres.

Another package adds a source through the entry-point group ``cityenv.depth_sources`` or
``DEPTH_SOURCES.register("name", factory)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from cityenv.citydb.photos.sfm import SparseDepth
from cityenv.errors import DepthModelError
from cityenv.geometry.camera import PinholeCamera
from cityenv.registry import Registry

__all__ = [
    "DEPTH_SOURCES",
    "DepthAnythingDepth",
    "DepthSource",
    "DepthView",
    "SfMDepth",
    "densify_sparse_depth",
    "make_depth_source",
]


@dataclass(frozen=True)
class DepthView:
    """What a depth source sees of one view.

    Attributes:
        image: Undistorted RGB image ``(H, W, 3)`` uint8.
        camera: Its pinhole intrinsics.
        sparse: Sparse metric depth from structure from motion, or ``None``.
    """

    image: np.ndarray
    camera: PinholeCamera
    sparse: SparseDepth | None


class DepthSource(Protocol):
    """Metric z-depth maps for the views of one traversal."""

    needs_sfm: bool
    """Whether the source needs the SfM reconstruction (``refine="sfm"``)."""

    def __call__(self, views: Sequence[DepthView]) -> list[np.ndarray | None]:
        """A depth map ``(H, W)`` float32 in metres (0 = none) per view, or ``None``."""
        ...


DEPTH_SOURCES: Registry[Callable[..., DepthSource]] = Registry(
    "depth source",
    "cityenv.depth_sources",
    error=DepthModelError,
    advice="Built in: 'none', 'sfm', 'depth-anything' (docs/citydb.md, Ingesting photos).",
)
"""Depth source name -> factory ``(**options) -> DepthSource``."""


def make_depth_source(name: str, **options: object) -> DepthSource:
    """The depth source registered as ``name``, built with ``options``.

    Raises:
        DepthModelError: For an unknown name ("Did you mean ...?") or options it does not take.
    """
    factory = DEPTH_SOURCES.get(name)
    try:
        return factory(**options)
    except TypeError as exc:
        raise DepthModelError(
            f"depth source {name!r} takes other options, got {sorted(options)} ({exc}); see "
            "docs/citydb.md (Depth)."
        ) from exc


class NoDepth:
    """The ``"none"`` source: every view without depth."""

    needs_sfm = False

    def __call__(self, views: Sequence[DepthView]) -> list[np.ndarray | None]:
        return [None] * len(views)


def densify_sparse_depth(
    sparse: SparseDepth, camera: PinholeCamera, *, min_points: int = 8
) -> np.ndarray | None:
    """A dense z-depth map ``(H, W)`` float32 from sparse points, 0 outside their hull.

    Inverse depth is interpolated linearly over a Delaunay triangulation of the points' pixels:
    on a planar patch inverse depth is affine in the image, so triangles that lie on one surface
    are exact; triangles across an occlusion edge blend the two depths.

    Returns:
        The depth map, or ``None`` with fewer than ``min_points`` points.
    """
    from scipy.interpolate import LinearNDInterpolator
    from scipy.spatial import QhullError

    if len(sparse.z) < min_points:
        return None
    cols, rows = np.meshgrid(np.arange(camera.width) + 0.5, np.arange(camera.height) + 0.5)
    try:
        interpolate = LinearNDInterpolator(sparse.uv, 1.0 / sparse.z, fill_value=0.0)
    except QhullError:  # all points on a line: no area to fill
        return None
    inverse = interpolate(cols, rows)
    depth = np.zeros(camera.shape, np.float32)
    valid = inverse > 0
    depth[valid] = 1.0 / inverse[valid]
    return depth


class SfMDepth:
    """The ``"sfm"`` source: sparse SfM points densified along each view.

    Args:
        min_points: Fewest points a view needs for a depth map.
    """

    needs_sfm = True

    def __init__(self, min_points: int = 8) -> None:
        self.min_points = int(min_points)

    def __call__(self, views: Sequence[DepthView]) -> list[np.ndarray | None]:
        return [
            None
            if v.sparse is None
            else densify_sparse_depth(v.sparse, v.camera, min_points=self.min_points)
            for v in views
        ]


_MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # ImageNet statistics (DINOv2 backbone)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


class DepthAnythingDepth:
    """The ``"depth-anything"`` source: a metric monocular network from a local folder.

    Args:
        model: Folder written by ``save_pretrained`` of ``DepthAnythingForDepthEstimation`` (for
            example Depth-Anything-V2-Metric-Outdoor-Small-hf, downloaded beforehand).
        input_size: Shorter side of the network input (rounded to the patch size); 518 as in
            the paper.
        align: ``"sfm"``: scale each view's prediction by the median ratio to its sparse SfM
            depth when it has at least ``min_points`` points; ``"none"``: trust the network's
            metric scale.
        min_points: Fewest sparse points for a scale alignment.
        device: Torch device.

    Raises:
        DepthModelError: If the folder is missing or does not hold a Depth Anything model.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        input_size: int = 518,
        align: str = "sfm",
        min_points: int = 8,
        device: str = "cpu",
    ) -> None:
        if align not in ("sfm", "none"):
            raise DepthModelError(f"align must be 'sfm' or 'none', got {align!r}.")
        self.align, self.min_points, self.device = align, int(min_points), device
        self.needs_sfm = align == "sfm"
        self.model = _load_depth_anything(Path(model), device)
        self.patch = int(self.model.config.backbone_config.patch_size)
        self.input_size = max(self.patch, round(input_size / self.patch) * self.patch)
        self.scales: list[float | None] = []
        """Scale factor applied per view in the last call (``None`` = not aligned)."""

    def predict(self, image: np.ndarray) -> np.ndarray:
        """The network's metric depth ``(H, W)`` float32 for an RGB image ``(H, W, 3)`` uint8."""
        import torch

        h, w = image.shape[:2]
        scale = self.input_size / min(h, w)
        size = (
            max(self.patch, round(w * scale / self.patch) * self.patch),
            max(self.patch, round(h * scale / self.patch) * self.patch),
        )
        x = (cv2.resize(image, size, interpolation=cv2.INTER_CUBIC) / 255.0 - _MEAN) / _STD
        pixels = torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32)).to(self.device)
        with torch.inference_mode():
            out = self.model(pixel_values=pixels).predicted_depth[0].float().cpu().numpy()
        return np.maximum(cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR), 0.0)

    def __call__(self, views: Sequence[DepthView]) -> list[np.ndarray | None]:
        depths: list[np.ndarray | None] = []
        self.scales = []
        for view in views:
            depth = self.predict(view.image)
            factor = self._scale(depth, view.sparse) if self.align == "sfm" else None
            self.scales.append(factor)
            depths.append((depth * factor if factor is not None else depth).astype(np.float32))
        return depths

    def _scale(self, depth: np.ndarray, sparse: SparseDepth | None) -> float | None:
        """Median of sparse / predicted depth at the sparse pixels, or ``None``."""
        if sparse is None or len(sparse.z) < self.min_points:
            return None
        h, w = depth.shape
        cols = np.clip(sparse.uv[:, 0].astype(int), 0, w - 1)
        rows = np.clip(sparse.uv[:, 1].astype(int), 0, h - 1)
        predicted = depth[rows, cols]
        good = predicted > 1e-6
        if good.sum() < self.min_points:
            return None
        return float(np.median(sparse.z[good] / predicted[good]))


def _load_depth_anything(folder: Path, device: str):
    """``DepthAnythingForDepthEstimation`` from a local folder, in eval mode."""
    if not (folder / "config.json").is_file():
        raise DepthModelError(
            f"expected a Depth Anything model folder (config.json + weights, written by "
            f"save_pretrained) at {folder}, got "
            f"{'no folder' if not folder.exists() else 'no config.json'}; "
            "download e.g. depth-anything/Depth-Anything-V2-Metric-Outdoor-Small-hf beforehand."
        )
    from transformers import DepthAnythingForDepthEstimation

    try:
        model = DepthAnythingForDepthEstimation.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise DepthModelError(
            f"the model at {folder} must load as DepthAnythingForDepthEstimation, got {exc}; "
            "check that the folder holds a Depth Anything (V2 metric) checkpoint."
        ) from exc
    if getattr(model.config, "depth_estimation_type", "relative") != "metric":
        raise DepthModelError(
            f"expected a metric Depth Anything model at {folder}, got depth_estimation_type="
            f"{model.config.depth_estimation_type!r} (relative depth has no metres); use a "
            "'Metric' checkpoint."
        )
    return model.to(device).eval()


DEPTH_SOURCES.register("none", NoDepth)
DEPTH_SOURCES.register("sfm", SfMDepth)
DEPTH_SOURCES.register("depth-anything", DepthAnythingDepth)
