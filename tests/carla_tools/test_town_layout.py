"""Layout, sun and actors of the procedural town (pure numpy, no GL)."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from carla_tools.conditions import check_weather, solar_position
from carla_tools.town.actors import LoopSet, TrafficModel
from carla_tools.town.layout import CURB_HEIGHT, LayoutParams, generate_layout, polygon_contains
from carla_tools.town.sky import lighting


@pytest.fixture(scope="module")
def layout():
    return generate_layout(7, LayoutParams(blocks=(3, 3)))


def test_same_seed_same_layout_other_seed_differs(layout):
    again = generate_layout(7, LayoutParams(blocks=(3, 3)))
    other = generate_layout(8, LayoutParams(blocks=(3, 3)))
    np.testing.assert_array_equal(layout.nodes, again.nodes)
    assert [b.height for b in layout.buildings] == [b.height for b in again.buildings]
    assert not np.allclose(layout.nodes, other.nodes)


def test_lanes_lie_on_their_road_surface(layout):
    for lane in layout.lanes:
        seg = layout.segments[lane.segment]
        wp = lane.waypoints
        assert np.all(wp[:, 2] == 0.0)  # the road surface
        rel = wp[:, :2] - seg.start
        along = rel @ seg.direction
        across = rel @ np.array([seg.direction[1], -seg.direction[0]])
        assert np.all(np.abs(across) < seg.half_width - 0.5 * lane.width + 1e-9)
        assert np.all((along > -1e-9) & (along < seg.length + 1e-9))
        # right-hand traffic: the lane sits to the right of its direction of travel
        assert np.all(np.sign(across) == lane.direction)
        for block in layout.blocks:  # never on a sidewalk or lot
            assert not polygon_contains(block.curb, wp[:, :2], margin=-1e-6).any()


def test_intersections_link_lanes(layout):
    net_lanes = {lane.id: lane for lane in layout.lanes}
    for inter in layout.intersections:
        for lid in inter.incoming:
            end = net_lanes[lid].waypoints[-1, :2]
            assert np.linalg.norm(end - inter.center[:2]) < 25.0
        assert len(inter.incoming) > 0 and len(inter.outgoing) > 0


def test_buildings_stand_on_lots_off_the_road(layout):
    lots = [b.lot for b in layout.blocks]
    for building in layout.buildings:
        assert building.height > CURB_HEIGHT + 2.0
        centre = building.footprint.mean(axis=0)
        assert any(polygon_contains(lot, centre[None], margin=-0.5)[0] for lot in lots)


def test_solar_position_seoul_noon_and_night():
    elevation, azimuth = solar_position(
        datetime(2024, 6, 21, 3, 30, tzinfo=timezone.utc), 37.5665, 126.978
    )
    assert 73.0 < elevation < 77.0  # 90 - 37.6 + 23.4 at solar noon
    assert 160.0 < azimuth < 200.0
    elevation, _ = solar_position(
        datetime(2024, 6, 21, 15, 0, tzinfo=timezone.utc), 37.5665, 126.978
    )
    assert elevation < -20.0


def test_unknown_weather_names_the_choices():
    with pytest.raises(ValueError, match="Did you mean 'fog'"):
        check_weather("fgo")
    assert lighting(30.0, 180.0, "wet").wetness == 1.0


def test_loopset_wraps_and_interpolates():
    square = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]])
    loops = LoopSet([square, square + 100.0])
    xy, yaw = loops.sample(np.array([0, 0, 1]), np.array([5.0, 45.0, 15.0]))
    np.testing.assert_allclose(xy, [[5.0, 0.0], [5.0, 0.0], [110.0, 105.0]])
    np.testing.assert_allclose(yaw, [0.0, 0.0, np.pi / 2])


def test_actors_move_continuously_and_depend_on_time(layout):
    traffic = TrafficModel(layout, seed=7)
    a = traffic.instances(1.0e8, 12.0)
    b = traffic.instances(1.0e8 + 0.1, 12.0)
    later = traffic.instances(1.0e8 + 3600.0, 12.0)
    step = np.linalg.norm(a["car"][:, :2] - b["car"][:, :2], axis=1)
    assert len(a["car"]) > 0 and step.max() < 2.0  # <= 12 m/s over 0.1 s (+ U-turn chords)
    assert not np.allclose(a["car"][:, :2], later["car"][:, :2])
    assert len(traffic.instances(1.0e8, 3.0)["car"]) < len(a["car"])  # quieter at 3 am
    np.testing.assert_array_equal(a["pedestrian"], traffic.instances(1.0e8, 12.0)["pedestrian"])
