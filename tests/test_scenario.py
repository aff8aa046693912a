"""Scenario YAML (:mod:`cityenv.scenario`): parsing, defaults, prompt schedule, and the errors for
malformed files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cityenv.config import config_dir
from cityenv.geometry.geodesy import LocalFrame
from cityenv.scenario import (
    Location,
    Scenario,
    ScenarioError,
    load_scenario,
    scenario_from_dict,
)

FULL = """
name: demo
description: a test
env_id: CityWorld-Town-v0
start: {xy: [1.0, 2.0], heading_deg: 90}
waypoints:
  - 3
  - [10.0, 20.0]
  - {xy: [5, 6]}
  - {lat: 37.5665, lon: 126.978}
prompts:
  - {step: 20, prompt: a flooded street}
  - {step: 0, prompt: golden sunset}
action_mode: velocity
max_steps: 40
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


def test_full_file_parses(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, FULL))
    assert s.name == "demo" and s.action_mode == "velocity" and s.max_steps == 40
    assert s.start == Location(xy=(1.0, 2.0), heading_deg=90.0)
    assert s.waypoints[0] == Location(node=3)
    assert s.waypoints[1] == Location(xy=(10.0, 20.0))
    assert s.waypoints[3] == Location(latlon=(37.5665, 126.978))
    assert [p.step for p in s.prompts] == [0, 20]  # sorted


def test_defaults_and_round_trip() -> None:
    s = scenario_from_dict({"name": "free"})
    assert s.env_id == "CityWorld-Town-v0" and s.action_mode == "discrete"
    assert s.start is None and s.waypoints == () and s.prompt_at(5) is None
    full = scenario_from_dict({"name": "x", "start": 4, "waypoints": [[1, 2]], "prompts": "fog"})
    assert scenario_from_dict(full.to_dict()) == full


def test_prompt_schedule(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, FULL))
    assert s.prompt_at(0) == "golden sunset"
    assert s.prompt_at(19) == "golden sunset"
    assert s.prompt_at(20) == s.prompt_at(99) == "a flooded street"
    assert s.prompt_change(20) == "a flooded street"
    assert s.prompt_change(21) is None


def test_location_positions() -> None:
    nodes = np.array([[0.0, 0.0, 2.5], [10.0, 5.0, 2.5]])
    frame = LocalFrame(37.5665, 126.978)
    assert np.allclose(Location(node=1).position(nodes), [10.0, 5.0, 2.5])
    assert np.allclose(Location(xy=(3.0, 4.0)).position(nodes), [3.0, 4.0, 0.0])
    assert np.allclose(Location(latlon=(37.5665, 126.978)).position(nodes, frame), 0.0, atol=1e-6)
    with pytest.raises(ScenarioError, match=r"node 7 is not a road-graph node.*\[0, 2\)"):
        Location(node=7).position(nodes)
    with pytest.raises(ScenarioError, match="needs the city's LocalFrame"):
        Location(latlon=(37.5, 127.0)).position(nodes)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([1, 2], r"expected a mapping of scenario keys, got list"),
        ({"waypoints": []}, r"missing key 'name'"),
        ({"name": "a", "speed": 3}, r"unknown key\(s\) \['speed'\]; expected some of"),
        ({"name": ""}, r"name: expected a non-empty string, got str ''"),
        ({"name": "a", "action_mode": "fly"}, r"action_mode: expected one of \['discrete', "),
        ({"name": "a", "max_steps": 0}, r"max_steps: expected an integer >= 1, got int 0"),
        ({"name": "a", "max_steps": 2.5}, r"max_steps: expected an integer >= 1, got float"),
        ({"name": "a", "start": "home"}, r"start: expected a node id, an \[x, y\] pair"),
        ({"name": "a", "start": {"xy": [1]}}, r"start: xy: expected an \[x, y\] pair"),
        ({"name": "a", "start": {"lat": 1.0}}, r"expected exactly one of 'node', 'xy' or 'lat'"),
        ({"name": "a", "start": {"node": 1, "xy": [1, 2]}}, r"expected exactly one of"),
        ({"name": "a", "start": {"lat": 95, "lon": 0}}, r"lat: expected degrees in \[-90, 90\]"),
        ({"name": "a", "start": {"node": -1}}, r"start: node: expected an integer >= 0"),
        ({"name": "a", "start": {"xy": [0, 0], "yaw": 3}}, r"unknown key\(s\) \['yaw'\]"),
        ({"name": "a", "waypoints": {"xy": [0, 0]}}, r"waypoints: expected a list, got dict"),
        ({"name": "a", "waypoints": [{"xy": [0, 0], "heading_deg": 3}]}, r"\['heading_deg'\]"),
        (
            {"name": "a", "waypoints": [[0, float("nan")]]},
            r"waypoints\[0\]\[1\]: expected a finite",
        ),
        ({"name": "a", "prompts": [{"step": 0}]}, r"prompts\[0\]: expected a mapping with keys"),
        (
            {"name": "a", "prompts": [{"step": -1, "prompt": "x"}]},
            r"step: expected an integer >= 0",
        ),
        (
            {"name": "a", "prompts": [{"step": 1, "prompt": "x"}, {"step": 1, "prompt": "y"}]},
            r"prompts: expected distinct steps, got steps \[1, 1\]",
        ),
        ({"name": "a", "prompts": {"step": 1}}, r"prompts: expected a list of \{step, prompt\}"),
    ],
)
def test_malformed_scenarios_say_what_was_expected(data: object, match: str) -> None:
    with pytest.raises(ScenarioError, match=match):
        scenario_from_dict(data)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"does not exist; expected a YAML file"):
        load_scenario(tmp_path / "missing.yaml")
    with pytest.raises(ScenarioError, match=r"expected YAML, could not parse it"):
        load_scenario(write(tmp_path, "name: [unclosed"))
    with pytest.raises(ScenarioError, match=r"scenario\.yaml: unknown key"):
        load_scenario(write(tmp_path, "name: a\nbogus: 1\n"))
    assert issubclass(ScenarioError, ValueError)


@pytest.mark.parametrize("path", sorted((config_dir() / "scenarios").glob("*.yaml")))
def test_shipped_scenarios_load(path: Path) -> None:
    assert isinstance(load_scenario(path), Scenario)
