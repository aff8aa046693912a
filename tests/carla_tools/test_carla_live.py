"""The CARLA backend against a running CARLA 0.9.16 server.

Runs when ``CARLA_HOST`` (and optionally ``CARLA_PORT``, default 2000, and ``CARLA_TOWN``) name a
server that answers; skipped with the reason otherwise. Example::

    CARLA_HOST=localhost pytest -m live tests/carla_tools/test_carla_live.py
"""

from __future__ import annotations

import importlib.util
import os
from datetime import timedelta

import numpy as np
import pytest

from carla_tools.sim import WEATHERS, Render, RoadNetwork, Simulator
from cityenv.errors import UnknownNameError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose

pytestmark = pytest.mark.live

HOST = os.environ.get("CARLA_HOST", "")
PORT = int(os.environ.get("CARLA_PORT", "2000"))


def _skip_reason() -> str | None:
    if not HOST:
        return "set CARLA_HOST to a running CARLA 0.9.16 server"
    if importlib.util.find_spec("carla") is None:
        return "carla client not installed"
    from carla_tools.carla_backend import server_answers

    if not server_answers(HOST, PORT):
        return f"no CARLA server answered at {HOST}:{PORT}"
    return None


@pytest.fixture(scope="module")
def world():
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    from carla_tools.carla_backend import CarlaSimulator

    town = os.environ.get("CARLA_TOWN") or None
    with CarlaSimulator(HOST, PORT, town=town, seed=0, vehicles=10, walkers=10) as sim:
        yield sim


def _lane_pose(world: Simulator, height: float = 1.6, pitch: float = 0.0) -> Pose:
    lane = max(world.road_network().lanes, key=lambda lane: len(lane.waypoints))
    i = len(lane.waypoints) // 2
    d = lane.waypoints[i + 1] - lane.waypoints[i]
    heading = float(np.degrees(np.arctan2(d[0], d[1])))
    return Pose.from_heading(lane.waypoints[i] + [0, 0, height], heading, pitch)


def test_connects_with_a_road_network(world):
    assert isinstance(world, Simulator)
    network = world.road_network()
    assert isinstance(network, RoadNetwork) and network.frame == world.frame
    assert len(network.lanes) > 0
    assert np.isfinite(network.waypoints()).all()


def test_render_shapes_and_depth(world):
    out = world.render(PinholeCamera.from_fov(128, 96, 90.0), _lane_pose(world))
    assert isinstance(out, Render)
    assert out.rgb.shape == (96, 128, 3) and out.rgb.dtype == np.uint8
    assert out.depth.shape == (96, 128) and out.depth.dtype == np.float32
    assert out.dynamic.shape == (96, 128) and out.dynamic.dtype == np.bool_
    assert (out.depth > 0).any() and (out.depth >= 0).all()


def test_looking_down_sees_the_road_at_the_camera_height(world):
    camera = PinholeCamera.from_fov(64, 64, 60.0)
    out = world.render(camera, _lane_pose(world, height=10.0, pitch=-90.0))
    # z-depth at the centre is the height above the road (unless a car stands there)
    assert out.depth[30:34, 30:34].mean() == pytest.approx(10.0, abs=0.8)


def test_weather_and_time(world):
    for name in WEATHERS:
        world.set_weather(name)
        assert world.weather == name
    with pytest.raises(UnknownNameError, match="Did you mean 'fog'"):
        world.set_weather("fgo")
    start = world.time
    world.advance(0.5)
    assert world.time == start + timedelta(seconds=0.5)
    world.set_time(start)  # earlier: traffic respawned for that time
    assert world.time == start
