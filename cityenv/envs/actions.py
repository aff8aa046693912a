"""Action adapters: an agent's action -> the camera trajectory chunk the world model renders.

Each adapter maps the current camera pose and one action to a chunk of ``L`` poses at ``fps``
frames per second, the first one ``1 / fps`` after the current pose. Poses stay level in roll;
their height is set by a ``height_fn`` (street height: the environment passes the road graph's
interpolated reference height plus an offset), so the camera never leaves the street plane.

Angles: compass headings are degrees clockwise from north; a *left* turn (counter-clockwise seen
from above, positive ENU yaw) decreases the heading. Pitch is degrees up from level.

Modes:

- ``discrete`` (:class:`DiscreteActions`): ``Discrete(4)``, SWM's camera actions:
  0 straight, 1 stop, 2 left turn, 3 right turn.
- ``velocity`` (:class:`VelocityActions`): ``Box`` ``[forward speed m/s, yaw rate deg/s]`` (yaw
  rate positive = left), plus ``pitch rate deg/s`` (positive = up) when ``pitch=True``; held
  for the whole chunk.
- ``trajectory`` (:class:`TrajectoryActions`): ``Box (L, 4)``: per frame ``[right m, forward m,
  yaw deg (left positive), pitch deg (up positive)]`` relative to the current camera's level
  frame (its position and heading at the start of the chunk; pitch relative to its pitch).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium import spaces

from cityenv.envs.validation import finite_number, whole_number
from cityenv.errors import InvalidActionError
from cityenv.geometry.pose import Pose, Trajectory

__all__ = [
    "ACTION_MODES",
    "ActionAdapter",
    "DiscreteActions",
    "TrajectoryActions",
    "VelocityActions",
    "level_rotations",
    "make_action_adapter",
]

HeightFn = Callable[[np.ndarray], np.ndarray]
"""``xy (L, 2) -> z (L,)``: camera height (ENU z, metres) at horizontal positions."""

STRAIGHT, STOP, LEFT, RIGHT = 0, 1, 2, 3


def level_rotations(heading_deg: np.ndarray, pitch_deg: np.ndarray) -> np.ndarray:
    """Camera-to-world rotations of roll-free cameras (same as :meth:`Pose.from_heading`).

    Args:
        heading_deg: Compass headings, shape ``(L,)`` degrees clockwise from north.
        pitch_deg: Elevations, shape ``(L,)`` degrees, positive up.

    Returns:
        Unit quaternions, shape ``(L, 4)`` float64 ``(w, x, y, z)``.
    """
    h = np.radians(np.asarray(heading_deg, np.float64))
    p = np.radians(np.asarray(pitch_deg, np.float64))
    # from_heading: R = Rz(-h) @ LEVEL_NORTH @ Rx(p). LEVEL_NORTH is a -90 degree turn about
    # x, so the quaternion is qz(-h) * qx(-90) * qx(p) = qz(-h) * qx(p - 90).
    a = 0.5 * (p - np.pi / 2)
    b = -0.5 * h
    ca, sa, cb, sb = np.cos(a), np.sin(a), np.cos(b), np.sin(b)
    return np.stack([cb * ca, cb * sa, sb * sa, sb * ca], axis=1)


class ActionAdapter(ABC):
    """Turns actions into trajectory chunks.

    Args:
        chunk_length: Poses per chunk ``L``.
        fps: Frame rate of the chunk.
        max_pitch_deg: Pitch is clamped to ``[-max_pitch_deg, max_pitch_deg]``.

    Raises:
        InvalidOptionError: If a length, rate, speed or bound is not a finite number of its
            range (speeds are never negative), checked by each adapter before its space is made.
    """

    name: str = ""

    def __init__(self, chunk_length: int, fps: float, max_pitch_deg: float = 60.0) -> None:
        self.chunk_length = whole_number("chunk_length", chunk_length)
        self.fps = finite_number("fps", fps, low=0.0, low_open=True)
        self.max_pitch_deg = finite_number("max_pitch_deg", max_pitch_deg, low=0.0)
        self.space = self._make_space()

    @abstractmethod
    def _make_space(self) -> spaces.Space:
        """The Gymnasium action space."""

    @abstractmethod
    def _motion(self, action: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-frame motion relative to the current pose for a valid action.

        Returns:
            ``(offsets (L, 2) [right, forward] m, yaw_left (L,) deg, pitch (L,) deg)``, all
            relative to the current camera's level frame.
        """

    def check(self, action: Any) -> Any:
        """Return ``action`` as the space's type, or raise :class:`InvalidActionError`."""
        raise NotImplementedError

    def chunk(self, pose: Pose, time_s: float, action: Any, height_fn: HeightFn) -> Trajectory:
        """The trajectory chunk of ``action`` taken at ``pose``.

        Args:
            pose: Current camera-to-world pose (ENU).
            time_s: Time of ``pose``, seconds.
            action: An element of :attr:`space`.
            height_fn: ``xy (L, 2) -> z (L,)`` street height of the camera.

        Returns:
            ``L`` poses at times ``time_s + (1..L) / fps``.

        Raises:
            InvalidActionError: If the action is outside :attr:`space` or not finite.
        """
        offsets, yaw_left, pitch = self._motion(self.check(action))
        heading0 = pose.heading_deg
        h = math.radians(heading0)
        forward, right = np.array([math.sin(h), math.cos(h)]), np.array([math.cos(h), -math.sin(h)])
        xy = pose.position[:2] + offsets[:, :1] * right + offsets[:, 1:] * forward
        pitch = np.clip(pose.pitch_deg + pitch, -self.max_pitch_deg, self.max_pitch_deg)
        positions = np.column_stack([xy, height_fn(xy)])
        rotations = level_rotations(heading0 - yaw_left, pitch)
        times = time_s + np.arange(1, self.chunk_length + 1) / self.fps
        return Trajectory(positions, rotations, times)

    def _invalid(self, action: Any, why: str) -> InvalidActionError:
        return InvalidActionError(
            f"action must be an element of {_describe(self.space)} ({self.name} mode), got "
            f"{_short(action)} ({why}); sample from env.action_space or clip to its bounds."
        )


class DiscreteActions(ActionAdapter):
    """SWM's camera actions: ``Discrete(4)``: 0 straight, 1 stop, 2 left turn, 3 right turn.

    Args:
        chunk_length: Poses per chunk ``L``.
        fps: Frame rate.
        speed: Forward speed when going straight, m/s.
        turn_deg: Heading change of a turn over one chunk, degrees.
        turn_speed: Forward speed during a turn, m/s (the camera arcs round the corner).
        max_pitch_deg: Pitch clamp, degrees (the discrete actions keep the current pitch).
    """

    name = "discrete"

    def __init__(
        self,
        chunk_length: int,
        fps: float,
        *,
        speed: float = 5.0,
        turn_deg: float = 90.0,
        turn_speed: float = 2.5,
        max_pitch_deg: float = 60.0,
    ) -> None:
        # Speeds are >= 0: a negative one would drive backwards, which no action asks for.
        self.speed = finite_number("speed", speed, low=0.0)
        self.turn_deg = finite_number("turn_deg", turn_deg)
        self.turn_speed = finite_number("turn_speed", turn_speed, low=0.0)
        super().__init__(chunk_length, fps, max_pitch_deg)

    def _make_space(self) -> spaces.Space:
        return spaces.Discrete(4)

    def check(self, action: Any) -> int:
        a = np.asarray(action)
        if a.size != 1 or a.dtype.kind not in "iuf" or not np.isfinite(a).all():
            raise self._invalid(action, "expected one integer")
        value = a.reshape(()).item()
        if value != int(value) or not 0 <= int(value) < 4:
            raise self._invalid(action, "expected 0, 1, 2 or 3")
        return int(value)

    def _motion(self, action: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.chunk_length
        speed = {STRAIGHT: self.speed, STOP: 0.0}.get(action, self.turn_speed)
        turn = {LEFT: self.turn_deg, RIGHT: -self.turn_deg}.get(action, 0.0)
        rates = np.full(n, speed / self.fps), np.full(n, turn / n)
        return (*_integrate(*rates), np.zeros(n))


class VelocityActions(ActionAdapter):
    """``Box [forward m/s, yaw rate deg/s (left positive)(, pitch rate deg/s)]``, held a chunk.

    Args:
        chunk_length: Poses per chunk ``L``.
        fps: Frame rate.
        max_speed: Upper bound of the forward speed, m/s (the lower bound is 0: no reversing).
        max_yaw_rate: Bound of the yaw rate, deg/s.
        pitch: Add a pitch-rate component.
        max_pitch_rate: Bound of the pitch rate, deg/s.
        max_pitch_deg: Pitch clamp, degrees.
    """

    name = "velocity"

    def __init__(
        self,
        chunk_length: int,
        fps: float,
        *,
        max_speed: float = 10.0,
        max_yaw_rate: float = 90.0,
        pitch: bool = False,
        max_pitch_rate: float = 30.0,
        max_pitch_deg: float = 60.0,
    ) -> None:
        self.max_speed = finite_number("max_speed", max_speed, low=0.0, low_open=True)
        self.max_yaw_rate = finite_number("max_yaw_rate", max_yaw_rate, low=0.0)
        self.pitch = bool(pitch)
        self.max_pitch_rate = finite_number("max_pitch_rate", max_pitch_rate, low=0.0)
        super().__init__(chunk_length, fps, max_pitch_deg)

    def _make_space(self) -> spaces.Space:
        high = [self.max_speed, self.max_yaw_rate] + ([self.max_pitch_rate] if self.pitch else [])
        low = [0.0, -self.max_yaw_rate] + ([-self.max_pitch_rate] if self.pitch else [])
        return spaces.Box(np.array(low, np.float32), np.array(high, np.float32), dtype=np.float32)

    def check(self, action: Any) -> np.ndarray:
        return _check_box(self, action)

    def _motion(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.chunk_length
        speed, yaw_rate = float(action[0]), float(action[1])
        pitch_rate = float(action[2]) if self.pitch else 0.0
        steps = np.arange(1, n + 1) / self.fps
        offsets, yaw = _integrate(np.full(n, speed / self.fps), np.full(n, yaw_rate / self.fps))
        return offsets, yaw, pitch_rate * steps


class TrajectoryActions(ActionAdapter):
    """``Box (L, 4)``: per frame ``[right m, forward m, yaw deg (left +), pitch deg (up +)]``
    relative to the current camera's level frame.

    Args:
        chunk_length: Poses per chunk ``L``.
        fps: Frame rate.
        max_speed: Frame ``i`` (1-based) may lie at most ``max_speed * i / fps`` metres away
            along each axis.
        max_pitch_deg: Pitch clamp, degrees (also the bound of the relative pitch).
    """

    name = "trajectory"

    def __init__(
        self, chunk_length: int, fps: float, *, max_speed: float = 10.0, max_pitch_deg: float = 60.0
    ) -> None:
        self.max_speed = finite_number("max_speed", max_speed, low=0.0, low_open=True)
        super().__init__(chunk_length, fps, max_pitch_deg)

    def _make_space(self) -> spaces.Box:
        reach = self.max_speed * np.arange(1, self.chunk_length + 1) / self.fps
        high = np.empty((self.chunk_length, 4), np.float32)
        high[:, 0] = high[:, 1] = reach
        high[:, 2] = 180.0
        high[:, 3] = self.max_pitch_deg
        return spaces.Box(-high, high, dtype=np.float32)

    def check(self, action: Any) -> np.ndarray:
        return _check_box(self, action)

    def _motion(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a = action.astype(np.float64)
        return a[:, :2], a[:, 2], a[:, 3]


ACTION_MODES: dict[str, type[ActionAdapter]] = {
    "discrete": DiscreteActions,
    "velocity": VelocityActions,
    "trajectory": TrajectoryActions,
}
"""Action mode name -> adapter class."""


def make_action_adapter(mode: str, chunk_length: int, fps: float, **options: Any) -> ActionAdapter:
    """The adapter of an action mode (``discrete``, ``velocity`` or ``trajectory``).

    Args:
        mode: Mode name.
        chunk_length: Poses per chunk.
        fps: Frame rate.
        **options: Keyword arguments of the adapter class (``speed``, ``max_speed``, ...).

    Raises:
        UnknownNameError: If ``mode`` is not a known mode.
    """
    from cityenv.errors import check_name

    cls = ACTION_MODES[check_name("action_mode", mode, ACTION_MODES)]
    return cls(chunk_length, fps, **options)


# --- helpers ------------------------------------------------------------------------------------
def _integrate(step_m: np.ndarray, step_yaw_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integrate per-frame forward steps and left yaw steps into a path.

    Each frame turns by its yaw step and moves along the mid-step heading (exact for constant
    rates up to the chord of the arc).

    Args:
        step_m: Forward distance per frame, ``(L,)`` metres.
        step_yaw_deg: Left turn per frame, ``(L,)`` degrees.

    Returns:
        ``(offsets (L, 2) [right, forward] metres, yaw_left (L,) degrees)``, cumulative.
    """
    yaw = np.cumsum(step_yaw_deg)
    mid = np.radians(yaw - 0.5 * step_yaw_deg)  # left-positive angle from the initial forward
    offsets = np.column_stack([-np.sin(mid) * step_m, np.cos(mid) * step_m]).cumsum(0)
    return offsets, yaw


def _check_box(adapter: ActionAdapter, action: Any) -> np.ndarray:
    """``action`` as float32 of the Box's shape, finite and inside the bounds.

    Only real numbers are taken (bools, complex numbers and strings are refused, never
    converted), and the shape must be the space's up to axes of length 1 (a batch of one):
    reshaping a ``(4, L)`` array into ``(L, 4)`` would scramble the path, so it is refused.
    """
    space = adapter.space
    assert isinstance(space, spaces.Box)
    try:
        a = np.asarray(action)
    except (TypeError, ValueError) as exc:  # ragged nested lists
        raise adapter._invalid(action, f"not an array of numbers: {exc}") from exc
    if a.dtype.kind not in "iuf":
        raise adapter._invalid(action, f"dtype {a.dtype}, expected real numbers (float32)")
    if a.shape != space.shape:
        if _without_ones(a.shape) != _without_ones(space.shape):
            raise adapter._invalid(
                action, f"shape {a.shape}, expected {space.shape} (a transposed array is refused)"
            )
        a = a.reshape(space.shape)  # only axes of length 1 differ
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise adapter._invalid(action, "NaN or inf")
    tol = 1e-5 * np.maximum(1.0, np.abs(space.high))
    if np.any(a < space.low - tol) or np.any(a > space.high + tol):
        raise adapter._invalid(action, "outside the bounds")
    return np.clip(a, space.low, space.high)


def _describe(space: spaces.Space) -> str:
    """The space for a message: a large Box by shape and dtype (its bounds fill pages)."""
    if isinstance(space, spaces.Box) and space.low.size > 4:
        return f"Box(shape={space.shape}, {space.dtype}; bounds in env.action_space.low/high)"
    return str(space)


def _short(action: Any, limit: int = 120) -> str:
    text = repr(action)
    return text if len(text) <= limit else text[: limit - 5] + " ...]"


def _without_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)
