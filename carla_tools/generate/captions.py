"""Text prompts of clips, written from their render settings."""

from __future__ import annotations

import numpy as np

_SUBJECT = {
    "vehicle": "a car drives along a city street",
    "pedestrian": "a pedestrian walks along the sidewalk of a city street",
    "free": "a camera flies above a city street",
}
_WEATHER = {
    "clear": "under a clear sky",
    "overcast": "under an overcast sky",
    "wet": "on wet roads after rain",
    "fog": "in thick fog",
}
_COMPASS = ("north", "northeast", "east", "southeast", "south", "southwest", "west", "northwest")


def time_of_day(sun_elevation_deg: float, local_hour: float) -> str:
    """A phrase for the light: ``"at night"``, ``"at dawn"``, ``"in the morning"``, ...

    Args:
        sun_elevation_deg: Sun elevation above the horizon, degrees.
        local_hour: Local solar hour ``[0, 24)`` (tells dawn from dusk).
    """
    if sun_elevation_deg < -6:
        return "at night"
    if sun_elevation_deg < 8:
        return "at dawn" if local_hour < 12 else "at dusk"
    if local_hour < 11:
        return "in the morning"
    if local_hour < 15:
        return "at midday"
    return "in the afternoon"


def compass(heading_deg: float) -> str:
    """The nearest of 8 compass points of a heading (degrees clockwise from north)."""
    return _COMPASS[int(np.round((heading_deg % 360.0) / 45.0)) % 8]


def turn_phrase(headings_deg: np.ndarray) -> str:
    """``""``, ``", turning left"`` or ``", turning right"`` from per-frame headings ``(F,)``."""
    dh = (np.diff(headings_deg) + 180.0) % 360.0 - 180.0
    total = float(dh.sum())
    if total > 45:
        return ", turning right"
    if total < -45:
        return ", turning left"
    return ""


def caption(
    kind: str,
    weather: str,
    sun_elevation_deg: float,
    local_hour: float,
    headings_deg: np.ndarray,
) -> str:
    """The caption of a clip.

    Args:
        kind: Trajectory kind (``vehicle``, ``pedestrian``, ``free``).
        weather: Weather name.
        sun_elevation_deg: Sun elevation at the clip's start, degrees.
        local_hour: Local solar hour at the start.
        headings_deg: Per-frame compass headings of the camera, ``(F,)``.

    Returns:
        E.g. ``"a car drives along a city street at dusk in thick fog, heading north, turning
        left"``.
    """
    subject = _SUBJECT.get(kind, f"a {kind} camera moves through a city street")
    light = time_of_day(sun_elevation_deg, local_hour)
    heading = compass(float(headings_deg[0]))
    return f"{subject} {light} {_WEATHER.get(weather, 'in ' + weather)}, heading {heading}" + (
        turn_phrase(np.asarray(headings_deg))
    )
