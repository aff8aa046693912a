"""Ground-truth renders: the registry, the conditions table and the town's renderer."""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path

import numpy as np
import pytest

from carla_tools.conditions import local_solar_hour, solar_position
from carla_tools.eval_render import TownGroundTruth, town_renderer
from carla_tools.generate.captions import caption
from carla_tools.town.town import SEOUL
from cityenv.envs.town import TownSpec
from cityenv.errors import ConfigError, ShapeMismatchError, UnknownNameError
from cityenv.eval.render import (
    CONDITIONS,
    GROUND_TRUTH_RENDERERS,
    get_condition,
    open_renderer,
    render_condition,
)
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose, Trajectory

ROOT = Path(__file__).resolve().parents[2]
CAMERA = PinholeCamera.from_fov(64, 48, 90.0)


@pytest.fixture(scope="module")
def registered():
    """The town renderer registered by hand, as the entry point does once installed."""
    previous = GROUND_TRUTH_RENDERERS._items.get("town")
    GROUND_TRUTH_RENDERERS.register("town", town_renderer, replace=True)
    yield
    GROUND_TRUTH_RENDERERS.unregister("town")
    if previous is not None:
        GROUND_TRUTH_RENDERERS.register("town", previous)


@pytest.fixture(scope="module")
def renderer(registered):
    with contextlib.closing(open_renderer("town", {"seed": 0, "blocks": [2, 2]})) as r:
        yield r


@pytest.fixture(scope="module")
def trajectory(renderer):
    """Five frames down the middle of a lane, 1 m apart."""
    lane = next(
        lane
        for lane in renderer.simulator.road_network().lanes
        if lane.entry >= 0 and lane.exit >= 0 and len(lane.waypoints) > 10
    )
    i = len(lane.waypoints) // 3
    d = lane.waypoints[i + 1] - lane.waypoints[i]
    d /= np.linalg.norm(d)
    heading = float(np.degrees(np.arctan2(d[0], d[1])))
    poses = [Pose.from_heading(lane.waypoints[i] + k * d + [0, 0, 1.6], heading) for k in range(5)]
    return Trajectory.from_poses(poses, fps=10.0)


def _luminance(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float64) @ [0.299, 0.587, 0.114]


def _local_contrast(frames: np.ndarray) -> float:
    """Mean absolute luminance step between neighbouring pixels: edges and texture.

    Not the global standard deviation, which fog raises: its bright haze over a dark road is
    one large gradient from top to bottom while every edge in the scene fades.
    """
    y = _luminance(frames)
    return float(np.abs(np.diff(y, axis=1)).mean() + np.abs(np.diff(y, axis=2)).mean())


def test_the_entry_point_is_declared_and_names_the_town_renderer():
    import tomllib  # Python 3.11+, as in tests/test_architecture.py

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    target = project["entry-points"]["cityenv.renderers"]["town"]
    module, name = target.split(":")
    assert getattr(importlib.import_module(module), name) is town_renderer
    assert any(dep.startswith("pycolmap>=") for dep in project["dependencies"])


def test_night_is_darker_and_fog_flatter_than_noon(renderer, trajectory):
    noon, noon_dynamic = render_condition(renderer, trajectory, CAMERA, "clear_noon")
    night, _ = render_condition(renderer, trajectory, CAMERA, "night")
    fog, _ = render_condition(renderer, trajectory, CAMERA, get_condition("fog"))
    assert noon.shape == (5, 48, 64, 3) and noon.dtype == np.uint8
    assert noon_dynamic.shape == (5, 48, 64) and noon_dynamic.dtype == bool
    assert _luminance(night).mean() < 0.5 * _luminance(noon).mean()
    assert _local_contrast(fog) < 0.7 * _local_contrast(noon)


def test_the_same_condition_renders_the_same_frames(renderer, trajectory):
    first = render_condition(renderer, trajectory, CAMERA, "wet")
    second = render_condition(renderer, trajectory, CAMERA, "wet")
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_town_renderer_opens_the_town_of_the_database_spec(registered):
    with contextlib.closing(town_renderer(TownSpec(seed=3, blocks=[1, 2]))) as r:
        assert isinstance(r, TownGroundTruth)
        assert r.simulator.seed == 3 and r.spec.blocks == [1, 2]
    with pytest.raises(ConfigError, match="Did you mean 'seed'"):
        town_renderer({"sed": 1})


def test_unknown_names_say_did_you_mean(registered, renderer, trajectory):
    with pytest.raises(UnknownNameError, match="Did you mean 'night'"):
        get_condition("nigth")
    with pytest.raises(UnknownNameError, match="Did you mean 'sunset'"):
        render_condition(renderer, trajectory, CAMERA, "sunset!")
    with pytest.raises(UnknownNameError, match="Did you mean 'town'"):
        open_renderer("tonw")


def test_a_renderer_that_breaks_the_protocol_is_caught(trajectory):
    class Broken:
        def render(self, trajectory, camera, *, time, weather):
            n = len(trajectory)
            return np.zeros((n, camera.height, camera.width, 3)), np.zeros((n, 1, 1), bool)

    with pytest.raises(ShapeMismatchError, match=r"uint8 frames of shape \(5, 48, 64, 3\)"):
        render_condition(Broken(), trajectory, CAMERA, "fog")


@pytest.mark.parametrize("name", sorted(CONDITIONS))
def test_captions_are_the_clip_captions_of_the_condition(name):
    cond = CONDITIONS[name]
    elevation, _ = solar_position(cond.time, SEOUL.lat, SEOUL.lon)
    hour = local_solar_hour(cond.time, SEOUL.lon)
    written = caption("vehicle", cond.weather, elevation, hour, np.zeros(3))
    assert written == f"{cond.caption}, heading north"
    assert cond.caption.endswith(cond.phrase)


def test_the_conditions_are_the_six_of_the_issue():
    assert sorted(CONDITIONS) == ["clear_noon", "fog", "night", "overcast", "sunset", "wet"]
    assert len({(c.time, c.weather) for c in CONDITIONS.values()}) == 6
