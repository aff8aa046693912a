"""The route follower's control law, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from policies.control import (
    DISCRETE_LEFT,
    DISCRETE_RIGHT,
    DISCRETE_STOP,
    DISCRETE_STRAIGHT,
    RoutePath,
    bearing_deg,
    discrete_action,
    plan_discrete,
    trajectory_chunk,
    velocity_command,
    wrap_deg,
)


def test_wrap_and_bearing() -> None:
    assert wrap_deg(190.0) == -170.0 and wrap_deg(-180.0) == -180.0 and wrap_deg(45.0) == 45.0
    origin = np.zeros(2)
    assert bearing_deg(origin, np.array([0.0, 1.0])) == 0.0  # north
    assert bearing_deg(origin, np.array([1.0, 0.0])) == 90.0  # east
    assert bearing_deg(origin, np.array([0.0, -1.0])) == 180.0
    assert bearing_deg(origin, np.array([-1.0, 0.0])) == 270.0


@pytest.mark.parametrize(
    ("error", "remaining", "expected"),
    [
        (0.0, 50.0, DISCRETE_STRAIGHT),
        (44.0, 50.0, DISCRETE_STRAIGHT),
        (46.0, 50.0, DISCRETE_RIGHT),
        (-46.0, 50.0, DISCRETE_LEFT),
        (350.0, 50.0, DISCRETE_STRAIGHT),  # wraps to -10
        (90.0, 1.0, DISCRETE_STOP),
    ],
)
def test_discrete_action(error: float, remaining: float, expected: int) -> None:
    got = discrete_action(error, remaining, turn_threshold_deg=45.0, stop_radius_m=2.0)
    assert got == expected


def test_velocity_command() -> None:
    kw = {"duration_s": 1.0, "max_speed": 5.0, "max_yaw_rate_deg": 90.0, "stop_radius_m": 1.0}
    assert velocity_command(0.0, 100.0, **kw) == (5.0, 0.0)
    speed, yaw_left = velocity_command(60.0, 100.0, **kw)  # target to the right: turn right
    assert yaw_left == pytest.approx(-60.0) and speed == pytest.approx(5.0 * 0.25)
    assert velocity_command(-180.0, 100.0, **kw)[1] == 90.0  # clipped
    assert velocity_command(0.0, 3.0, **kw) == (3.0, 0.0)  # ends the chunk at the goal
    assert velocity_command(0.0, 0.5, **kw) == (0.0, 0.0)


def test_route_path_lookups() -> None:
    path = RoutePath(
        np.array([[0.0, 0.0, 2.5], [0.0, 10.0, 2.5], [0.0, 10.0, 2.5], [10.0, 10.0, 2.5]])
    )
    assert path.length == 20.0 and len(path) == 3  # the duplicate point is dropped
    assert np.allclose(path.point(5.0), [0.0, 5.0])
    assert np.allclose(path.point(15.0), [5.0, 10.0])
    assert np.allclose(path.point(99.0), [10.0, 10.0])  # clamped
    assert path.heading(5.0) == 0.0 and path.heading(15.0) == 90.0
    hit = path.locate(np.array([1.0, 4.0]))
    assert hit.s == pytest.approx(4.0) and hit.offset == pytest.approx(1.0)
    # A window keeps progress monotone: the point is nearest to s = 4 but the window starts at 12.
    assert path.locate(np.array([1.0, 4.0]), s_min=12.0).s == pytest.approx(12.0)


def test_trajectory_chunk_follows_the_route() -> None:
    path = RoutePath(np.array([[0.0, 0.0], [0.0, 100.0]]))
    chunk = trajectory_chunk(
        path, 0.0, np.zeros(3), 0.0, speed=5.0, fps=10.0, chunk_length=4, look_m=3.0
    )
    assert chunk.shape == (4, 4) and chunk.dtype == np.float32
    assert np.allclose(chunk[:, 0], 0.0) and np.allclose(chunk[:, 1], [0.5, 1.0, 1.5, 2.0])
    assert np.allclose(chunk[:, 2:], 0.0)
    # Facing east on a north-going route: the frames move forward-left and yaw 90 degrees left.
    east = trajectory_chunk(
        path, 0.0, np.zeros(3), 90.0, speed=5.0, fps=10.0, chunk_length=4, look_m=3.0
    )
    assert np.allclose(east[:, 0], [-0.5, -1.0, -1.5, -2.0]) and np.allclose(east[:, 2], 90.0)


def straight_line_simulator(turn_deg: float = 90.0, step_m: float = 6.0, arc_m: float = 3.0):
    """A toy motion model: straight moves ``step_m``, turns rotate in place after ``arc_m``."""

    def simulate(xy: np.ndarray, heading: float, action: int) -> tuple:
        if action == DISCRETE_STRAIGHT:
            h, dist = heading, step_m
        else:
            h, dist = heading + (turn_deg if action == DISCRETE_RIGHT else -turn_deg), arc_m
        rad = np.radians(h)
        end = xy + dist * np.array([np.sin(rad), np.cos(rad)])
        return np.stack([xy, end]), end, h % 360.0

    return simulate


def test_plan_discrete_goes_straight_on_the_route_and_turns_back_onto_it() -> None:
    path = RoutePath(np.array([[0.0, 0.0], [0.0, 100.0]]))
    sim = straight_line_simulator()
    assert plan_discrete(path, 0.0, np.zeros(2), 0.0, sim) == DISCRETE_STRAIGHT
    # 3 m right of a north-going route, facing north: turn left, come back.
    assert plan_discrete(path, 10.0, np.array([3.0, 10.0]), 0.0, sim) == DISCRETE_LEFT
    # Facing west across it: turn right to face north again.
    assert plan_discrete(path, 10.0, np.array([0.0, 10.0]), 270.0, sim) == DISCRETE_RIGHT
