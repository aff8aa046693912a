"""``python -m policies.train_ppo``: its typed config, and a real Hydra run on the tiny town."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cityenv.errors import ConfigError
from policies.train_ppo import TrainPPOConfig, load_config

REPO = Path(__file__).resolve().parents[2]


def test_config_defaults_and_checks() -> None:
    config = load_config({"steps": 128, "town": {"blocks": [1, 1]}, "vec": "sync"})
    assert (config.steps, config.town.blocks, config.vec) == (128, [1, 1], "sync")
    assert load_config({}).num_envs == TrainPPOConfig().num_envs
    with pytest.raises(ConfigError, match="Did you mean 'steps'"):
        load_config({"stepz": 3})
    with pytest.raises(ConfigError, match="at least 36 pixels .* got 32"):
        load_config({"size": 32})
    with pytest.raises(ConfigError, match="vec"):
        load_config({"vec": "threads"})
    with pytest.raises(ConfigError, match="Did you mean 'route_direction'"):
        load_config({"agent_keys": ["frames", "route_dir"]})


def test_hydra_run_trains_saves_logs_and_evaluates(town_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "ppo"
    overrides = [
        f"out={out}",
        "steps=64",
        "num_envs=2",
        "vec=sync",
        "n_steps=32",
        "batch_size=32",
        "n_epochs=1",
        "size=36",
        "chunk_length=2",
        "max_episode_steps=4",
        "min_goal_m=10",
        "max_goal_m=40",
        "eval_episodes=1",
        "town.blocks=[1,1]",
        "town.size=64",
        "progress=false",
    ]
    env = {**os.environ, "CITYENV_CACHE": str(town_cache), "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-m", "policies.train_ppo", *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    assert results["steps_trained"] >= 64
    for name in ("ppo", "random", "route_follower"):
        assert 0.0 <= results[name]["success_rate"] <= 1.0
        assert results[name]["mean_steps"] <= 4
    curve = (out / "learning_curve.csv").read_text().splitlines()
    assert curve[0] == "steps,seconds,episode_return,episode_length,success" and len(curve) > 1
    assert (out / "learning_curve.png").stat().st_size > 0
    assert list((out / "tb").rglob("events.out.tfevents.*"))
    from stable_baselines3 import PPO

    PPO.load(out / "ppo_agent.zip", device="cpu")
