"""WGS84 geodesy: geodetic, ECEF and a city's local ENU frame, through pyproj.

Frames: geodetic coordinates are WGS84 latitude and longitude in degrees and ellipsoidal height
in metres (EPSG:4979); ECEF is WGS84 Earth-centred Earth-fixed metres (EPSG:4978); a city's local
frame is ENU (x east, y north, z up, metres) tangent to the ellipsoid at an anchor point.
Geodetic <-> ECEF goes through pyproj only; ECEF <-> ENU is the rigid rotation and translation
defined by the anchor.

Angles: a compass heading is in degrees clockwise from north; an ENU yaw is in radians
counter-clockwise from east (+x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
import pyproj
from numpy.typing import ArrayLike

from cityenv.errors import InvalidGeodeticError, ShapeMismatchError

__all__ = [
    "LocalFrame",
    "ecef_to_geodetic",
    "geodetic_to_ecef",
    "heading_to_yaw",
    "yaw_to_heading",
]

_GEODETIC_3D = "EPSG:4979"  # WGS84 lat, lon (degrees), ellipsoidal height (metres)
_ECEF = "EPSG:4978"  # WGS84 geocentric x, y, z (metres)


@lru_cache(maxsize=2)
def _transformer(source: str, target: str) -> pyproj.Transformer:
    """A cached pyproj transformer; ``always_xy`` so geodetic axes are (lon, lat, height)."""
    return pyproj.Transformer.from_crs(source, target, always_xy=True)


def _scalar_or_array(a: np.ndarray) -> np.ndarray | np.float64:
    """Unwrap a 0-d array into a numpy scalar; leave other arrays alone."""
    return a[()] if a.ndim == 0 else a


def _check_geodetic(lat: np.ndarray, lon: np.ndarray, height: np.ndarray) -> None:
    """Raise :class:`InvalidGeodeticError` for non-finite values or latitudes off ``[-90, 90]``."""
    for name, values in (("lat", lat), ("lon", lon), ("height", height)):
        if not np.all(np.isfinite(values)):
            raise InvalidGeodeticError(
                f"{name} must be finite, got {values[~np.isfinite(values)].ravel()[0]}; "
                "check the source of the coordinates for NaN/inf."
            )
    bad = np.abs(lat) > 90.0
    if np.any(bad):
        raise InvalidGeodeticError(
            f"lat must be in [-90, 90] degrees, got {lat[bad].ravel()[0]}; latitude and "
            "longitude may be swapped (this API takes lat first)."
        )


def _as_xyz(points: ArrayLike, name: str) -> np.ndarray:
    """Return ``points`` as float64 ``(..., 3)`` or raise :class:`ShapeMismatchError`."""
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim == 0 or arr.shape[-1] != 3:
        raise ShapeMismatchError(
            f"{name} must have shape (..., 3), got {arr.shape}; put x, y, z on the last axis."
        )
    return arr


def geodetic_to_ecef(lat: ArrayLike, lon: ArrayLike, height: ArrayLike = 0.0) -> np.ndarray:
    """WGS84 geodetic coordinates to ECEF (through pyproj, EPSG:4979 -> EPSG:4978).

    Args:
        lat: Latitude in degrees, ``[-90, 90]``; any shape broadcastable with the others.
        lon: Longitude in degrees.
        height: Ellipsoidal height in metres.

    Returns:
        ECEF points, shape ``(..., 3)`` float64 metres (``...`` is the broadcast shape).

    Raises:
        InvalidGeodeticError: If a value is not finite or a latitude is outside ``[-90, 90]``.
    """
    lat, lon, height = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (lat, lon, height))
    )
    _check_geodetic(lat, lon, height)
    x, y, z = _transformer(_GEODETIC_3D, _ECEF).transform(lon, lat, height)
    return np.stack([np.asarray(x), np.asarray(y), np.asarray(z)], axis=-1)


def ecef_to_geodetic(xyz: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ECEF points to WGS84 geodetic coordinates (through pyproj, EPSG:4978 -> EPSG:4979).

    Args:
        xyz: ECEF points, shape ``(..., 3)`` metres.

    Returns:
        ``(lat, lon, height)``: latitude and longitude in degrees (longitude in ``[-180, 180]``)
        and ellipsoidal height in metres, each of shape ``(...)`` (numpy scalars for one point).

    Raises:
        ShapeMismatchError: If the last dimension is not 3.
        InvalidGeodeticError: If a coordinate is not finite.
    """
    xyz = _as_xyz(xyz, "xyz")
    if not np.all(np.isfinite(xyz)):
        raise InvalidGeodeticError(
            "ECEF coordinates must be finite, got NaN/inf; check the source of the points."
        )
    lon, lat, height = _transformer(_ECEF, _GEODETIC_3D).transform(
        xyz[..., 0], xyz[..., 1], xyz[..., 2]
    )
    return tuple(_scalar_or_array(np.asarray(v, dtype=np.float64)) for v in (lat, lon, height))


@dataclass(frozen=True)
class LocalFrame:
    """A city's local ENU frame anchored at a WGS84 point.

    The frame's origin is the anchor; x points east, y north and z up (along the ellipsoid
    normal) at the anchor. Conversions are vectorised over any leading shape.

    Attributes:
        lat: Anchor latitude in degrees, ``[-90, 90]``.
        lon: Anchor longitude in degrees.
        height: Anchor ellipsoidal height in metres.

    Raises:
        InvalidGeodeticError: If the anchor is not finite or its latitude is outside ``[-90, 90]``.
    """

    lat: float
    lon: float
    height: float = 0.0

    def __post_init__(self) -> None:
        values = [np.asarray(float(v)) for v in (self.lat, self.lon, self.height)]
        _check_geodetic(*values)
        for name, value in zip(("lat", "lon", "height"), values, strict=True):
            object.__setattr__(self, name, float(value))

    @cached_property
    def origin_ecef(self) -> np.ndarray:
        """ECEF position of the anchor, shape ``(3,)`` metres."""
        return geodetic_to_ecef(self.lat, self.lon, self.height)

    @cached_property
    def enu_to_ecef_rotation(self) -> np.ndarray:
        """Rotation ``(3, 3)`` whose columns are the east, north and up axes in ECEF."""
        lat, lon = math.radians(self.lat), math.radians(self.lon)
        sin_lat, cos_lat, sin_lon, cos_lon = (
            math.sin(lat),
            math.cos(lat),
            math.sin(lon),
            math.cos(lon),
        )
        east = [-sin_lon, cos_lon, 0.0]
        north = [-sin_lat * cos_lon, -sin_lat * sin_lon, cos_lat]
        up = [cos_lat * cos_lon, cos_lat * sin_lon, sin_lat]
        return np.array([east, north, up]).T

    def enu_to_ecef(self, enu: ArrayLike) -> np.ndarray:
        """Local ENU points ``(..., 3)`` metres to ECEF points ``(..., 3)`` metres."""
        return _as_xyz(enu, "enu") @ self.enu_to_ecef_rotation.T + self.origin_ecef

    def ecef_to_enu(self, ecef: ArrayLike) -> np.ndarray:
        """ECEF points ``(..., 3)`` metres to local ENU points ``(..., 3)`` metres."""
        return (_as_xyz(ecef, "ecef") - self.origin_ecef) @ self.enu_to_ecef_rotation

    def geodetic_to_enu(
        self, lat: ArrayLike, lon: ArrayLike, height: ArrayLike = 0.0
    ) -> np.ndarray:
        """WGS84 geodetic coordinates to local ENU.

        Args:
            lat: Latitude in degrees, ``[-90, 90]``; any shape broadcastable with the others.
            lon: Longitude in degrees.
            height: Ellipsoidal height in metres.

        Returns:
            ENU points, shape ``(..., 3)`` float64 metres.

        Raises:
            InvalidGeodeticError: If a value is not finite or a latitude is out of range.
        """
        return self.ecef_to_enu(geodetic_to_ecef(lat, lon, height))

    def enu_to_geodetic(self, enu: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Local ENU points ``(..., 3)`` metres to ``(lat, lon, height)``, each of shape ``(...)``.

        Latitude and longitude are in degrees, height in metres above the ellipsoid.
        """
        return ecef_to_geodetic(self.enu_to_ecef(enu))


def heading_to_yaw(heading_deg: ArrayLike) -> np.ndarray | np.float64:
    """Compass heading to ENU yaw.

    Args:
        heading_deg: Degrees clockwise from north, any shape.

    Returns:
        Yaw in radians counter-clockwise from east (+x), wrapped to ``[-pi, pi)``, same shape
        (a numpy scalar for a scalar input). Heading 0 (north) -> pi/2; heading 90 (east) -> 0.
    """
    yaw = np.radians(90.0 - np.asarray(heading_deg, dtype=np.float64))
    return _scalar_or_array((yaw + np.pi) % (2.0 * np.pi) - np.pi)


def yaw_to_heading(yaw_rad: ArrayLike) -> np.ndarray | np.float64:
    """ENU yaw to compass heading.

    Args:
        yaw_rad: Radians counter-clockwise from east (+x), any shape.

    Returns:
        Heading in degrees clockwise from north, in ``[0, 360)``, same shape (a numpy scalar for a
        scalar input).
    """
    heading = (90.0 - np.degrees(np.asarray(yaw_rad, dtype=np.float64))) % 360.0
    # A tiny negative angle wraps to exactly 360.0 in floating point; keep the range half-open.
    return _scalar_or_array(np.where(heading >= 360.0, 0.0, heading))
