"""``python -m policies.train_ppo``: train a Stable-Baselines3 PPO agent in CityWorld-Town-v0.

A small demonstration, sized for a laptop CPU: low-resolution frames, a few thousand steps. It
saves the agent (``<out>/ppo_cityworld.zip``) and prints its navigation success rate beside that of
the random explorer. Examples::

    python -m policies.train_ppo                          # 4096 steps, 64 x 64 frames
    python -m policies.train_ppo --steps 20000 --out runs/ppo --eval-episodes 20

The agent sees the last frame and the goal vector in the camera frame (``MultiInputPolicy``: a CNN
for the frame, an MLP for the goal).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

try:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
except ImportError as err:  # Stable-Baselines3 is the `rl` extra
    raise ImportError(
        f"policies.train_ppo trains with Stable-Baselines3, got none importable ({err}); "
        "install the extra with pip install 'cityenv[rl]'."
    ) from err

from policies.random_explorer import RandomExplorer

__all__ = ["TrainSettings", "evaluate", "make_env", "train"]

REWARD_BOUND = 50.0
"""Largest reward magnitude passed to PPO (a step's progress is metres, plus a 10 bonus)."""

OBSERVATION_KEYS = ("frames", "goal")
"""What the agent sees: the newest frame and the goal vector in the camera frame."""


@dataclass(frozen=True)
class TrainSettings:
    """What :func:`train` runs.

    Attributes:
        steps: PPO environment steps (each step is one chunk of frames).
        out: Folder for the saved agent and ``results.json``.
        seed: Seed of PPO, of the environments and of the random explorer.
        size: Frame width and height, pixels (36 at least: SB3's CNN shrinks 36 to 1).
        chunk_length: Frames per step.
        max_episode_steps: Steps before an episode is truncated.
        eval_episodes: Episodes per policy in the evaluation.
        n_steps: PPO rollout length per update.
        env_id: Gymnasium id.
        town: Options of the built-in town's database (``blocks``, ``size``, ...).
        progress: Show a progress bar.
    """

    steps: int = 4096
    out: Path = Path("outputs/ppo")
    seed: int = 0
    size: int = 64
    chunk_length: int = 4
    max_episode_steps: int = 64
    eval_episodes: int = 10
    n_steps: int = 256
    env_id: str = "CityWorld-Town-v0"
    town: dict[str, Any] = field(default_factory=dict)
    progress: bool = True


def make_env(settings: TrainSettings) -> gym.Env:
    """The training environment: low resolution, last frame + goal vector, discrete actions."""
    import cityenv  # noqa: F401  (registers the CityWorld ids)

    extra: dict[str, Any] = {}
    if gym.spec(settings.env_id).kwargs.get("city") == "town":
        extra["town"] = {"progress": settings.progress, **settings.town}
    env = gym.make(
        settings.env_id,
        max_episode_steps=settings.max_episode_steps,
        **extra,
        width=settings.size,
        height=settings.size,
        chunk_length=settings.chunk_length,
        action_mode="discrete",
        task="navigation",
        observe="last",
    )
    env = gym.wrappers.FilterObservation(env, list(OBSERVATION_KEYS))
    # One non-finite reward turns PPO's weights into NaN. The navigation reward is -inf when the
    # camera wanders onto streets the road graph does not join to the goal's; clip it to a
    # finite penalty (a no-op for finite rewards, which stay well inside the bounds).
    return gym.wrappers.TransformReward(env, _finite_reward)


def _finite_reward(reward: float) -> float:
    """``reward`` clipped to ``[-REWARD_BOUND, REWARD_BOUND]``, NaN as 0."""
    return float(np.clip(np.nan_to_num(float(reward), nan=0.0), -REWARD_BOUND, REWARD_BOUND))


def evaluate(env: gym.Env, policy: Any, episodes: int, seed: int) -> dict[str, float]:
    """Success rate and mean return of a policy over seeded episodes.

    Args:
        env: The environment (as from :func:`make_env`).
        policy: Anything with SB3's ``predict(obs, deterministic=...) -> (action, state)``.
        episodes: Number of episodes; episode ``i`` resets with seed ``seed + i``.
        seed: Seed of the first episode.

    Returns:
        ``{"success_rate", "mean_return", "mean_steps"}``.
    """
    successes, returns, lengths = [], [], []
    for i in range(episodes):
        obs, info = env.reset(seed=seed + i)
        done, total, steps = False, 0.0, 0
        while not done:
            action, _ = policy.predict(obs, deterministic=True)
            action = int(np.asarray(action).reshape(()))
            obs, reward, terminated, truncated, info = env.step(action)
            total, steps, done = total + float(reward), steps + 1, terminated or truncated
        successes.append(bool(info.get("is_success", False)))
        returns.append(total)
        lengths.append(steps)
    return {
        "success_rate": float(np.mean(successes)) if successes else 0.0,
        "mean_return": float(np.mean(returns)) if returns else 0.0,
        "mean_steps": float(np.mean(lengths)) if lengths else 0.0,
    }


class _ProgressBar(BaseCallback):
    """A tqdm progress bar (SB3's own needs ``rich``, which cityenv does not depend on)."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.bar = tqdm(total=total, desc="PPO", unit="step")

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        return True


def train(settings: TrainSettings) -> dict[str, Any]:
    """Train PPO, save it, evaluate it and the random explorer.

    Returns:
        The results written to ``<out>/results.json``: settings, timings and both evaluations.
    """
    settings.out.mkdir(parents=True, exist_ok=True)
    env = make_env(settings)
    start = time.perf_counter()
    model = PPO(
        "MultiInputPolicy",
        env,
        n_steps=min(settings.n_steps, settings.steps),
        batch_size=min(64, settings.n_steps, settings.steps),
        seed=settings.seed,
        verbose=0,
        device="cpu",
    )
    callback = _ProgressBar(settings.steps) if settings.progress else None
    model.learn(total_timesteps=settings.steps, callback=callback)
    if callback is not None:
        callback.bar.close()
    train_s = time.perf_counter() - start
    model_path = settings.out / "ppo_cityworld.zip"
    model.save(model_path)
    eval_seed = settings.seed + 10_000  # episodes PPO did not train on
    ppo = evaluate(env, model, settings.eval_episodes, eval_seed)
    explorer = RandomExplorer(env.action_space, seed=settings.seed)
    random = evaluate(env, explorer, settings.eval_episodes, eval_seed)
    env.close()
    results = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        "model": str(model_path),
        "train_seconds": train_s,
        "ppo": ppo,
        "random": random,
    }
    (settings.out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def parse_args(argv: Sequence[str] | None = None) -> TrainSettings:
    """Settings from command-line flags (``--help`` lists them)."""
    d = TrainSettings()
    p = argparse.ArgumentParser(
        prog="python -m policies.train_ppo", description=__doc__.split("\n")[0]
    )
    p.add_argument("--steps", type=int, default=d.steps, help="PPO environment steps")
    p.add_argument("--out", type=Path, default=d.out, help="folder for the agent and results")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--size", type=int, default=d.size, help="frame width and height (>= 36)")
    p.add_argument("--chunk-length", type=int, default=d.chunk_length, help="frames per step")
    p.add_argument("--max-episode-steps", type=int, default=d.max_episode_steps)
    p.add_argument("--eval-episodes", type=int, default=d.eval_episodes)
    p.add_argument("--n-steps", type=int, default=d.n_steps, help="PPO rollout length")
    p.add_argument("--env-id", default=d.env_id)
    p.add_argument(
        "--town-blocks",
        type=int,
        nargs=2,
        default=None,
        metavar=("EAST", "NORTH"),
        help="blocks of the built-in town (default 2 2)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    a = p.parse_args(argv)
    if a.size < 36:
        p.error(f"--size must be at least 36 (SB3's NatureCNN needs it), got {a.size}")
    return TrainSettings(
        steps=a.steps,
        out=a.out,
        seed=a.seed,
        size=a.size,
        chunk_length=a.chunk_length,
        max_episode_steps=a.max_episode_steps,
        eval_episodes=a.eval_episodes,
        n_steps=a.n_steps,
        env_id=a.env_id,
        town={"blocks": tuple(a.town_blocks)} if a.town_blocks else {},
        progress=not a.no_progress,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Train, save, evaluate and print both success rates."""
    settings = parse_args(argv)
    results = train(settings)
    n = settings.eval_episodes
    print(f"saved {results['model']} ({results['train_seconds']:.0f} s of training)")
    print(
        f"success rate over {n} episodes: PPO {results['ppo']['success_rate']:.0%}, "
        f"random explorer {results['random']['success_rate']:.0%}"
    )


if __name__ == "__main__":
    main()
