"""Tests of cityenv.geometry.geodesy against published and hand-computed WGS84 values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cityenv.errors import InvalidGeodeticError, ShapeMismatchError
from cityenv.geometry.geodesy import (
    LocalFrame,
    ecef_to_geodetic,
    geodetic_to_ecef,
    heading_to_yaw,
    yaw_to_heading,
)

# WGS84 defining constants (NIMA TR8350.2)
A = 6378137.0
F = 1.0 / 298.257223563
E2 = F * (2.0 - F)
SEOUL = (37.5663, 126.9779, 38.0)  # Seoul City Hall, ellipsoidal height 38 m
MM = 1e-3


def _ecef_by_hand(lat_deg: float, lon_deg: float, h: float) -> np.ndarray:
    """The closed-form WGS84 geodetic -> ECEF formula, written out independently of pyproj."""
    lat, lon = math.radians(lat_deg), math.radians(lon_deg)
    n = A / math.sqrt(1.0 - E2 * math.sin(lat) ** 2)  # prime vertical radius of curvature
    return np.array(
        [
            (n + h) * math.cos(lat) * math.cos(lon),
            (n + h) * math.cos(lat) * math.sin(lon),
            (n * (1.0 - E2) + h) * math.sin(lat),
        ]
    )


def _meridian_radius(lat_deg: float) -> float:
    """Meridian radius of curvature M: metres per radian of latitude."""
    s = math.sin(math.radians(lat_deg))
    return A * (1.0 - E2) / (1.0 - E2 * s * s) ** 1.5


@pytest.fixture(scope="module")
def seoul() -> LocalFrame:
    return LocalFrame(*SEOUL)


# --- geodetic <-> ECEF --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("lat", "lon", "h", "expected"),
    [
        (0.0, 0.0, 0.0, (6378137.0, 0.0, 0.0)),  # equator, prime meridian: semi-major axis
        (0.0, 90.0, 0.0, (0.0, 6378137.0, 0.0)),
        (0.0, 180.0, 100.0, (-6378237.0, 0.0, 0.0)),
        (90.0, 0.0, 0.0, (0.0, 0.0, 6356752.314245)),  # north pole: semi-minor axis b
        (-90.0, 0.0, 10.0, (0.0, 0.0, -6356762.314245)),
    ],
)
def test_geodetic_to_ecef_published_values(lat, lon, h, expected):
    np.testing.assert_allclose(geodetic_to_ecef(lat, lon, h), expected, rtol=0.0, atol=MM)


def test_geodetic_to_ecef_seoul_matches_the_wgs84_formula_to_the_millimetre():
    got = geodetic_to_ecef(*SEOUL)
    np.testing.assert_allclose(got, _ecef_by_hand(*SEOUL), rtol=0.0, atol=MM)
    # and the formula's value itself, so a broken helper above cannot hide a wrong answer
    np.testing.assert_allclose(got, [-3044799.1707, 4043829.2994, 3867422.5498], atol=MM)


def test_geodetic_to_ecef_is_vectorised_and_broadcasts():
    lat = np.array([[0.0, 90.0], [45.0, -30.0]])
    xyz = geodetic_to_ecef(lat, 10.0, 0.0)
    assert xyz.shape == (2, 2, 3)
    np.testing.assert_allclose(xyz[1, 0], _ecef_by_hand(45.0, 10.0, 0.0), atol=MM)


def test_ecef_to_geodetic_inverts_geodetic_to_ecef():
    lat = np.array([SEOUL[0], -33.8688, 0.0, 89.9])
    lon = np.array([SEOUL[1], 151.2093, -179.5, 10.0])
    h = np.array([SEOUL[2], -20.0, 5000.0, 0.0])
    lat2, lon2, h2 = ecef_to_geodetic(geodetic_to_ecef(lat, lon, h))
    np.testing.assert_allclose(lat2, lat, rtol=0.0, atol=1e-9)
    np.testing.assert_allclose(lon2, lon, rtol=0.0, atol=1e-9)
    np.testing.assert_allclose(h2, h, rtol=0.0, atol=1e-6)


# --- the local ENU frame ------------------------------------------------------------------------
def test_anchor_is_the_enu_origin(seoul):
    np.testing.assert_allclose(seoul.geodetic_to_enu(*SEOUL), np.zeros(3), atol=1e-6)
    np.testing.assert_allclose(seoul.origin_ecef, _ecef_by_hand(*SEOUL), atol=MM)


def test_a_point_100_m_north_lands_on_the_y_axis(seoul):
    # the anchor sits 38 m above the ellipsoid, so 100 m of arc there spans a radius of M + h
    dlat = math.degrees(100.0 / (_meridian_radius(SEOUL[0]) + SEOUL[2]))
    enu = seoul.geodetic_to_enu(SEOUL[0] + dlat, SEOUL[1], SEOUL[2])
    # the tangent plane sits above the curved surface: the point drops ~100^2 / (2R) = 0.8 mm
    np.testing.assert_allclose(enu, [0.0, 100.0, -0.00079], atol=1e-4)


def test_east_and_up_axes(seoul):
    up = seoul.geodetic_to_enu(SEOUL[0], SEOUL[1], SEOUL[2] + 10.0)
    np.testing.assert_allclose(up, [0.0, 0.0, 10.0], atol=1e-6)
    east = seoul.geodetic_to_enu(SEOUL[0], SEOUL[1] + 0.001, SEOUL[2])
    assert east[0] > 80.0 and abs(east[1]) < 0.01 and abs(east[2]) < 0.01


def test_enu_axes_are_orthonormal_with_up_along_the_ellipsoid_normal(seoul):
    rotation = seoul.enu_to_ecef_rotation
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-15)
    assert np.linalg.det(rotation) == pytest.approx(1.0)
    lat, lon = math.radians(SEOUL[0]), math.radians(SEOUL[1])
    normal = [math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)]
    np.testing.assert_allclose(rotation[:, 2], normal, atol=1e-15)


def test_geodetic_enu_geodetic_round_trip(seoul):
    rng = np.random.default_rng(0)
    lat = SEOUL[0] + rng.uniform(-0.05, 0.05, size=(4, 5))
    lon = SEOUL[1] + rng.uniform(-0.05, 0.05, size=(4, 5))
    h = rng.uniform(-10.0, 300.0, size=(4, 5))
    enu = seoul.geodetic_to_enu(lat, lon, h)
    assert enu.shape == (4, 5, 3)
    lat2, lon2, h2 = seoul.enu_to_geodetic(enu)
    np.testing.assert_allclose(lat2, lat, rtol=0.0, atol=1e-9)
    np.testing.assert_allclose(lon2, lon, rtol=0.0, atol=1e-9)
    np.testing.assert_allclose(h2, h, rtol=0.0, atol=1e-6)


def test_enu_ecef_round_trip(seoul):
    enu = np.random.default_rng(1).uniform(-2000.0, 2000.0, size=(10, 3))
    np.testing.assert_allclose(seoul.ecef_to_enu(seoul.enu_to_ecef(enu)), enu, atol=1e-8)


def test_enu_to_geodetic_of_one_point_gives_scalars(seoul):
    lat, lon, h = seoul.enu_to_geodetic([0.0, 0.0, 0.0])
    assert np.ndim(lat) == 0
    assert (float(lat), float(lon), float(h)) == pytest.approx(SEOUL, abs=1e-6)


# --- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("lat", [90.5, -91.0])
def test_latitude_out_of_range_raises(lat):
    with pytest.raises(
        InvalidGeodeticError, match=rf"lat must be in \[-90, 90\] degrees, got {lat}"
    ):
        LocalFrame(lat, 0.0)


def test_swapped_lat_lon_gets_a_hint():
    with pytest.raises(
        InvalidGeodeticError, match=r"got 126\.9779; latitude and longitude may be swapped"
    ):
        geodetic_to_ecef([SEOUL[1]], [SEOUL[0]])


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((math.nan, 0.0, 0.0), "lat"),
        ((0.0, math.inf, 0.0), "lon"),
        ((0.0, 0.0, math.nan), "height"),
    ],
)
def test_non_finite_geodetic_raises(args, name):
    with pytest.raises(InvalidGeodeticError, match=rf"{name} must be finite"):
        LocalFrame(*args)
    with pytest.raises(InvalidGeodeticError, match=rf"{name} must be finite"):
        geodetic_to_ecef(*args)


def test_bad_enu_and_ecef_input_raises(seoul):
    with pytest.raises(
        ShapeMismatchError, match=r"enu must have shape \(\.\.\., 3\), got \(5, 2\)"
    ):
        seoul.enu_to_geodetic(np.zeros((5, 2)))
    with pytest.raises(InvalidGeodeticError, match=r"ECEF coordinates must be finite"):
        ecef_to_geodetic([np.nan, 0.0, 0.0])


# --- heading <-> yaw ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("heading", "yaw"),
    [
        (0.0, math.pi / 2),
        (90.0, 0.0),
        (180.0, -math.pi / 2),
        (270.0, -math.pi),
        (45.0, math.pi / 4),
    ],
)
def test_heading_to_yaw_table(heading, yaw):
    assert heading_to_yaw(heading) == pytest.approx(yaw)
    assert yaw_to_heading(yaw) == pytest.approx(heading)


def test_heading_yaw_are_vectorised_and_heading_stays_in_0_360():
    headings = np.array([0.0, 10.0, 359.5, 180.0])
    np.testing.assert_allclose(yaw_to_heading(heading_to_yaw(headings)), headings, atol=1e-12)
    wrapped = yaw_to_heading(np.array([-1e-20, 5 * math.pi / 2, -3 * math.pi / 2, 2 * math.pi]))
    np.testing.assert_allclose(wrapped, [90.0, 0.0, 0.0, 90.0], atol=1e-12)
    assert np.all((wrapped >= 0.0) & (wrapped < 360.0))
    assert yaw_to_heading(math.pi / 2 + 1e-18) == 0.0  # a hair counter-clockwise of north
