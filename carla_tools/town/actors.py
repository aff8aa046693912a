"""Vehicles on lanes and pedestrians on sidewalks, as closed-form functions of (seed, world time).

Every actor is a *slot* on a closed loop (see :mod:`carla_tools.town.layout`): its arc-length
position is ``(s0 + speed * t) mod loop_length`` with ``t`` the world time in seconds since
:data:`EPOCH`, so any two world times give different, reproducible traffic and a short step of
time moves everyone continuously. Slots on one vehicle loop share one speed and are spaced at
least a bus length apart, so vehicles in a lane never overlap. Whether a slot is occupied depends on
the time of day (rush hours are busier, :func:`carla_tools.conditions.traffic_density`): slot
``i`` is active while its fixed random threshold is below the current density. Vehicles of
crossing roads ignore each other (no right of way yet).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from carla_tools.conditions import pedestrian_density, to_utc, traffic_density
from carla_tools.town.layout import CURB_HEIGHT, TownLayout
from cityenv.cache import LRUCache

EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
"""World time zero."""

VEHICLE_SPACING = 14.0
"""Distance between neighbouring vehicle slots on a loop, metres."""

PEDESTRIAN_SPACING = 7.0
"""Distance between neighbouring pedestrian slots on a loop, metres."""

_PAINT = np.array([
    [0.92, 0.92, 0.92], [0.08, 0.08, 0.09], [0.55, 0.56, 0.58], [0.75, 0.76, 0.78],
    [0.55, 0.05, 0.05], [0.08, 0.15, 0.40], [0.25, 0.28, 0.30], [0.85, 0.85, 0.80],
    [0.10, 0.35, 0.20], [0.85, 0.60, 0.10],
])  # fmt: skip
_CLOTHES = np.array([
    [0.10, 0.10, 0.12], [0.85, 0.85, 0.85], [0.20, 0.25, 0.45], [0.55, 0.10, 0.10],
    [0.35, 0.30, 0.25], [0.60, 0.55, 0.45], [0.15, 0.35, 0.25], [0.80, 0.55, 0.20],
])  # fmt: skip


def world_seconds(when: datetime) -> float:
    """Seconds from :data:`EPOCH` to ``when`` (naive = UTC)."""
    return (to_utc(when) - EPOCH).total_seconds()


class LoopSet:
    """Many closed polylines packed for vectorised arc-length lookups.

    Args:
        loops: Closed polylines, each ``(N_k, 2)`` with the first point not repeated.
    """

    def __init__(self, loops: list[np.ndarray]) -> None:
        closed = [np.concatenate([lp, lp[:1]]) for lp in loops]
        seg_len = [np.linalg.norm(np.diff(c, axis=0), axis=1) for c in closed]
        self.lengths = np.array([s.sum() for s in seg_len])
        self._start = np.concatenate([[0], np.cumsum([len(s) for s in seg_len])])
        self._a = np.concatenate([c[:-1] for c in closed])  # segment starts (S, 2)
        self._d = np.concatenate([np.diff(c, axis=0) for c in closed])  # segment vectors (S, 2)
        seg = np.linalg.norm(self._d, axis=1, keepdims=True)
        self._unit = self._d / np.maximum(seg, 1e-9)  # unit directions (S, 2)
        self._yaw = np.arctan2(self._d[:, 1], self._d[:, 0])  # headings (S,)
        # global cumulative arc length: loop k's segments occupy [offset_k, offset_k + length_k)
        self._offset = np.concatenate([[0.0], np.cumsum(self.lengths)])
        self._cum = np.concatenate(
            [
                np.concatenate([[0.0], np.cumsum(s)[:-1]]) + o
                for s, o in zip(seg_len, self._offset, strict=False)
            ]
        )

    def sample(self, loop: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions and headings at arc lengths along loops.

        Args:
            loop: Loop index per query, shape ``(M,)`` int.
            s: Arc length per query, metres, any real (wrapped modulo the loop length), ``(M,)``.

        Returns:
            ``(xy (M, 2), yaw (M,))``: ENU positions and travel directions (radians, from +x).
        """
        s = np.mod(s, self.lengths[loop])
        g = self._offset[loop] + s
        idx = np.searchsorted(self._cum, g, side="right") - 1
        idx = np.clip(idx, self._start[loop], self._start[loop + 1] - 1)
        xy = self._a[idx] + self._unit[idx] * (g - self._cum[idx])[:, None]
        return xy, self._yaw[idx]


@dataclass(frozen=True)
class _Slots:
    """Fixed per-slot attributes (all ``(M,)`` or ``(M, 3)``)."""

    loop: np.ndarray
    s0: np.ndarray
    speed: np.ndarray
    threshold: np.ndarray
    kind: np.ndarray
    color_a: np.ndarray
    color_b: np.ndarray
    lateral: np.ndarray
    scale: np.ndarray


class TrafficModel:
    """Where every vehicle and pedestrian is at a world time.

    Args:
        layout: The town layout (its loops).
        seed: Seed of the slot attributes (the town's seed).
        vehicle_density: Multiplier of the time-of-day vehicle density (0 = no vehicles).
        pedestrian_density: Multiplier of the pedestrian density (0 = nobody walks).
    """

    KINDS = ("car", "van", "bus", "pedestrian")

    def __init__(
        self,
        layout: TownLayout,
        seed: int,
        vehicle_density: float = 1.0,
        pedestrian_density: float = 1.0,
    ) -> None:
        rng = np.random.default_rng([seed, 0xAC7025])
        self.vehicle_scale = float(vehicle_density)
        self.pedestrian_scale = float(pedestrian_density)
        self.vehicle_loops = LoopSet(layout.vehicle_loops)
        self.pedestrian_loops = LoopSet(layout.pedestrian_loops)
        self._veh = self._vehicle_slots(rng)
        self._ped = self._pedestrian_slots(rng)
        # occupied slots per (slot set, count): the count changes only with the hour of day
        self._active_cache: LRUCache[tuple[str, int], _Active] = LRUCache(64)

    def _vehicle_slots(self, rng: np.random.Generator) -> _Slots:
        lengths = self.vehicle_loops.lengths
        n = np.maximum((lengths // VEHICLE_SPACING).astype(int), 1)
        loop = np.repeat(np.arange(len(lengths)), n)
        i = np.concatenate([np.arange(k) for k in n])
        s0 = i * (lengths / n)[loop] + rng.uniform(0, 1, len(lengths))[loop] * lengths[loop]
        speed = rng.uniform(6.0, 12.0, len(lengths))[loop]
        m = len(loop)
        kind = rng.choice(3, size=m, p=[0.75, 0.2, 0.05])
        color = _PAINT[rng.integers(len(_PAINT), size=m)] * rng.uniform(0.9, 1.05, (m, 1))
        bus_col = np.array([0.15, 0.45, 0.30]) if rng.uniform() < 0.5 else np.array([0.2, 0.3, 0.7])
        color[kind == 2] = bus_col
        return _Slots(loop, s0, speed, rng.uniform(0, 1, m), kind, np.clip(color, 0, 1),
                      np.zeros((m, 3)), np.zeros(m), np.ones(m))  # fmt: skip

    def _pedestrian_slots(self, rng: np.random.Generator) -> _Slots:
        lengths = self.pedestrian_loops.lengths
        n = np.maximum((lengths // PEDESTRIAN_SPACING).astype(int), 1)
        loop = np.repeat(np.arange(len(lengths)), n)
        m = len(loop)
        s0 = rng.uniform(0, 1, m) * lengths[loop]
        return _Slots(
            loop, s0, rng.uniform(1.0, 1.6, m), rng.uniform(0, 1, m), np.full(m, 3),
            _CLOTHES[rng.integers(len(_CLOTHES), size=m)],
            _CLOTHES[rng.integers(len(_CLOTHES), size=m)] * 0.8, rng.uniform(-0.4, 0.4, m),
            rng.uniform(0.9, 1.1, m),
        )  # fmt: skip

    @property
    def capacity(self) -> dict[str, int]:
        """Largest number of instances of each kind (for buffer sizes)."""
        caps = {k: int(np.sum(self._veh.kind == i)) for i, k in enumerate(self.KINDS[:3])}
        caps["pedestrian"] = len(self._ped.loop)
        return caps

    def instances(self, t: float, local_hour: float) -> dict[str, np.ndarray]:
        """Instance rows of every actor kind at a world time.

        Args:
            t: World time, seconds since :data:`EPOCH`.
            local_hour: Local hour of day, drives how many slots are occupied.

        Returns:
            Kind name -> ``(M, 11)`` float32 rows ``x, y, z, yaw, colour A (3), colour B (3),
            scale`` in ENU (vehicles at ``z = 0``, pedestrians on the sidewalk), fresh arrays.
        """
        veh = self._active(self._veh, traffic_density(local_hour) * self.vehicle_scale)
        xy, yaw = self.vehicle_loops.sample(veh.loop, veh.s0 + veh.speed * t)
        rows = veh.rows.copy()
        rows[:, :2], rows[:, 3] = xy, yaw
        out = dict(zip(self.KINDS[:3], np.split(rows, veh.splits), strict=True))
        ped = self._active(self._ped, pedestrian_density(local_hour) * self.pedestrian_scale)
        xy, yaw = self.pedestrian_loops.sample(ped.loop, ped.s0 + ped.speed * t)
        rows = ped.rows.copy()
        # walk a little to the right or left of the loop line
        rows[:, 0] = xy[:, 0] + ped.lateral * np.sin(yaw)
        rows[:, 1] = xy[:, 1] - ped.lateral * np.cos(yaw)
        rows[:, 3] = yaw
        out["pedestrian"] = rows
        return out

    def _active(self, slots: _Slots, density: float) -> _Active:
        """The occupied slots at a density, grouped by kind (cached: it changes only rarely)."""
        n = int(np.sum(slots.threshold < density))
        which = "pedestrian" if slots is self._ped else "vehicle"
        return self._active_cache.get_or_create(
            (which, n), lambda: self._occupy(slots, density, which == "pedestrian")
        )

    @staticmethod
    def _occupy(slots: _Slots, density: float, on_sidewalk: bool) -> _Active:
        """The slots below ``density``, kinds contiguous, with their instance rows."""
        idx = np.flatnonzero(slots.threshold < density)
        idx = idx[np.argsort(slots.kind[idx], kind="stable")]  # kinds contiguous, slot order
        kind = slots.kind[idx]
        z = CURB_HEIGHT if on_sidewalk else 0.0
        rows = _rows(np.zeros((len(idx), 2)), np.full(len(idx), z), np.zeros(len(idx)),
                     slots.color_a[idx], slots.color_b[idx], slots.scale[idx])  # fmt: skip
        splits = np.searchsorted(kind, [1, 2])
        return _Active(
            slots.loop[idx], slots.s0[idx], slots.speed[idx], slots.lateral[idx], rows, splits
        )


@dataclass(frozen=True)
class _Active:
    """The occupied slots at one density: their attributes and instance rows without a place."""

    loop: np.ndarray
    s0: np.ndarray
    speed: np.ndarray
    lateral: np.ndarray
    rows: np.ndarray  # (M, 11) float32, position and yaw left zero
    splits: np.ndarray  # where kinds 1 and 2 start (vehicles)


def _rows(xy, z, yaw, color_a, color_b, scale) -> np.ndarray:
    return np.concatenate(
        [xy, z[:, None], yaw[:, None], color_a, color_b, scale[:, None]], axis=1
    ).astype(np.float32)
