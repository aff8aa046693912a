"""World conditions every simulator backend shares: UTC time, the sun, weather names, traffic.

Backend-neutral and dependency-free within ``carla_tools`` (it imports only numpy and
:mod:`cityenv.errors`), so the procedural town (:mod:`carla_tools.town`), the CARLA backend
(:mod:`carla_tools.carla_backend`) and the generator all light, time and populate a world the
same way without importing one another:

- time: :func:`to_utc`, :func:`local_solar_hour`, :func:`local_noon_utc`;
- the sun: :func:`solar_position` (NOAA low-precision formulas, error well under a degree) and
  :func:`sun_direction`, so a world anchored in Seoul gets Seoul's sun;
- weather: :data:`WEATHERS` and :func:`check_weather`;
- traffic: :func:`traffic_density` and :func:`pedestrian_density` by local hour of day.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import numpy as np

from cityenv.errors import check_name

__all__ = [
    "WEATHERS",
    "check_weather",
    "local_noon_utc",
    "local_solar_hour",
    "pedestrian_density",
    "solar_position",
    "sun_direction",
    "to_utc",
    "traffic_density",
]

WEATHERS = ("clear", "overcast", "wet", "fog")
"""Weather names every backend understands."""


# --- time -------------------------------------------------------------------------------------
def to_utc(when: datetime) -> datetime:
    """An aware UTC datetime; naive datetimes are taken to be UTC already."""
    if when.tzinfo is None:
        return when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc)


def local_solar_hour(when: datetime, lon: float) -> float:
    """Mean solar hour of day ``[0, 24)`` at a longitude (UTC hour + lon / 15).

    Args:
        when: The time (naive = UTC).
        lon: Longitude in degrees (east positive).
    """
    t = to_utc(when)
    return (t.hour + t.minute / 60 + t.second / 3600 + lon / 15.0) % 24.0


def local_noon_utc(lon: float, day: date = date(2024, 5, 1)) -> datetime:
    """The UTC time of mean solar noon on ``day`` at a longitude (degrees, east positive)."""
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    return start + timedelta(hours=(12.0 - lon / 15.0) % 24.0)


# --- the sun ----------------------------------------------------------------------------------
def solar_position(when: datetime, lat: float, lon: float) -> tuple[float, float]:
    """Sun elevation and compass azimuth seen from a place at a time.

    Args:
        when: The time (naive = UTC).
        lat: Latitude in degrees.
        lon: Longitude in degrees (east positive).

    Returns:
        ``(elevation_deg, azimuth_deg)``: elevation above the horizon (negative at night) and
        azimuth clockwise from north.
    """
    t = to_utc(when)
    day = t.timetuple().tm_yday
    hour = t.hour + t.minute / 60 + t.second / 3600 + t.microsecond / 3.6e9
    g = 2 * np.pi / 365.0 * (day - 1 + (hour - 12) / 24)  # fractional year, radians
    eqtime = 229.18 * (
        0.000075 + 0.001868 * np.cos(g) - 0.032077 * np.sin(g)
        - 0.014615 * np.cos(2 * g) - 0.040849 * np.sin(2 * g)
    )  # fmt: skip
    decl = (
        0.006918 - 0.399912 * np.cos(g) + 0.070257 * np.sin(g) - 0.006758 * np.cos(2 * g)
        + 0.000907 * np.sin(2 * g) - 0.002697 * np.cos(3 * g) + 0.00148 * np.sin(3 * g)
    )  # fmt: skip
    true_solar_min = hour * 60 + eqtime + 4 * lon
    ha = np.radians(true_solar_min / 4 - 180)
    phi = np.radians(lat)
    cos_zen = np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.cos(ha)
    zen = np.arccos(np.clip(cos_zen, -1, 1))
    # azimuth clockwise from north
    az = (
        np.degrees(np.arctan2(np.sin(ha), np.cos(ha) * np.sin(phi) - np.tan(decl) * np.cos(phi)))
        + 180.0
    )
    return float(90 - np.degrees(zen)), float(az % 360)


def sun_direction(elevation_deg: float, azimuth_deg: float) -> np.ndarray:
    """Unit ENU vector towards the sun, shape ``(3,)``."""
    e, a = np.radians(elevation_deg), np.radians(azimuth_deg)
    return np.array([np.cos(e) * np.sin(a), np.cos(e) * np.cos(a), np.sin(e)])


# --- weather ----------------------------------------------------------------------------------
def check_weather(name: object) -> str:
    """``name`` if it is one of :data:`WEATHERS`.

    Raises:
        UnknownNameError: (a ValueError) If it is not; the message lists the weathers and says
            "Did you mean ...?" when one is close.
    """
    return check_name("weather", name, WEATHERS)


# --- traffic ----------------------------------------------------------------------------------
def traffic_density(local_hour: float) -> float:
    """Fraction of vehicle slots in use at a local hour of day: quiet nights, two rush hours."""
    h = local_hour % 24.0
    bump = lambda c, w: np.exp(-0.5 * ((h - c) / w) ** 2)  # noqa: E731
    return float(np.clip(0.08 + 0.30 * bump(13.0, 4.5) + 0.35 * (bump(8.5, 1.3) + bump(18.5, 1.6)),
                         0.0, 0.8))  # fmt: skip


def pedestrian_density(local_hour: float) -> float:
    """Fraction of pedestrian slots in use at a local hour of day."""
    h = local_hour % 24.0
    return float(np.clip(0.03 + 0.35 * np.exp(-0.5 * ((h - 14.5) / 4.5) ** 2), 0.0, 0.6))
