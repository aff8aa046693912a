"""Pinhole camera intrinsics.

Frames and conventions: the camera frame is OpenCV's (x right, y down, z forward, metres).
Integer pixel ``(u, v)`` (column, row) has its centre at continuous image coordinates
``(u + 0.5, v + 0.5)``, so a centred camera has ``cx = W / 2`` and ``cy = H / 2``. Projection
is ``u = fx * x / z + cx``, ``v = fy * y / z + cy``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from cityenv.errors import InvalidCameraError, ShapeMismatchError

__all__ = ["PinholeCamera"]


def _check_size(name: str, value: object) -> int:
    """Return ``value`` as a positive ``int`` or raise :class:`InvalidCameraError`."""
    integral = isinstance(value, (int, np.integer)) or (
        isinstance(value, (float, np.floating)) and float(value).is_integer()
    )
    if isinstance(value, (bool, np.bool_)) or not integral or value <= 0:  # type: ignore[operator]
        raise InvalidCameraError(
            f"PinholeCamera.{name} must be a positive integer number of pixels, got {value!r}; "
            f"pass the image {name} in pixels."
        )
    return int(value)


def _check_focal(name: str, value: object) -> float:
    """Return ``value`` as a positive finite ``float`` or raise :class:`InvalidCameraError`."""
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number) or number <= 0.0:
        raise InvalidCameraError(
            f"PinholeCamera.{name} must be a positive finite focal length in pixels, got "
            f"{value!r}; pass fx/fy in pixels or build the camera with PinholeCamera.from_fov."
        )
    return number


def _check_principal(name: str, value: object) -> float:
    """Return ``value`` as a finite ``float`` or raise :class:`InvalidCameraError`."""
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise InvalidCameraError(
            f"PinholeCamera.{name} must be a finite principal-point coordinate in pixels, got "
            f"{value!r}; use {'W' if name == 'cx' else 'H'}/2 for a centred camera."
        )
    return number


def _focal_from_fov(size: int, fov_deg: float, name: str) -> float:
    """Focal length in pixels that spans ``size`` pixels with a field of view of ``fov_deg``."""
    fov = float(fov_deg)
    if not math.isfinite(fov) or not 0.0 < fov < 180.0:
        raise InvalidCameraError(
            f"{name} must be a field of view in degrees strictly between 0 and 180, got "
            f"{fov_deg!r}; a pinhole camera cannot see 180 degrees or more (use a panorama)."
        )
    return size / (2.0 * math.tan(math.radians(fov) / 2.0))


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics of an undistorted pinhole camera.

    Attributes:
        width: Image width ``W`` in pixels.
        height: Image height ``H`` in pixels.
        fx: Horizontal focal length in pixels.
        fy: Vertical focal length in pixels.
        cx: Principal point column in continuous pixel coordinates (``W / 2`` when centred).
        cy: Principal point row in continuous pixel coordinates (``H / 2`` when centred).

    Raises:
        InvalidCameraError: If a size is not a positive integer, a focal length is not positive and
            finite, or a principal-point coordinate is not finite.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "width", _check_size("width", self.width))
        object.__setattr__(self, "height", _check_size("height", self.height))
        object.__setattr__(self, "fx", _check_focal("fx", self.fx))
        object.__setattr__(self, "fy", _check_focal("fy", self.fy))
        object.__setattr__(self, "cx", _check_principal("cx", self.cx))
        object.__setattr__(self, "cy", _check_principal("cy", self.cy))

    @classmethod
    def from_fov(
        cls, width: int, height: int, fov_x_deg: float, fov_y_deg: float | None = None
    ) -> PinholeCamera:
        """Build a centred camera from its field of view.

        Args:
            width: Image width ``W`` in pixels.
            height: Image height ``H`` in pixels.
            fov_x_deg: Horizontal field of view in degrees, in ``(0, 180)``.
            fov_y_deg: Vertical field of view in degrees, in ``(0, 180)``; ``None`` gives square
                pixels (``fy = fx``).

        Returns:
            A camera with the principal point at the image centre ``(W / 2, H / 2)``.

        Raises:
            InvalidCameraError: If a field of view is outside ``(0, 180)`` or a size is invalid.
        """
        width = _check_size("width", width)
        height = _check_size("height", height)
        fx = _focal_from_fov(width, fov_x_deg, "fov_x_deg")
        fy = fx if fov_y_deg is None else _focal_from_fov(height, fov_y_deg, "fov_y_deg")
        return cls(width, height, fx, fy, width / 2.0, height / 2.0)

    @property
    def K(self) -> np.ndarray:
        """The intrinsic matrix, shape ``(3, 3)`` float64, mapping camera-frame points to pixels."""
        return np.array(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=np.float64
        )

    @property
    def fov_x_deg(self) -> float:
        """Horizontal field of view in degrees (``2 * atan(W / (2 fx))``)."""
        return math.degrees(2.0 * math.atan(self.width / (2.0 * self.fx)))

    @property
    def fov_y_deg(self) -> float:
        """Vertical field of view in degrees (``2 * atan(H / (2 fy))``)."""
        return math.degrees(2.0 * math.atan(self.height / (2.0 * self.fy)))

    @property
    def shape(self) -> tuple[int, int]:
        """The image shape ``(H, W)`` this camera expects."""
        return (self.height, self.width)

    def rescaled(self, width: int, height: int) -> PinholeCamera:
        """The same camera for an image resized to ``(height, width)``.

        ``fx`` and ``cx`` scale by ``width / W``; ``fy`` and ``cy`` by ``height / H``, so the field
        of view is preserved and the principal point keeps its relative position.

        Args:
            width: New image width in pixels.
            height: New image height in pixels.

        Returns:
            The rescaled camera.
        """
        sx = _check_size("width", width) / self.width
        sy = _check_size("height", height) / self.height
        return PinholeCamera(width, height, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy)

    def check_image(self, image: ArrayLike, name: str = "image") -> None:
        """Raise unless ``image`` has this camera's ``(H, W)`` as its first two dimensions.

        Args:
            image: Array of shape ``(H, W)`` or ``(H, W, C)`` (anything with a ``shape``).
            name: What to call the array in the error message.

        Raises:
            ShapeMismatchError: If ``image.shape[:2] != (H, W)``.
        """
        shape = tuple(np.shape(image))
        if shape[:2] != self.shape:
            raise ShapeMismatchError(
                f"{name} must have shape (H, W, ...) = ({self.height}, {self.width}, ...) to match "
                f"the camera, got shape {shape}; resize the {name} or use "
                f"camera.rescaled(width={shape[1] if len(shape) > 1 else '?'}, "
                f"height={shape[0] if shape else '?'})."
            )

    def pixel_rays(self) -> np.ndarray:
        """Camera-frame ray directions through every pixel centre.

        Returns:
            Array of shape ``(H, W, 3)`` float64 with ``z = 1`` (not unit length): entry ``[v, u]``
            is ``((u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy, 1)``.
        """
        x = (np.arange(self.width, dtype=np.float64) + 0.5 - self.cx) / self.fx
        y = (np.arange(self.height, dtype=np.float64) + 0.5 - self.cy) / self.fy
        rays = np.ones((self.height, self.width, 3), dtype=np.float64)
        rays[..., 0] = x[None, :]
        rays[..., 1] = y[:, None]
        return rays

    def unproject_pixels(self, cols: ArrayLike, rows: ArrayLike, depth: ArrayLike) -> np.ndarray:
        """Camera-frame points at integer pixels with their z-depth (inverse of :meth:`project`).

        Pixel ``(u, v)`` is taken at its centre ``(u + 0.5, v + 0.5)``; a point at z-depth ``z``
        is ``((u + 0.5 - cx) / fx * z, (v + 0.5 - cy) / fy * z, z)``. Depth 0 ("none") gives the
        camera centre: mask with ``depth > 0``. For a whole depth map (and world points), use
        :func:`cityenv.geometry.splat.unproject`.

        Args:
            cols: Pixel columns ``u``, any shape broadcasting with ``rows`` and ``depth``.
            rows: Pixel rows ``v``.
            depth: Metric z-depth at those pixels, metres.

        Returns:
            Points in the camera frame (OpenCV, metres), shape ``(..., 3)`` float64, ``...`` the
            broadcast shape of the three inputs.

        Raises:
            ShapeMismatchError: If the three inputs do not broadcast together.

        Example::

            v, u = np.mgrid[rows, cols]           # a window of the depth map
            z = depth[rows, cols]
            points = camera.unproject_pixels(u, v, z)[z > 0]  # (N, 3)
        """
        u, v, z = (np.asarray(a, dtype=np.float64) for a in (cols, rows, depth))
        try:
            u, v, z = np.broadcast_arrays(u, v, z)
        except ValueError as exc:
            raise ShapeMismatchError(
                f"cols, rows and depth must broadcast to one shape, got shapes {u.shape}, "
                f"{v.shape} and {z.shape}; pass one column, row and depth per pixel."
            ) from exc
        return np.stack(
            [(u + 0.5 - self.cx) / self.fx * z, (v + 0.5 - self.cy) / self.fy * z, z], axis=-1
        )

    def project(self, points_cam: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Project camera-frame points to continuous pixel coordinates.

        Points with ``z <= 0`` (on or behind the camera plane) get meaningless or non-finite ``uv``;
        mask them with ``z > 0``.

        Args:
            points_cam: Points in the camera frame (OpenCV, metres), shape ``(..., 3)``.

        Returns:
            ``(uv, z)``: ``uv`` of shape ``(..., 2)`` float64, continuous pixel coordinates (the
            centre of pixel ``(u, v)`` is ``(u + 0.5, v + 0.5)``), and ``z`` of shape ``(...,)``,
            the z-depth of each point.

        Raises:
            ShapeMismatchError: If the last dimension of ``points_cam`` is not 3.
        """
        points = np.asarray(points_cam, dtype=np.float64)
        if points.ndim == 0 or points.shape[-1] != 3:
            raise ShapeMismatchError(
                f"points_cam must have shape (..., 3), got {points.shape}; pass camera-frame xyz "
                "points along the last axis."
            )
        z = points[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = self.fx * points[..., 0] / z + self.cx
            v = self.fy * points[..., 1] / z + self.cy
        return np.stack([u, v], axis=-1), z.copy()
