"""``python -m policies.transfer``: both agents, both environments, the gaps and the table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cityenv.errors import ConfigError
from policies.transfer import load_config, transfer


def test_transfer_trains_both_ways_and_reports_the_gaps(
    tiny_town: dict[str, Any], tmp_path: Path
) -> None:
    train = {
        "steps": 32,
        "num_envs": 1,
        "vec": "sync",
        "n_steps": 32,
        "batch_size": 32,
        "n_epochs": 1,
        "size": 36,
        "chunk_length": 2,
        "max_episode_steps": 3,
        "min_goal_m": 10.0,
        "max_goal_m": 40.0,
        "eval_episodes": 1,
        "time_limit_min": None,
        "town": {k: v for k, v in tiny_town.items() if k != "progress"},
        "progress": False,
    }
    config = load_config({"out": str(tmp_path / "t"), "train": train})
    report = transfer(config)
    assert set(report["evaluations"]) == {
        "model->model",
        "model->true",
        "true->model",
        "true->true",
    }
    for cell in report["evaluations"].values():
        assert cell["ppo"]["episodes"] == 1 and cell["ppo"]["mean_steps"] <= 3
    gap = report["evaluations"]["model->true"]["ppo"]["success_rate"]
    gap -= report["evaluations"]["model->model"]["ppo"]["success_rate"]
    assert report["gap_model_to_world"] == pytest.approx(gap)
    saved = json.loads((tmp_path / "t" / "transfer.json").read_text())
    assert saved["agents"]["true"].endswith("trained-in-truth/ppo_agent.zip")
    table = (tmp_path / "t" / "transfer.md").read_text()
    assert "| true renders | world model (warp) |" in table and "Transfer gap" in table
    with pytest.raises(ConfigError, match="Did you mean 'model_agent'"):
        load_config({"model_agnt": "x.zip"})
