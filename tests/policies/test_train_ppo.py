"""``python -m policies.train_ppo``: flags, and a PPO smoke run on the tiny town."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from policies.train_ppo import TrainSettings, parse_args, train


def test_flags() -> None:
    s = parse_args(["--steps", "128", "--out", "x", "--seed", "3", "--town-blocks", "1", "1"])
    assert (s.steps, s.out, s.seed, s.town) == (128, Path("x"), 3, {"blocks": (1, 1)})
    assert parse_args([]) == TrainSettings()
    with pytest.raises(SystemExit):
        parse_args(["--size", "32"])  # SB3's CNN needs 36 pixels


def test_smoke_run_saves_and_evaluates(tiny_town: dict[str, Any], tmp_path: Path) -> None:
    from stable_baselines3 import PPO

    settings = TrainSettings(
        steps=32,
        n_steps=32,
        out=tmp_path / "ppo",
        size=36,
        chunk_length=2,
        max_episode_steps=4,
        eval_episodes=1,
        town=tiny_town,
        progress=False,
    )
    results = train(settings)
    assert Path(results["model"]).is_file()
    PPO.load(results["model"], device="cpu")
    saved = json.loads((tmp_path / "ppo" / "results.json").read_text())
    for name in ("ppo", "random"):
        assert 0.0 <= saved[name]["success_rate"] <= 1.0
        assert saved[name]["mean_steps"] <= 4


def test_rewards_given_to_ppo_are_finite() -> None:
    from policies.train_ppo import REWARD_BOUND, _finite_reward

    assert _finite_reward(3.5) == 3.5
    assert _finite_reward(float("-inf")) == -REWARD_BOUND
    assert _finite_reward(float("nan")) == 0.0
