"""The lighting a sun position and a weather preset give the town's renderer.

Where the sun is (from the UTC time and the town's geodetic anchor) and which weathers exist is
backend-neutral and lives in :mod:`carla_tools.conditions`; this module turns them into shader
colours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carla_tools.conditions import check_weather, sun_direction


@dataclass(frozen=True)
class Lighting:
    """Everything the shaders need to light a frame; colours are linear RGB (may exceed 1).

    Attributes:
        sun_dir: Unit ENU vector towards the sun (or moon), shape ``(3,)``.
        sun_color: Direct light colour and strength, ``(3,)``.
        sky_ambient: Ambient light from above, ``(3,)``.
        ground_ambient: Ambient light from below, ``(3,)``.
        zenith: Sky colour straight up, ``(3,)``.
        horizon: Sky colour at the horizon, ``(3,)``.
        sun_disc: Strength of the visible sun disc and glow (0 hides it).
        fog_color: Colour distant surfaces fade to, ``(3,)``.
        fog_density: Extinction per metre (exponential-squared fog).
        wetness: 0 dry .. 1 soaked (dark, reflective horizontal surfaces).
        night: 0 day .. 1 night (lit windows, lamps and signs glow).
    """

    sun_dir: np.ndarray
    sun_color: np.ndarray
    sky_ambient: np.ndarray
    ground_ambient: np.ndarray
    zenith: np.ndarray
    horizon: np.ndarray
    sun_disc: float
    fog_color: np.ndarray
    fog_density: float
    wetness: float
    night: float


def _mix(a, b, t: float) -> np.ndarray:
    return np.asarray(a, dtype=np.float64) * (1 - t) + np.asarray(b, dtype=np.float64) * t


def lighting(elevation_deg: float, azimuth_deg: float, weather: str) -> Lighting:
    """Lighting for a sun position and a weather preset.

    Args:
        elevation_deg: Sun elevation, degrees (negative at night).
        azimuth_deg: Sun azimuth, degrees clockwise from north.
        weather: One of :data:`carla_tools.conditions.WEATHERS`.

    Returns:
        The lighting state.

    Raises:
        UnknownNameError: (a ValueError) If ``weather`` is unknown (the message names the
            choices).
    """
    weather = check_weather(weather)
    e = elevation_deg
    day = float(np.clip((e + 6.0) / 12.0, 0.0, 1.0))  # civil twilight ramps -6..+6 degrees
    low = float(np.clip(1.0 - e / 25.0, 0.0, 1.0))  # reddening near the horizon
    sun_strength = float(np.clip(e / 8.0, 0.0, 1.0))
    sun_color = _mix([1.05, 1.0, 0.92], [1.1, 0.62, 0.32], low) * sun_strength * 0.75
    zenith = _mix([0.03, 0.045, 0.10], [0.22, 0.42, 0.78], day)
    horizon = _mix([0.10, 0.10, 0.14], _mix([0.70, 0.80, 0.92], [0.95, 0.62, 0.42], low * day), day)
    sky_amb = _mix([0.16, 0.17, 0.22], [0.55, 0.58, 0.66], day)
    ground_amb = _mix([0.08, 0.07, 0.06], [0.22, 0.20, 0.17], day)
    fog_color, fog_density, disc, wet = horizon * 0.9, 0.0009, 1.0, 0.0
    if weather in ("overcast", "wet", "fog"):
        grey = _mix([0.08, 0.08, 0.09], [0.62, 0.64, 0.66], day)
        zenith, horizon = grey * 0.85, grey
        sky_amb = _mix([0.14, 0.14, 0.16], [0.62, 0.63, 0.66], day)
        ground_amb = ground_amb * 1.1
        sun_color = sun_color * 0.12
        fog_color, fog_density, disc = grey, 0.0025, 0.0
    if weather == "wet":
        wet = 1.0
        fog_density = 0.004
    if weather == "fog":
        fog_color = _mix([0.06, 0.06, 0.07], [0.70, 0.71, 0.72], day)
        zenith = horizon = fog_color
        fog_density = 0.022
    sun_dir = sun_direction(max(e, -90.0), azimuth_deg)
    if e < 0:  # moonlight: a faint cool light from high up so night scenes keep their shapes
        sun_dir = sun_direction(40.0, (azimuth_deg + 180) % 360)
        sun_color = np.array([0.10, 0.11, 0.15]) * (1 - day)
    return Lighting(
        sun_dir=sun_dir, sun_color=sun_color, sky_ambient=sky_amb, ground_ambient=ground_amb,
        zenith=zenith, horizon=horizon, sun_disc=disc * sun_strength, fog_color=fog_color,
        fog_density=fog_density, wetness=wet, night=1.0 - day,
    )  # fmt: skip
