"""``python -m policies.train_ppo``: train a PPO agent to navigate the built-in town.

Stable-Baselines3 PPO (``MultiInputPolicy``: a CNN for the newest frame, an MLP for goal and
route directions, distance, speed and the last action; :mod:`policies.navigation`) on
``num_envs`` environments stepped by ``gym.make_vec`` (one worker process each with
``vec=async``). Training goals come from 80 % of the road graph's nodes (``goals=train``); the
evaluation uses the other 20 % (``goals=heldout``), next to the random explorer and the route
follower on the very same episodes. Written into ``out``:

- ``ppo_agent.zip`` (the agent; reload with ``PPO.load`` or :func:`load_agent`, which checks the
  observation space), ``results.json`` (config, wall times, the three evaluations);
- ``learning_curve.csv`` (one row per finished training episode: steps, seconds, return,
  success) and ``learning_curve.png``; ``tb/`` (TensorBoard: ``tensorboard --logdir <out>/tb``).

Examples::

    python -m policies.train_ppo                                  # the full run (about 1 hour)
    python -m policies.train_ppo steps=20000 num_envs=2 out=runs/ppo-short
    python -m policies.train_ppo town.blocks=[1,1] steps=2048 eval_episodes=5

Every key, its type and default is in :class:`TrainPPOConfig` (``configs/train_ppo.yaml``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm.auto import tqdm

try:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import VecMonitor
except ImportError as err:  # Stable-Baselines3 is the `rl` extra
    raise ImportError(
        f"policies.train_ppo trains with Stable-Baselines3, got none importable ({err}); "
        "install the extra with pip install 'cityenv[rl]'."
    ) from err

from cityenv.config import config_dir
from cityenv.envs.town import TownSpec
from cityenv.errors import ConfigError, unknown_name
from policies.agent_file import load_agent
from policies.navigation import (
    AGENT_KEYS,
    agent_wrappers,
    baselines,
    evaluate,
    make_agent_env,
    sb3_policy,
)
from policies.vec import GymVecEnv, make_vec

__all__ = ["TrainPPOConfig", "env_kwargs", "load_config", "main", "train"]

log = logging.getLogger(__name__)


@dataclass
class TrainPPOConfig:
    """What :func:`train` runs: the one source of its defaults (Hydra schema ``train_ppo_schema``).

    Attributes:
        out: Output folder.
        steps: PPO environment steps, all environments together.
        seed: Seed of PPO, of the environments and of the baselines.
        env_id: Gymnasium id trained in.
        eval_env_id: Gymnasium id evaluated in; ``None`` = ``env_id``.
        town: The built-in town's database.
        world_model: The env's world model (``warp``: fast; ``diffusion`` needs a GPU).
        size: Frame width and height, pixels (36 at least: SB3's CNN shrinks 36 to 1).
        chunk_length: Frames per step (4 at 10 fps: 0.4 s, 2 m straight ahead).
        max_episode_steps: Steps before an episode is truncated.
        min_goal_m: Smallest road distance of a sampled goal, metres.
        max_goal_m: Largest road distance of a sampled goal, metres.
        num_envs: Environments stepped together.
        vec: ``async`` (a worker process per environment) or ``sync`` (one process).
        n_steps: PPO rollout length per environment and update.
        batch_size: PPO minibatch size.
        n_epochs: PPO epochs per update.
        learning_rate: Adam learning rate.
        gamma: Discount factor.
        ent_coef: Entropy bonus.
        cnn_dim: Features of the frame's CNN.
        agent_keys: Observation keys the agent sees (drop ``route_direction`` to make it
            find the streets in its frames: the transfer report then measures the frames).
        reward_scale: Factor on the rewards PPO sees (the evaluation reports raw returns).
        eval_episodes: Episodes per policy on held-out goals.
        time_limit_min: Stop training after this many minutes of wall time, whatever ``steps``
            says (``None``: no limit); the run's real steps are in ``results.json``.
        torch_threads: Threads of torch in the learner (0 = torch's default).
        progress: Show progress bars.
    """

    out: Path = Path("outputs/ppo-${now:%Y%m%d-%H%M%S}")
    steps: int = 120_000
    seed: int = 0
    env_id: str = "CityWorld-Town-v0"
    eval_env_id: str | None = None
    town: TownSpec = field(default_factory=TownSpec)
    world_model: str = "warp"
    size: int = 64
    chunk_length: int = 4
    max_episode_steps: int = 100
    min_goal_m: float = 30.0
    max_goal_m: float = 100.0
    num_envs: int = 4
    vec: str = "async"
    n_steps: int = 128
    batch_size: int = 256
    n_epochs: int = 4
    learning_rate: float = 3e-4
    gamma: float = 0.98
    ent_coef: float = 0.02
    cnn_dim: int = 64
    agent_keys: list[str] = field(default_factory=lambda: list(AGENT_KEYS))
    reward_scale: float = 0.1
    eval_episodes: int = 50
    time_limit_min: float | None = None
    torch_threads: int = 1
    progress: bool = True


ConfigStore.instance().store(name="train_ppo_schema", node=TrainPPOConfig)


def load_config(cfg: DictConfig | dict[str, Any]) -> TrainPPOConfig:
    """The typed config of a Hydra config or a plain mapping.

    Raises:
        ConfigError: If a key is unknown ("Did you mean ...?"), a value has the wrong type, or
            ``size`` / ``vec`` / ``num_envs`` is out of range.
    """
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    data.pop("hydra", None)
    names = [f.name for f in dataclasses.fields(TrainPPOConfig)]
    for key in data:
        if key not in names:
            raise unknown_name("train_ppo config key", key, names, error=ConfigError)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainPPOConfig), data)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"train_ppo config: {err}".strip()) from None
    assert isinstance(config, TrainPPOConfig)
    _check(config)
    return config


def _check(config: TrainPPOConfig) -> None:
    if config.size < 36:
        raise ConfigError(
            f"train_ppo size must be at least 36 pixels (SB3's NatureCNN needs it), got "
            f"{config.size}; use size=64."
        )
    if config.vec not in ("async", "sync"):
        raise unknown_name("vec", config.vec, ["async", "sync"], error=ConfigError)
    known = [*AGENT_KEYS, "pose", "geo", "goal"]
    for key in config.agent_keys:
        if key not in known:
            raise unknown_name("agent_keys entry", key, known, error=ConfigError)
    if config.num_envs < 1:
        raise ConfigError(f"train_ppo num_envs must be >= 1, got {config.num_envs}.")


def env_kwargs(config: TrainPPOConfig, goals: str) -> dict[str, Any]:
    """Keyword arguments of the environments (``goals``: ``train`` or ``heldout``)."""
    kwargs: dict[str, Any] = {
        "world_model": config.world_model,
        "width": config.size,
        "height": config.size,
        "chunk_length": config.chunk_length,
        "action_mode": "discrete",
        "task": "navigation",
        "observe": "last",
        "task_options": {
            "min_goal_m": config.min_goal_m,
            "max_goal_m": config.max_goal_m,
            "goals": goals,
        },
    }
    if gym.spec(config.env_id).kwargs.get("city") in ("town", None):
        kwargs["town"] = {**dataclasses.asdict(config.town), "progress": config.progress}
    return kwargs


class LearningCurve(BaseCallback):
    """Writes one CSV row per finished training episode and logs the success rate.

    Args:
        path: The CSV file.
        total: Steps of the run (for the progress bar).
        progress: Show a tqdm bar.
        time_limit_s: Stop training after this many seconds (``None``: never).
    """

    FIELDS = ("steps", "seconds", "episode_return", "episode_length", "success")

    def __init__(
        self, path: Path, total: int, progress: bool, time_limit_s: float | None = None
    ) -> None:
        super().__init__()
        self.time_limit_s = time_limit_s
        self.file = path.open("w", newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerow(self.FIELDS)
        self.start = time.perf_counter()
        self.recent: list[bool] = []
        self.bar = tqdm(total=total, desc="PPO", unit="step", disable=not progress)

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        for info in self.locals["infos"]:
            episode = info.get("episode")
            if episode is None:
                continue
            success = bool(info.get("is_success", False))
            self.recent = [*self.recent[-49:], success]
            seconds = round(time.perf_counter() - self.start, 1)
            row = (self.num_timesteps, seconds, episode["r"], episode["l"], int(success))
            self.writer.writerow(row)
        self.file.flush()
        elapsed = time.perf_counter() - self.start
        return self.time_limit_s is None or elapsed < self.time_limit_s

    def _on_rollout_end(self) -> None:
        if self.recent:
            self.logger.record("rollout/success_rate_50", float(np.mean(self.recent)))
            self.bar.set_postfix(success=f"{np.mean(self.recent):.0%}")

    def close(self) -> None:
        self.file.close()
        self.bar.close()


def train(config: TrainPPOConfig, *, evaluate_after: bool = True) -> dict[str, Any]:
    """Train PPO, save it, evaluate it and both baselines on held-out goals.

    Args:
        config: What to run.
        evaluate_after: Evaluate on held-out goals (``False``: the caller evaluates; the
            transfer report does, in two environments).

    Returns:
        What is written to ``<out>/results.json``.
    """
    import torch

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    config.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    wrap = partial(agent_wrappers, reward_scale=config.reward_scale, keys=config.agent_keys)
    venv = make_vec(
        config.env_id,
        config.num_envs,
        mode=config.vec,
        wrappers=[wrap],
        max_episode_steps=config.max_episode_steps,
        **env_kwargs(config, "train"),
    )
    env = VecMonitor(GymVecEnv(venv), info_keywords=("is_success",))
    env.seed(config.seed)
    model = PPO(
        "MultiInputPolicy",
        env,
        n_steps=config.n_steps,
        batch_size=config.batch_size,
        n_epochs=config.n_epochs,
        learning_rate=config.learning_rate,
        gamma=config.gamma,
        ent_coef=config.ent_coef,
        policy_kwargs={"features_extractor_kwargs": {"cnn_output_dim": config.cnn_dim}},
        tensorboard_log=str(config.out / "tb"),
        seed=config.seed,
        verbose=0,
        device="cpu",
    )
    limit = None if config.time_limit_min is None else 60.0 * config.time_limit_min
    curve = LearningCurve(config.out / "learning_curve.csv", config.steps, config.progress, limit)
    try:
        model.learn(total_timesteps=config.steps, callback=curve, tb_log_name="ppo")
    finally:
        curve.close()
        env.close()
    train_s = time.perf_counter() - start
    model_path = config.out / "ppo_agent.zip"
    model.save(model_path)
    plot_learning_curve(config.out / "learning_curve.csv", config.out / "learning_curve.png")
    evaluation = evaluate_agent(config, model_path) if evaluate_after else {}
    results = {
        "config": _jsonable(dataclasses.asdict(config)),
        "model": str(model_path),
        "train_seconds": round(train_s, 1),
        "steps_trained": int(model.num_timesteps),
        "steps_per_second": round(model.num_timesteps / train_s, 2),
        **evaluation,
    }
    (config.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def evaluate_agent(
    config: TrainPPOConfig,
    model_path: Path,
    env_id: str | None = None,
    *,
    with_baselines: bool = True,
) -> dict[str, Any]:
    """PPO, the random explorer and the route follower on the same held-out-goal episodes.

    Args:
        config: The run's config (``eval_episodes``, sizes, goals).
        model_path: The saved agent.
        env_id: Where to evaluate; ``None`` = ``config.eval_env_id or config.env_id``.
        with_baselines: Also evaluate the random explorer and the route follower.

    Returns:
        ``{"eval_env_id", "eval_seconds", "ppo", "random", "route_follower"}``, each policy's
        :func:`~policies.navigation.evaluate` figures.
    """
    env_id = env_id or config.eval_env_id or config.env_id
    env = make_agent_env(
        env_id,
        max_episode_steps=config.max_episode_steps,
        keys=config.agent_keys,
        **env_kwargs(dataclasses.replace(config, env_id=env_id), "heldout"),
    )
    start = time.perf_counter()
    try:
        model = load_agent(model_path, env)
        seed = config.seed + 10_000  # episodes (starts, goals) training never reset to
        ppo = evaluate(env, sb3_policy(model), config.eval_episodes, seed)
        others = baselines(env, config.eval_episodes, seed) if with_baselines else {}
    finally:
        env.close()
    seconds = round(time.perf_counter() - start, 1)
    return {"eval_env_id": env_id, "eval_seconds": seconds, "ppo": ppo, **others}


def plot_learning_curve(csv_path: Path, png_path: Path, window: int = 50) -> None:
    """Success rate and return over the last ``window`` training episodes against steps."""
    from cityenv.eval.plots import pyplot

    rows = np.atleast_2d(np.genfromtxt(csv_path, delimiter=",", skip_header=1))
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    if rows.size:
        steps, returns, success = rows[:, 0], rows[:, 2], rows[:, 4]
        kernel = np.ones(min(window, len(rows))) / min(window, len(rows))
        ax1.plot(steps[len(kernel) - 1 :], np.convolve(success, kernel, "valid"))
        ax2.plot(steps[len(kernel) - 1 :], np.convolve(returns, kernel, "valid"))
    ax1.set(xlabel="environment steps", ylabel=f"success (last {window} episodes)", ylim=(0, 1))
    ax2.set(xlabel="environment steps", ylabel=f"return x reward_scale (last {window})")
    fig.suptitle("PPO in CityWorld-Town-v0 (training goals)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(data, default=str))


@hydra.main(version_base=None, config_path=str(config_dir()), config_name="train_ppo")
def main(cfg: DictConfig) -> None:
    """Train, save, evaluate and log the three success rates."""
    config = load_config(cfg)
    results = train(config)
    log.info(
        "saved %s (%.0f s of training, %.1f steps/s); success on %d held-out goals: PPO %.0f%%, "
        "random %.0f%%, route follower %.0f%%",
        results["model"],
        results["train_seconds"],
        results["steps_per_second"],
        config.eval_episodes,
        100 * results["ppo"]["success_rate"],
        100 * results["random"]["success_rate"],
        100 * results["route_follower"]["success_rate"],
    )


if __name__ == "__main__":
    main()
