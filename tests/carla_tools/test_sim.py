"""The simulator interface: backend registry, name errors and the procedural town's conformance."""

from __future__ import annotations

import socket
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from carla_tools.backends import BACKENDS, make_simulator
from carla_tools.conditions import WEATHERS, check_weather
from carla_tools.sim import Render, RoadNetwork, Simulator
from cityenv.errors import UnknownNameError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose

NOON = datetime(2024, 5, 1, 3, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def town():
    with make_simulator("town", seed=3, blocks=(2, 2)) as world:
        yield world


def test_make_simulator_town_is_a_simulator(town):
    assert isinstance(town, Simulator)
    assert set(BACKENDS) == {"town", "carla"}
    assert set(WEATHERS) == {"clear", "overcast", "wet", "fog"}


def test_unknown_backend_says_did_you_mean():
    with pytest.raises(UnknownNameError, match=r"Did you mean 'town'\?"):
        make_simulator("tonw")
    with pytest.raises(ValueError, match=r"backend must be one of \['carla', 'town'\]"):
        make_simulator("unity")


def test_a_registered_backend_opens_by_name():
    made = []

    def factory(**options):
        made.append(options)
        return make_simulator("town", **options)

    BACKENDS.register("test-town", factory)
    try:
        with make_simulator("test-town", seed=2, blocks=(1, 1)) as world:
            assert isinstance(world, Simulator) and world.seed == 2
        assert made == [{"seed": 2, "blocks": (1, 1)}]
    finally:
        BACKENDS.unregister("test-town")
    assert "test-town" not in BACKENDS


def test_check_weather_names_the_choices():
    assert check_weather("wet") == "wet"
    with pytest.raises(
        UnknownNameError, match=r"weather must be one of \[.*'wet'\], got 'snow'\.$"
    ):
        check_weather("snow")


def test_unknown_weather_says_did_you_mean(town):
    with pytest.raises(UnknownNameError, match=r"Did you mean 'fog'\?"):
        town.set_weather("fgo")
    assert town.weather in WEATHERS


def test_road_network_is_the_shared_type(town):
    network = town.road_network()
    assert isinstance(network, RoadNetwork) and network.frame == town.frame
    assert network.lanes and network.intersections
    for lane in network.lanes[:5]:
        assert lane.waypoints.ndim == 2 and lane.waypoints.shape[1] == 3 and lane.width > 0
        assert -1 <= lane.entry < len(network.intersections)
    for junction in network.intersections:
        assert junction.center.shape == (3,)
        assert all(0 <= i < len(network.lanes) for i in junction.incoming + junction.outgoing)
    assert network.waypoints().shape[1] == 3


def test_render_returns_a_render(town):
    lane = next(lane for lane in town.road_network().lanes if lane.entry >= 0)
    d = lane.waypoints[2] - lane.waypoints[1]
    pose = Pose.from_heading(lane.waypoints[1] + [0, 0, 1.6], np.degrees(np.arctan2(d[0], d[1])))
    town.set_time(NOON)
    town.set_weather("clear")
    out = town.render(PinholeCamera.from_fov(64, 48, 90.0), pose)
    assert isinstance(out, Render)
    assert out.rgb.shape == (48, 64, 3) and out.rgb.dtype == np.uint8
    assert out.depth.shape == (48, 64) and out.depth.dtype == np.float32
    assert out.dynamic.shape == (48, 64) and out.dynamic.dtype == np.bool_
    assert (out.depth > 0).any() and (out.depth >= 0).all()


def test_time_moves_with_advance(town):
    town.set_time(NOON)
    town.advance(1.5)
    assert town.time == NOON + timedelta(seconds=1.5)


def test_carla_backend_without_the_client_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "carla", None)  # makes `import carla` fail
    with pytest.raises(ImportError, match=r'pip install "cityenv\[carla\]"'):
        make_simulator("carla")


def test_carla_backend_without_a_server_says_where_it_looked():
    pytest.importorskip("carla", reason="carla client not installed")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionError, match=f"no CARLA server answered at 127.0.0.1:{port}"):
        make_simulator("carla", host="127.0.0.1", port=port)
