"""Action adapters: pure chunk geometry, checked against hand-computed poses."""

from __future__ import annotations

import numpy as np
import pytest

from cityenv.envs.actions import (
    DiscreteActions,
    TrajectoryActions,
    VelocityActions,
    level_rotations,
    make_action_adapter,
)
from cityenv.errors import InvalidActionError, UnknownNameError
from cityenv.geometry.pose import Pose

L, FPS, Z = 12, 10.0, 2.5


def flat(xy: np.ndarray) -> np.ndarray:
    return np.full(len(xy), Z)


def start(heading: float = 90.0) -> Pose:
    return Pose.from_heading([10.0, -5.0, Z], heading)


def test_level_rotations_match_from_heading():
    for h, p in [(0.0, 0.0), (90.0, 10.0), (217.0, -33.0)]:
        q = level_rotations(np.array([h]), np.array([p]))[0]
        assert Pose([0, 0, 0], q).allclose(Pose.from_heading([0, 0, 0], h, p), 1e-9)


def test_chunk_has_length_fps_and_street_height():
    chunk = DiscreteActions(L, FPS).chunk(start(), 3.0, 0, flat)
    assert len(chunk) == L
    np.testing.assert_allclose(chunk.timestamps, 3.0 + np.arange(1, L + 1) / FPS)
    np.testing.assert_allclose(chunk.positions[:, 2], Z)
    assert all(abs(p.pitch_deg) < 1e-9 for p in chunk)


def test_straight_moves_forward_by_speed_over_fps_per_frame():
    chunk = DiscreteActions(L, FPS, speed=5.0).chunk(start(90.0), 0.0, 0, flat)  # facing east
    expected_x = 10.0 + 0.5 * np.arange(1, L + 1)
    np.testing.assert_allclose(chunk.positions[:, 0], expected_x, atol=1e-9)
    np.testing.assert_allclose(chunk.positions[:, 1], -5.0, atol=1e-9)
    assert all(abs(p.heading_deg - 90.0) < 1e-6 for p in chunk)


def test_stop_keeps_position_and_heading():
    chunk = DiscreteActions(L, FPS).chunk(start(30.0), 0.0, 1, flat)
    np.testing.assert_allclose(chunk.positions, np.tile([10.0, -5.0, Z], (L, 1)), atol=1e-9)
    assert all(abs(p.heading_deg - 30.0) < 1e-6 for p in chunk)


def test_left_turn_decreases_heading_and_right_turn_increases_it():
    adapter = DiscreteActions(L, FPS, turn_deg=90.0, turn_speed=2.0)
    left = adapter.chunk(start(90.0), 0.0, 2, flat)
    right = adapter.chunk(start(90.0), 0.0, 3, flat)
    assert left[L - 1].heading_deg == pytest.approx(0.0, abs=1e-6)  # east -> north
    assert right[L - 1].heading_deg == pytest.approx(180.0, abs=1e-6)  # east -> south
    assert left.positions[-1, 1] > -5.0 > right.positions[-1, 1]  # arcs to the left / right
    headings = [p.heading_deg for p in left]
    assert np.all(np.diff(headings) < 0)  # counter-clockwise seen from above


def test_velocity_mode_integrates_speed_yaw_and_pitch():
    adapter = VelocityActions(L, FPS, pitch=True)
    assert adapter.space.shape == (3,)
    straight = adapter.chunk(start(0.0), 0.0, np.array([4.0, 0.0, 0.0]), flat)  # north
    np.testing.assert_allclose(straight.positions[:, 1], -5.0 + 0.4 * np.arange(1, L + 1))
    turning = adapter.chunk(start(0.0), 0.0, np.array([0.0, 30.0, 10.0]), flat)
    assert turning[L - 1].heading_deg == pytest.approx(360.0 - 30.0 * L / FPS)
    assert turning[L - 1].pitch_deg == pytest.approx(10.0 * L / FPS)
    np.testing.assert_allclose(turning.positions[:, :2], np.tile([10.0, -5.0], (L, 1)))


def test_pitch_is_clamped():
    adapter = VelocityActions(L, FPS, pitch=True, max_pitch_rate=200.0, max_pitch_deg=20.0)
    chunk = adapter.chunk(start(), 0.0, np.array([0.0, 0.0, 200.0]), flat)
    assert chunk[L - 1].pitch_deg == pytest.approx(20.0)


def test_trajectory_mode_places_frames_in_the_level_frame():
    adapter = TrajectoryActions(L, FPS)
    action = np.zeros((L, 4), np.float32)
    action[:, 1] = 0.5 * np.arange(1, L + 1)  # forward
    action[:, 0] = 0.1  # right
    action[-1, 2] = 45.0  # yaw left
    chunk = adapter.chunk(start(90.0), 0.0, action, flat)  # facing east: right = south
    np.testing.assert_allclose(chunk.positions[:, 0], 10.0 + action[:, 1], atol=1e-6)
    np.testing.assert_allclose(chunk.positions[:, 1], -5.1, atol=1e-6)
    assert chunk[L - 1].heading_deg == pytest.approx(45.0)
    assert adapter.space.contains(action)


@pytest.mark.parametrize(
    ("adapter", "action", "match"),
    [
        (DiscreteActions(L, FPS), 4, "Discrete"),
        (DiscreteActions(L, FPS), 1.5, "expected 0, 1, 2 or 3"),
        (DiscreteActions(L, FPS), np.nan, "one integer"),
        (VelocityActions(L, FPS), np.array([np.nan, 0.0]), "NaN"),
        (VelocityActions(L, FPS), np.array([100.0, 0.0]), "outside the bounds"),
        (VelocityActions(L, FPS), np.zeros(5), "shape"),
        (TrajectoryActions(L, FPS), np.full((L, 4), np.inf), "NaN or inf"),
    ],
)
def test_bad_actions_raise(adapter, action, match):
    with pytest.raises(InvalidActionError, match=match):
        adapter.chunk(start(), 0.0, action, flat)


def test_unknown_mode_suggests_a_name():
    with pytest.raises(UnknownNameError, match=r"got 'velocty'\. Did you mean 'velocity'\?"):
        make_action_adapter("velocty", L, FPS)
