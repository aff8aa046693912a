"""RoadGraph: edges, shortest paths, distances and sampling on hand-made streets."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from cityenv.citydb.reader import CityDB
from cityenv.citydb.roadgraph import RoadGraph
from cityenv.citydb.writer import CityDBWriter
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.geodesy import LocalFrame
from cityenv.geometry.pose import Pose


def l_shape() -> RoadGraph:
    """An L: 11 nodes east along y=0 (x = 0..100), then 10 north along x=100 (y = 10..100)."""
    east = [[10.0 * i, 0.0, 2.5] for i in range(11)]
    north = [[100.0, 10.0 * j, 2.5] for j in range(1, 11)]
    return RoadGraph.from_panoramas(np.array(east + north), link_radius_m=0.0, max_step_m=12.0)


def test_traversal_edges_join_consecutive_panoramas():
    g = l_shape()
    assert g.num_nodes == 21 and g.num_edges == 20
    np.testing.assert_allclose(g.lengths, 10.0)
    assert sorted(g.neighbors(10).tolist()) == [9, 11]


def test_link_radius_joins_nearby_panoramas_of_other_traversals():
    positions = np.array([[0.0, 0, 0], [10.0, 0, 0], [0.0, 5, 0], [10.0, 5, 0]])
    g = RoadGraph.from_panoramas(positions, [0, 0, 1, 1], link_radius_m=6.0, max_step_m=12.0)
    assert {tuple(e) for e in g.edges.tolist()} == {(0, 1), (2, 3), (0, 2), (1, 3)}


def test_gap_larger_than_max_step_splits_a_traversal():
    positions = np.array([[0.0, 0, 0], [10.0, 0, 0], [50.0, 0, 0]])
    g = RoadGraph.from_panoramas(positions, link_radius_m=0.0, max_step_m=12.0)
    assert g.edges.tolist() == [[0, 1]]
    with pytest.raises(ValueError, match="reachable"):
        g.shortest_path(0, 2)


def test_shortest_path_and_length():
    g = l_shape()
    path = g.shortest_path(0, 20)
    assert path == list(range(21))
    assert g.path_length(path) == pytest.approx(200.0)
    assert g.distances_from(20)[0] == pytest.approx(200.0)


def test_distances_from_is_cached_per_goal_and_read_only():
    g = l_shape()
    first = g.distances_from(20)
    assert g.distances_from(20) is first and not first.flags.writeable
    for node in range(9):  # eight more goals push the first out of the 8-entry cache
        g.distances_from(node)
    again = g.distances_from(20)
    assert again is not first
    np.testing.assert_array_equal(again, first)


def test_distance_to_goal_is_continuous_along_the_street():
    g = l_shape()
    for x in np.linspace(0.0, 100.0, 41):  # between nodes too: no jump at the midpoints
        assert g.distance_to_goal([x, 0.0, 2.5], 20) == pytest.approx(200.0 - x)
    assert g.distance_to_goal([50.0, 3.0, 2.5], 20) == pytest.approx(153.0)


def test_distance_to_graph_measures_to_edges():
    g = l_shape()
    assert g.distance_to_graph([45.0, 6.0, 0.0]) == pytest.approx(6.0)
    assert g.distance_to_graph([-3.0, -4.0]) == pytest.approx(5.0)
    assert g.nearest_node([98.0, 31.0]) == 13


def test_bounds_and_height():
    g = l_shape()
    lo, hi = g.bounds
    np.testing.assert_allclose(lo, [0.0, 0.0, 2.5])
    np.testing.assert_allclose(hi, [100.0, 100.0, 2.5])
    np.testing.assert_allclose(g.height_at(np.array([[5.0, 1.0], [100.0, 55.0]])), 2.5)


def test_sample_start_goal_respects_the_distance_range():
    g = l_shape()
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = g.sample_start_goal(rng, 50.0, 120.0)
        assert 50.0 <= g.distances_from(a)[b] <= 120.0
    a, b = g.sample_start_goal(np.random.default_rng(1), 500.0, 600.0)  # none that far
    assert g.distances_from(a)[b] == g.distances_from(a).max()


def test_from_citydb(tmp_path):
    camera = PinholeCamera.from_fov(4, 4, 90.0)
    when = datetime(2024, 5, 1, 3, 0, tzinfo=timezone.utc)
    with CityDBWriter(tmp_path / "db", city="t", frame=LocalFrame(37.5, 127.0, 0.0)) as writer:
        for i in range(5):
            position = np.array([10.0 * i, 0.0, 2.5])
            writer.add_panorama(
                panorama_id=f"p{i}",
                images=[np.zeros((4, 4, 3), np.uint8)] * 8,
                depths=[np.ones((4, 4), np.float32)] * 8,
                cameras=camera,
                poses=[Pose.from_heading(position, 45.0 * k) for k in range(8)],
                traversal_id="t0",
                capture_time=when,
            )
    g = RoadGraph.from_citydb(CityDB.open(tmp_path / "db"), link_radius_m=0.0)
    assert g.num_nodes == 5 and g.num_edges == 4
    assert g.shortest_path(0, 4) == [0, 1, 2, 3, 4]
