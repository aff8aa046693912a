"""Heights, headings and traversals of geotagged photos.

- Heights: EXIF and Mapillary altitudes are above mean sea level (orthometric); a CityDB stores
  WGS84 ellipsoidal heights. :class:`GeoidModel` converts through pyproj with a geoid grid when one
  is installed (EGM2008, else EGM96) and otherwise says what it assumed.
- Headings: :func:`motion_headings` fits the direction of travel through a window of GPS fixes
  (least squares over time, so jitter averages out), marks stationary windows as unknown and fills
  them from the nearest moving photo. :func:`choose_headings` decides per traversal whether the
  compass is trustworthy.
- Traversals: :func:`group_traversals` groups photos by sequence id, else by camera and time gaps,
  so the cross-temporal filter sees one traversal per capture pass.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from pyproj.transformer import Transformer, TransformerGroup

__all__ = [
    "GeoidModel",
    "HeadingChoice",
    "angle_difference",
    "choose_headings",
    "group_traversals",
    "motion_headings",
]

_GEOIDS = (("EPSG:9518", "EGM2008"), ("EPSG:9707", "EGM96"))
"""WGS 84 + a gravity-related height (compound CRS), best first."""


@dataclass(frozen=True)
class GeoidModel:
    """Converts heights above mean sea level to WGS84 ellipsoidal heights.

    Args:
        undulation_m: A constant geoid undulation N (``h = H + N``) to use instead of a grid;
            ``None`` = look for a pyproj geoid grid and assume N = 0 where there is none.
            PROJ looks for the grid by name (``us_nga_egm08_25.tif`` or ``egm08_25.gtx``, then
            ``us_nga_egm96_15.tif`` or ``egm96_15.gtx``) in its search folders: the user data
            folder (``PROJ_USER_WRITABLE_DIRECTORY``) and folders added with
            :func:`pyproj.datadir.append_data_dir`.
    """

    undulation_m: float | None = None

    def to_ellipsoidal(
        self, lat: np.ndarray, lon: np.ndarray, altitude: np.ndarray
    ) -> tuple[np.ndarray, str]:
        """Ellipsoidal heights ``(N,)`` of altitudes above sea level ``(N,)``, and what was assumed.

        Returns:
            The heights and a sentence naming the geoid used (or the assumption made).
        """
        lat, lon, altitude = (np.asarray(a, dtype=np.float64) for a in (lat, lon, altitude))
        if self.undulation_m is not None:
            note = (
                "altitudes above sea level converted with a given geoid undulation of "
                f"{self.undulation_m} m"
            )
            return altitude + self.undulation_m, note
        for crs, name in _GEOIDS:
            with warnings.catch_warnings():  # a missing grid is reported in the note instead
                warnings.simplefilter("ignore", UserWarning)
                group = TransformerGroup(crs, "EPSG:4979", always_xy=True)
            if group.best_available and group.transformers:
                transformer = group.transformers[0]
                _, _, h = transformer.transform(lon, lat, altitude)
                h = np.asarray(h, dtype=np.float64)
                if np.all(np.isfinite(h)):
                    grids = ", ".join(_grid_files(transformer)) or "no grid file"
                    return h, (
                        f"altitudes above sea level converted with the {name} geoid (pyproj, "
                        f"grid {grids})"
                    )
        return altitude, (
            "no geoid grid is installed for pyproj (pyproj sync --file us_nga_egm08_25.tif, or "
            "pass a geoid undulation): altitudes above sea level were taken as WGS84 ellipsoidal "
            "heights (geoid undulation assumed 0 m; the real one is -107..+85 m)"
        )


def _grid_files(transformer: Transformer) -> list[str]:
    """Paths of the grid files PROJ opened for ``transformer`` (its name where no path is known).

    The path says which file was used when several search directories hold one (``PROJ_DATA``,
    :func:`pyproj.datadir.append_data_dir`, the user data folder ``pyproj sync`` fills).
    """
    operations = transformer.operations or ()
    return [g.full_name or g.short_name for op in operations for g in op.grids if g.available]


def angle_difference(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """Signed difference ``a - b`` of compass angles wrapped to ``[-180, 180)`` degrees."""
    return (np.asarray(a, dtype=np.float64) - b + 180.0) % 360.0 - 180.0


def motion_headings(
    enu: np.ndarray, seconds: np.ndarray, *, window: int = 3, min_baseline_m: float = 3.0
) -> np.ndarray:
    """Direction of travel at each photo of one traversal, robust to jitter and stops.

    For photo ``i`` the east and north coordinates of photos ``i - window .. i + window`` are
    fitted linearly over time; the velocity's direction is the heading. A window whose fitted
    displacement is shorter than ``min_baseline_m`` is stationary (its direction is jitter) and
    takes the heading of the nearest moving photo in time.

    Args:
        enu: Positions ``(N, 3)`` (or ``(N, 2)``) in metres, ordered by capture time.
        seconds: Capture times ``(N,)`` in seconds (equal times fall back to the photo order).
        window: Photos on each side of the fit.
        min_baseline_m: Shortest fitted displacement that counts as motion.

    Returns:
        Headings ``(N,)`` in degrees clockwise from north, ``NaN`` where the whole traversal is
        stationary (or has one photo).
    """
    xy = np.asarray(enu, dtype=np.float64)[:, :2]
    t = np.asarray(seconds, dtype=np.float64)
    n = len(xy)
    if n > 1 and np.ptp(t) <= 0:
        t = np.arange(n, dtype=np.float64)
    headings = np.full(n, np.nan)
    for i in range(n):
        lo, hi = max(0, i - window), min(n, i + window + 1)
        tt = t[lo:hi] - t[lo:hi].mean()
        if hi - lo < 2 or not np.any(tt):
            continue
        velocity = (tt[:, None] * (xy[lo:hi] - xy[lo:hi].mean(0))).sum(0) / (tt**2).sum()
        if np.linalg.norm(velocity) * np.ptp(t[lo:hi]) >= min_baseline_m:
            headings[i] = math.degrees(math.atan2(velocity[0], velocity[1])) % 360.0
    moving = np.flatnonzero(np.isfinite(headings))
    if len(moving) and len(moving) < n:
        still = np.flatnonzero(~np.isfinite(headings))
        nearest = moving[np.abs(t[still, None] - t[None, moving]).argmin(1)]
        headings[still] = headings[nearest]
    return headings


@dataclass(frozen=True)
class HeadingChoice:
    """The headings chosen for one traversal and why.

    Attributes:
        headings: Degrees clockwise from north ``(N,)``; ``NaN`` = unknown (the photo is skipped).
        source: ``"compass"``, ``"motion"`` or ``"mixed"``.
        note: Why (the compass's median disagreement with the motion, when measured).
    """

    headings: np.ndarray
    source: str
    note: str


def choose_headings(
    compass: np.ndarray,
    kinds: Sequence[str],
    motion: np.ndarray,
    *,
    max_disagreement_deg: float = 30.0,
) -> HeadingChoice:
    """Compass headings where they are trustworthy, else the direction of travel.

    Explicit (CSV) and computed (Mapillary SfM) angles are trusted. A device compass is trusted
    when it agrees with the motion (median disagreement at most ``max_disagreement_deg`` over the
    photos that have both): phone compasses are often off by tens of degrees near buildings and
    cars. Without motion (one photo, a stop) a device compass is used as the only information.

    Args:
        compass: Compass headings ``(N,)`` in degrees, ``NaN`` where absent.
        kinds: Per photo ``"explicit"``, ``"computed"``, ``"true"``, ``"magnetic"`` or ``""``.
        motion: Motion headings ``(N,)`` from :func:`motion_headings`.
        max_disagreement_deg: Largest median disagreement of a trusted device compass.
    """
    compass = np.asarray(compass, dtype=np.float64)
    motion = np.asarray(motion, dtype=np.float64)
    trusted = np.array([k in ("explicit", "computed") for k in kinds]) & np.isfinite(compass)
    both = np.isfinite(compass) & np.isfinite(motion) & ~trusted
    note = ""
    device_ok = True
    if both.any():
        spread = float(np.median(np.abs(angle_difference(compass[both], motion[both]))))
        device_ok = spread <= max_disagreement_deg
        note = (
            f"device compass {'agrees' if device_ok else 'disagrees'} with the direction of "
            f"travel (median {spread:.0f} deg)"
        )
    use_compass = trusted | (np.isfinite(compass) & (device_ok | ~np.isfinite(motion)))
    headings = np.where(use_compass, compass, motion) % 360.0
    source = "compass" if use_compass.all() else "motion" if not use_compass.any() else "mixed"
    return HeadingChoice(headings, source, note)


def group_traversals(
    sequences: Sequence[str | None],
    times: Sequence[datetime],
    cameras: Sequence[str],
    *,
    max_gap_s: float = 300.0,
) -> list[str]:
    """A traversal id per photo: its sequence id, else camera + a time-gap split.

    Photos without a sequence id are sorted by time per camera; a gap longer than ``max_gap_s``
    starts a new traversal, named after the camera and its first capture time (UTC), so two walks
    of the same street on different days become two traversals.

    Args:
        sequences: Sequence id per photo or ``None``.
        times: Capture time per photo (UTC).
        cameras: Camera make/model per photo.
        max_gap_s: Longest pause inside one traversal.
    """
    ids: list[str] = [f"seq:{s}" if s else "" for s in sequences]
    loose = [i for i, s in enumerate(sequences) if not s]
    loose.sort(key=lambda i: (cameras[i], times[i]))
    previous: int | None = None
    for i in loose:
        same = previous is not None and cameras[previous] == cameras[i]
        if not (same and (times[i] - times[previous]).total_seconds() <= max_gap_s):
            camera = cameras[i].replace(" ", "_") or "camera"
            current = f"{camera}@{times[i].strftime('%Y%m%dT%H%M%SZ')}"
        ids[i] = current
        previous = i
    return ids
