"""Cut an equirectangular panorama into pinhole views.

Panorama frame: the camera frame (OpenCV: x right, y down, z forward) of the panorama at yaw 0,
looking at the panorama's centre column. A panorama of ``W`` columns and ``H`` rows covers
azimuth ``[-180, 180)`` degrees left to right (azimuth grows with the column index, i.e. turning
right, clockwise seen from above) and elevation ``90`` (row 0, straight up) to ``-90`` degrees.
Continuous coordinate ``(x, y)`` (pixel ``(u, v)`` has its centre at ``(u + 0.5, v + 0.5)``) maps to
azimuth ``(x / W - 0.5) * 360`` and elevation ``(0.5 - y / H) * 180`` degrees; the direction with
azimuth ``a`` and elevation ``e`` is ``(sin a cos e, -sin e, cos a cos e)``.

View ``k`` looks at yaw ``yaw_offset + k * 360 / num_views`` degrees (to the right), pitched up by
``pitch``. To place it in the world, compose with the panorama's pose:
``Pose.from_heading(position, pano_heading) @ Pose(np.zeros(3), view.rotation)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import quaternion

from cityenv.errors import InvalidDepthError, ShapeMismatchError
from cityenv.geometry.camera import PinholeCamera

__all__ = ["PinholeView", "equirect_to_pinholes", "view_rotation"]

_CV2_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)  # what cv2.remap samples


@dataclass(frozen=True, eq=False)
class PinholeView:
    """One pinhole view cut from a panorama.

    Attributes:
        image: The view's pixels ``(h, w, C)`` (``(h, w)`` for a single-channel panorama), of the
            panorama's dtype; ``None`` when no panorama image was given.
        depth: Metric z-depth ``(h, w)`` float32 (0 = none); ``None`` when no depth was given.
        camera: The view's intrinsics (square pixels, principal point at the centre).
        rotation: Unit quaternion (w, x, y, z) rotating view-camera vectors into the panorama
            frame (camera-to-panorama).
        yaw_deg: Where the view looks, degrees to the right of the panorama's centre, in
            ``[0, 360)``.
    """

    image: np.ndarray | None
    depth: np.ndarray | None
    camera: PinholeCamera
    rotation: quaternion.quaternion
    yaw_deg: float


def view_rotation(yaw_deg: float, pitch_deg: float = 0.0) -> np.ndarray:
    """Camera-to-panorama rotation of a view turned right by ``yaw_deg`` and up by ``pitch_deg``.

    Args:
        yaw_deg: Turn to the right (about the panorama's down axis), degrees.
        pitch_deg: Tilt up (about the view's right axis), degrees.

    Returns:
        Rotation matrix ``(3, 3)`` float64; its third column is the view's optical axis in the
        panorama frame, ``(sin yaw cos pitch, -sin pitch, cos yaw cos pitch)``.
    """
    cy, sy = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    cp, sp = math.cos(math.radians(pitch_deg)), math.sin(math.radians(pitch_deg))
    yaw = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    return yaw @ pitch


def _equirect_coords(directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised equirectangular coordinates of panorama-frame directions.

    Args:
        directions: Directions in the panorama frame, ``(..., 3)``, any length.

    Returns:
        ``(s, t)`` of shape ``(...)``: continuous column and row divided by the panorama's width and
        height, ``s`` in ``[0, 1]`` (wrapping), ``t`` in ``[0, 1]``.
    """
    dx, dy, dz = directions[..., 0], directions[..., 1], directions[..., 2]
    azimuth = np.arctan2(dx, dz)
    elevation = np.arctan2(-dy, np.hypot(dx, dz))
    return azimuth / (2.0 * np.pi) + 0.5, 0.5 - elevation / np.pi


def _pad_poles(panorama: np.ndarray) -> np.ndarray:
    """Add one row above and below: the pixels just across each pole (half a turn round).

    So bilinear sampling near row 0 or row ``H - 1`` blends with the true spherical neighbours
    instead of wrapping to the opposite edge.
    """
    half = panorama.shape[1] // 2
    top = np.roll(panorama[:1], half, axis=1)
    bottom = np.roll(panorama[-1:], half, axis=1)
    return np.concatenate([top, panorama, bottom], axis=0)


def _sample_bilinear(panorama: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``panorama`` ``(H, W[, C])`` at normalised coordinates ``(s, t)``.

    Wraps around horizontally (``cv2.BORDER_WRAP``); vertically reads across the poles.

    Returns:
        ``s.shape + panorama.shape[2:]``, of the panorama's dtype.
    """
    height, width = panorama.shape[:2]
    dtype = panorama.dtype
    work = panorama if dtype in _CV2_DTYPES else panorama.astype(np.float64)
    # cv2 puts pixel centres at integer coordinates: subtract half a pixel; +1 for the pole row.
    map_x = (s * width - 0.5).astype(np.float32)
    map_y = (t * height + 0.5).astype(np.float32)
    out = cv2.remap(
        _pad_poles(work), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP
    ).reshape(s.shape + panorama.shape[2:])  # cv2 drops a trailing channel axis of size 1
    if out.dtype == dtype:
        return out
    return (np.rint(out) if not np.issubdtype(dtype, np.floating) else out).astype(dtype)


def _sample_nearest(panorama: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Nearest-neighbour samples of ``panorama`` ``(H, W)``: the pixel containing ``(s, t)``."""
    height, width = panorama.shape
    cols = np.floor(s * width).astype(np.int64) % width
    rows = np.clip(np.floor(t * height).astype(np.int64), 0, height - 1)
    return panorama[rows, cols]


def _check_inputs(panorama: np.ndarray | None, depth: np.ndarray | None) -> None:
    """Raise on malformed panoramas or range maps.

    Raises:
        ShapeMismatchError: If the panorama is not ``(H, W)``/``(H, W, C)`` or depth not ``(H, W)``.
        InvalidDepthError: If the range map has negative or non-finite values.
    """
    if panorama is not None and (panorama.ndim not in (2, 3) or min(panorama.shape[:2]) < 2):
        raise ShapeMismatchError(
            "panorama must be an equirectangular image of shape (H, W) or (H, W, C) with "
            f"H, W >= 2, got shape {panorama.shape}; pass one panorama at a time."
        )
    if depth is None:
        return
    if depth.ndim != 2 or min(depth.shape) < 2:
        raise ShapeMismatchError(
            f"depth must be an equirectangular range map of shape (H, W), got shape {depth.shape};"
            " drop the channel axis of a one-channel depth image."
        )
    if not np.all(np.isfinite(depth) & (depth >= 0)):
        raise InvalidDepthError(
            "depth must be finite and >= 0 (metric range along each ray, 0 = none), got "
            f"values in [{np.nanmin(depth)}, {np.nanmax(depth)}] or NaN; replace missing depth "
            "with 0."
        )


def _cut_view(
    panorama: np.ndarray | None,
    depth: np.ndarray | None,
    camera: PinholeCamera,
    yaw_deg: float,
    pitch_deg: float,
) -> PinholeView:
    """One pinhole view at ``(yaw_deg, pitch_deg)``; see :func:`equirect_to_pinholes`."""
    rotation = view_rotation(yaw_deg, pitch_deg)
    rays = camera.pixel_rays()  # (h, w, 3), z = 1
    s, t = _equirect_coords(rays @ rotation.T)
    image = None if panorama is None else _sample_bilinear(panorama, s, t)
    z_depth = None
    if depth is not None:
        # range -> z-depth: multiply by cos(angle to the optical axis) = 1 / |ray| for z = 1 rays
        cos_axis = 1.0 / np.linalg.norm(rays, axis=-1)
        z_depth = (_sample_nearest(depth, s, t) * cos_axis).astype(np.float32)
    return PinholeView(
        image=image,
        depth=z_depth,
        camera=camera,
        rotation=quaternion.from_rotation_matrix(rotation),
        yaw_deg=yaw_deg,
    )


def equirect_to_pinholes(
    panorama: np.ndarray | None,
    depth: np.ndarray | None = None,
    *,
    num_views: int = 8,
    fov_deg: float = 90.0,
    size: tuple[int, int] = (512, 512),
    yaw_offset_deg: float = 0.0,
    pitch_deg: float = 0.0,
) -> list[PinholeView]:
    """Cut an equirectangular panorama (and its range map) into equi-angular pinhole views.

    Args:
        panorama: Equirectangular image ``(H, W, C)`` or ``(H, W)``, any dtype (see the module
            docstring for the panorama frame); ``None`` to cut only the depth.
        depth: Equirectangular metric *range* map ``(H', W')`` (distance along each ray, 0 =
            none), at any resolution; ``None`` for no depth.
        num_views: Number of views, evenly spaced in yaw.
        fov_deg: Horizontal field of view of each view, degrees in ``(0, 180)``.
        size: ``(w, h)`` of each view in pixels (square pixels).
        yaw_offset_deg: Yaw of view 0, degrees to the right of the panorama's centre column.
        pitch_deg: Upward tilt of every view, degrees.

    Returns:
        ``num_views`` :class:`PinholeView`, view ``k`` looking at yaw ``yaw_offset_deg + k * 360 /
        num_views``. Images are sampled bilinearly with horizontal wrap-around; depth is sampled
        nearest-neighbour (never blended across an edge) and converted from range to z-depth.

    Raises:
        ShapeMismatchError: If the panorama or depth has the wrong number of dimensions.
        InvalidDepthError: If the depth has negative or non-finite values.
        InvalidCameraError: If ``fov_deg`` or ``size`` cannot make a pinhole camera.
        ValueError: If ``num_views`` is not a positive integer.
    """
    panorama = None if panorama is None else np.asarray(panorama)
    depth = None if depth is None else np.asarray(depth)
    _check_inputs(panorama, depth)
    if isinstance(num_views, bool) or not isinstance(num_views, int | np.integer) or num_views < 1:
        raise ValueError(f"num_views must be a positive integer, got {num_views!r}; SWM uses 8.")
    camera = PinholeCamera.from_fov(size[0], size[1], fov_deg)
    yaws = [(yaw_offset_deg + k * 360.0 / int(num_views)) % 360.0 for k in range(num_views)]
    return [_cut_view(panorama, depth, camera, yaw, pitch_deg) for yaw in yaws]
