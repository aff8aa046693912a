"""Vehicle, pedestrian and free-camera trajectories over the procedural town's lanes (no GL)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from carla_tools.generate.trajectories import (
    KINDS,
    LaneGraph,
    hermite,
    make_trajectory,
    smooth,
    trajectory_headings,
    yaw_rates_deg,
)
from carla_tools.town.layout import LayoutParams, generate_layout, polygon_contains

FPS = 10.0


@pytest.fixture(scope="module")
def layout():
    return generate_layout(5, LayoutParams(blocks=(2, 2)))


@pytest.fixture(scope="module")
def graph(layout):
    network = SimpleNamespace(lanes=layout.lanes, intersections=layout.intersections)
    return LaneGraph.from_network(network)


def _draw(kind, graph, n=60, frames=49):
    return [make_trajectory(kind, graph, frames, FPS, np.random.default_rng(s)) for s in range(n)]


def _distance_to(points: np.ndarray, cloud: np.ndarray) -> np.ndarray:
    """Distance from each xy point (N, 2) to the nearest point of a cloud (M, 2)."""
    return np.linalg.norm(points[:, None] - cloud[None], axis=-1).min(axis=1)


@pytest.mark.parametrize("kind", KINDS)
def test_frame_count_timestamps_and_determinism(kind, graph):
    traj = make_trajectory(kind, graph, 17, FPS, np.random.default_rng(3))
    again = make_trajectory(kind, graph, 17, FPS, np.random.default_rng(3))
    assert len(traj) == 17
    np.testing.assert_allclose(traj.timestamps, np.arange(17) / FPS)
    np.testing.assert_array_equal(traj.positions, again.positions)


def test_vehicle_stays_on_lanes_or_in_junctions(layout, graph):
    lanes = np.concatenate([lane.waypoints[:, :2] for lane in layout.lanes])
    centers = np.array([i.center[:2] for i in layout.intersections])
    for traj in _draw("vehicle", graph, n=30):
        xy = traj.positions[:, :2]
        on_lane = _distance_to(xy, lanes) < 1.8  # waypoints are 2 m apart, lanes 3.25 m wide
        in_junction = _distance_to(xy, centers) < 28.0
        assert np.all(on_lane | in_junction)
        np.testing.assert_allclose(traj.positions[:, 2], traj.positions[0, 2])  # camera height


def test_vehicles_turn_at_intersections_smoothly(layout, graph):
    centers = np.array([i.center[:2] for i in layout.intersections])
    turned = 0
    for traj in _draw("vehicle", graph, n=60, frames=80):
        rates = yaw_rates_deg(traj)
        assert rates.max() < 100.0  # deg/s: a car turning on a ~10 m radius at up to 10 m/s
        h = trajectory_headings(traj)
        total = abs(((np.diff(h) + 180) % 360 - 180).sum())
        if total > 60:
            turned += 1
            where = traj.positions[np.argmax(rates), :2]
            assert _distance_to(where[None], centers)[0] < 30.0
        steps = np.linalg.norm(np.diff(traj.positions, axis=0), axis=1)
        assert steps.max() / steps.min() < 1.1  # constant speed
    assert turned >= 5


def test_pedestrians_walk_on_sidewalks(layout, graph):
    curbs = [b.curb for b in layout.blocks]
    lots = [b.lot for b in layout.blocks]
    for traj in _draw("pedestrian", graph, n=30, frames=150):
        xy = traj.positions[:, :2]
        on_walk = np.zeros(len(xy), bool)
        for curb, lot in zip(curbs, lots, strict=True):
            on_walk |= polygon_contains(curb, xy, margin=0.2) & ~polygon_contains(lot, xy)
        assert on_walk.all()
        assert yaw_rates_deg(traj).max() < 100.0
        speed = np.linalg.norm(np.diff(xy, axis=0), axis=1) * FPS
        assert 1.0 < speed.mean() < 1.8


def test_pedestrians_turn_round_block_corners(graph):
    total = [
        abs(((np.diff(trajectory_headings(t)) + 180) % 360 - 180).sum())
        for t in _draw("pedestrian", graph, n=30, frames=300)
    ]
    assert max(total) > 60


def test_free_camera_flies_smoothly_within_its_height_band(graph):
    for traj in _draw("free", graph, n=20):
        assert np.all((traj.positions[:, 2] >= 2.0) & (traj.positions[:, 2] <= 15.0))
        assert yaw_rates_deg(traj).max() < 90.0
        pitch = np.degrees(np.arcsin(traj.matrices[:, 2, 2]))  # optical axis z = sin(pitch)
        assert np.all((pitch >= -25.01) & (pitch <= 5.01))
        assert np.ptp(pitch) > 1.0  # it does change


def test_unknown_kind_names_the_choices(graph):
    with pytest.raises(ValueError, match="kind must be one of"):
        make_trajectory("drone", graph, 10, FPS, np.random.default_rng(0))


def test_hermite_quarter_turn_and_smoothing_keep_ends():
    p0, t0 = np.zeros(3), np.array([0.0, 1.0, 0.0])
    p1, t1 = np.array([10.0, 10.0, 0.0]), np.array([1.0, 0.0, 0.0])
    curve = hermite(p0, t0, p1, t1)
    radius = np.linalg.norm(curve[:, :2] - [10.0, 0.0], axis=1)
    assert np.all(np.abs(radius - 10.0) < 1.0)  # close to the circular arc
    line = np.stack([np.linspace(0, 20, 81), np.zeros(81), np.zeros(81)], axis=1)
    np.testing.assert_allclose(smooth(line, 4.0), line, atol=1e-9)  # straight stays straight
