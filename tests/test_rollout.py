"""``python -m cityenv.rollout``: end to end in a subprocess on a tiny town, and its config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from cityenv.config import config_dir
from cityenv.envs.town import TownSpec
from cityenv.errors import ConfigError
from cityenv.rollout import RolloutConfig, load_config, scenario_path
from cityenv.scenario import ScenarioError

SCENARIO = """
name: smoke
start: 0
prompts:
  - {step: 0, prompt: golden sunset}
  - {step: 1, prompt: a flooded street}
action_mode: velocity
max_steps: 3
"""


def _rollout(tmp_path: Path, *overrides: str) -> tuple[Path, dict, list, str]:
    """Run ``python -m cityenv.rollout`` on the smoke scenario in a tiny town at 32 x 32.

    Returns:
        The output folder, the summary, the video's frames and the process's stderr.
    """
    import imageio.v2 as imageio

    scenario = tmp_path / "smoke.yaml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "cityenv.rollout",
        f"scenario={scenario}",
        f"out={out}",
        "width=32",
        "height=32",
        "chunk_length=4",
        "town.blocks=[1,1]",
        "town.size=64",
        "progress=false",
        *overrides,
    ]
    env = {**os.environ, "CITYENV_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    reader = imageio.get_reader(out / "rollout.mp4")
    frames = [frame for frame in reader]
    reader.close()
    return out, summary, frames, done.stderr


def test_rollout_end_to_end(tmp_path: Path) -> None:
    out, summary, frames, _ = _rollout(tmp_path)
    assert summary["scenario"] == "smoke" and summary["action_mode"] == "velocity"
    assert 1 <= summary["steps"] <= 3
    assert summary["frames"] == 1 + 4 * summary["steps"]
    assert summary["resolution"] == [32, 32]
    assert summary["metres_travelled"] > 0
    assert summary["frames_per_s"] > 0 and summary["wall_time_s"] > 0
    assert summary["references_used"]["total"] >= 0
    assert summary["references_used"]["per_step_mean"] >= 0
    assert summary["prompts"][0] == {"step": 0, "prompt": "golden sunset"}
    assert isinstance(summary["success"], bool)
    assert set(summary["timings_s"]) >= {"retrieval", "generate"}
    assert len(frames) == summary["frames"] and frames[0].shape == (32, 32, 3)
    assert (out / "rollout.rrd").stat().st_size > 0
    assert (tmp_path / "cache").is_dir()  # the town was built on first use


def test_rollout_with_the_diffusion_world_model(tmp_path: Path) -> None:
    """The tiny diffusion preset (random weights) through the Hydra overrides of the docs."""
    out, summary, frames, stderr = _rollout(
        tmp_path,
        "world_model=diffusion",
        "world_model_options.preset=tiny",
        "world_model_options.device=cpu",
        "+world_model_options.num_inference_steps=1",  # a model-settings override needs a +
        "max_steps=2",
        "rrd=false",
    )
    assert "random weights of the 'tiny' preset" in stderr
    assert summary["world_model"] == "diffusion"
    assert summary["world_model_options"] == {
        "preset": "tiny",
        "device": "cpu",
        "num_inference_steps": 1,
    }
    assert 1 <= summary["steps"] <= 2
    assert summary["frames"] == 1 + 4 * summary["steps"]
    assert summary["outputs"] == {"summary": "summary.json", "video": "rollout.mp4"}
    assert len(frames) == summary["frames"] and frames[0].shape == (32, 32, 3)
    assert not (out / "rollout.rrd").exists()


def test_default_config_composes(tmp_path: Path) -> None:
    with initialize_config_dir(str(config_dir()), version_base=None):
        cfg = compose("rollout", overrides=[f"out={tmp_path}"])
    config = load_config(cfg)
    assert config == RolloutConfig(
        scenario="town_route",
        out=tmp_path,
        agent="route_follower",
        town=TownSpec(seed=0, blocks=[2, 2], size=256, spacing_m=10.0),
        world_model_options={"path": None, "preset": None, "seed": None, "device": None},
    )
    assert scenario_path(config.scenario) == config_dir() / "scenarios" / "town_route.yaml"


def test_world_model_options_reach_the_env(tmp_path: Path) -> None:
    with initialize_config_dir(str(config_dir()), version_base=None):
        cfg = compose(
            "rollout",
            overrides=[
                f"out={tmp_path}",
                "world_model=diffusion",
                "world_model_options.preset=tiny",
                "+world_model_options.history=2",
            ],
        )
    config = load_config(cfg)
    assert config.world_model == "diffusion"
    assert config.world_model_options == {
        "path": None,
        "preset": "tiny",
        "seed": None,
        "device": None,
        "history": 2,
    }


def test_scenario_names_and_paths(tmp_path: Path) -> None:
    assert scenario_path("town_route") == config_dir() / "scenarios" / "town_route.yaml"
    assert scenario_path("town_route.yaml").name == "town_route.yaml"
    mine = tmp_path / "mine.yaml"
    mine.write_text("name: mine\n")
    assert scenario_path(str(mine)) == mine
    with pytest.raises(ScenarioError, match=r"got 'town_rute'\. Did you mean 'town_route'\?"):
        scenario_path("town_rute")


def test_unknown_config_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"key must be one of .* got 'widht'\. Did you mean"):
        load_config({"scenario": "town_route", "out": str(tmp_path), "widht": 3})
    with pytest.raises(ConfigError, match=r"town key .* got 'sise'\. Did you mean 'size'\?"):
        load_config({"out": str(tmp_path), "town": {"sise": 64}})
    with pytest.raises(ConfigError, match=r"'abc' of type 'str' could not be converted to Integer"):
        load_config({"out": str(tmp_path), "width": "abc"})
    with pytest.raises(ConfigError, match=r"blocks must be a pair \[east, north\]"):
        load_config({"out": str(tmp_path), "town": {"blocks": [1, 1, 1]}})
    with pytest.raises(ScenarioError, match=r"got 'town_rute'\. Did you mean 'town_route'\?"):
        load_config({"out": str(tmp_path), "scenario": "town_rute"})
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("widht=3", r"Could not override 'widht'"),
        ("width=abc", r"Error merging override width=abc"),
        ("town.sise=3", r"Could not override 'town.sise'"),
    ],
)
def test_command_line_overrides_are_checked(tmp_path: Path, override: str, match: str) -> None:
    """The ConfigStore schema makes Hydra refuse unknown keys and wrong types at composition."""
    from hydra.errors import ConfigCompositionException

    with (
        initialize_config_dir(str(config_dir()), version_base=None),
        pytest.raises(ConfigCompositionException, match=match),
    ):
        compose("rollout", overrides=[f"out={tmp_path}", override])


def test_yaml_holds_no_defaults_of_its_own() -> None:
    """configs/rollout.yaml only adds Hydra's settings: RolloutConfig is the one source."""
    import yaml

    data = yaml.safe_load((config_dir() / "rollout.yaml").read_text())
    assert set(data) == {"defaults", "hydra"}
    assert data["defaults"] == ["rollout_schema", "_self_"]


def test_an_unknown_agent_is_named(tmp_path: Path) -> None:
    from cityenv.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match=r"got 'route_folower'\. Did you mean 'route_fo"):
        load_config({"out": str(tmp_path), "agent": "route_folower"})


def test_width_unset_takes_the_models_own_size(tmp_path: Path, monkeypatch) -> None:
    """A saved model that records its 48 x 32 training frames: the rollout runs at that size
    when width and height are unset (the defaults), and the summary records the size used."""
    from cityenv.rollout import rollout
    from cityenv.worldmodel.checkpoint import TrainedOn
    from cityenv.worldmodel.diffusion import DiffusionWorldModel

    monkeypatch.setenv("CITYENV_CACHE", str(tmp_path / "cache"))
    model = DiffusionWorldModel.from_preset("tiny", device="cpu")
    model.trained = TrainedOn(frame_size=(48, 32), chunk_frames=8)
    folder = model.save_pretrained(tmp_path / "wm")
    scenario = tmp_path / "quiet.yaml"
    scenario.write_text("name: quiet\nstart: 0\naction_mode: velocity\nmax_steps: 1\n")
    config = RolloutConfig(
        scenario=str(scenario),
        out=tmp_path / "run",
        town=TownSpec(blocks=[1, 1], size=64),
        world_model="diffusion",
        world_model_options={"path": str(folder), "device": "cpu", "num_inference_steps": 1},
        chunk_length=8,
        rrd=False,
        progress=False,
    )
    assert (config.width, config.height) == (None, None)
    summary = rollout(config)
    assert summary["resolution"] == [48, 32]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["resolution"] == [48, 32]
    import imageio.v2 as imageio

    reader = imageio.get_reader(tmp_path / "run" / "rollout.mp4")
    assert reader.get_data(0).shape == (32, 48, 3)
    reader.close()
