"""``python -m policies.transfer``: trained in the world model, tested in the world (and back).

``CityWorld-Town-v0`` renders frames with the world model; ``CityWorld-TownTrue-v0`` is the same
environment (task, spaces, reward) with the town's true renders. This report trains one PPO agent
in each (or takes saved ones), evaluates both agents in both environments on the same held-out
goals, next to the random explorer and the route follower, and gives the transfer gaps:

- model -> world: success of the world-model agent in the true town minus its success in the
  world model (0 = what was learnt in the model holds in the world);
- world -> model: success of the true-render agent in the world model minus its success in the
  true town (how far the model's frames are from what the agent learnt to read).

Written into ``out``: ``transfer.json`` and ``transfer.md`` (the table). docs/agents.md explains
how to read it. Examples::

    python -m policies.transfer                                        # 12 min each way
    python -m policies.transfer model_agent=runs/ppo-1h/ppo_agent.zip train.time_limit_min=20

Every key is in :class:`TransferConfig` (``configs/transfer.yaml``); ``train.*`` are the keys of
:class:`~policies.train_ppo.TrainPPOConfig` used for both trainings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cityenv.config import config_dir
from cityenv.errors import ConfigError, unknown_name
from policies.train_ppo import TrainPPOConfig, evaluate_agent, train

__all__ = ["TransferConfig", "load_config", "main", "transfer"]

log = logging.getLogger(__name__)

MODEL_ENV = "CityWorld-Town-v0"
TRUE_ENV = "CityWorld-TownTrue-v0"


def _short_training() -> TrainPPOConfig:
    return TrainPPOConfig(num_envs=2, time_limit_min=12.0, eval_episodes=10, progress=False)


@dataclass
class TransferConfig:
    """What :func:`transfer` runs (Hydra schema ``transfer_schema``).

    Attributes:
        out: Output folder (each training in a subfolder).
        train: The training and evaluation settings of both agents (``out`` and ``env_id`` are
            set here; ``steps`` / ``time_limit_min`` is the budget of each).
        model_agent: A saved agent trained in the world model; ``None`` = train one.
        true_agent: A saved agent trained in the true renders; ``None`` = train one.
    """

    out: Path = Path("outputs/transfer-${now:%Y%m%d-%H%M%S}")
    train: TrainPPOConfig = field(default_factory=_short_training)
    model_agent: str | None = None
    true_agent: str | None = None


ConfigStore.instance().store(name="transfer_schema", node=TransferConfig)


def load_config(cfg: DictConfig | dict[str, Any]) -> TransferConfig:
    """The typed config of a Hydra config or a plain mapping.

    Raises:
        ConfigError: If a key is unknown ("Did you mean ...?") or a value has the wrong type.
    """
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    data.pop("hydra", None)
    names = [f.name for f in dataclasses.fields(TransferConfig)]
    for key in data:
        if key not in names:
            raise unknown_name("transfer config key", key, names, error=ConfigError)
    try:
        config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TransferConfig), data))
    except OmegaConfBaseException as err:
        raise ConfigError(f"transfer config: {err}".strip()) from None
    assert isinstance(config, TransferConfig)
    return config


def _agent(config: TransferConfig, env_id: str, given: str | None, name: str) -> Path:
    """A saved agent: ``given``, or one trained in ``env_id`` into ``<out>/<name>``."""
    if given is not None:
        return Path(given)
    settings = dataclasses.replace(config.train, env_id=env_id, out=config.out / name)
    return Path(train(settings, evaluate_after=False)["model"])


def transfer(config: TransferConfig) -> dict[str, Any]:
    """Train (or take) both agents, evaluate each in both environments, write the report."""
    config.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    agents = {
        "model": _agent(config, MODEL_ENV, config.model_agent, "trained-in-model"),
        "true": _agent(config, TRUE_ENV, config.true_agent, "trained-in-truth"),
    }
    cells: dict[str, dict[str, Any]] = {}
    for trained, path in agents.items():
        for tested, env_id in (("model", MODEL_ENV), ("true", TRUE_ENV)):
            # the baselines do not depend on the agent: once per environment, on the same goals
            first = trained == "model"
            cell = evaluate_agent(config.train, path, env_id, with_baselines=first)
            if not first:
                cell.update({k: cells[f"model->{tested}"][k] for k in ("random", "route_follower")})
            cells[f"{trained}->{tested}"] = cell
    success = {k: v["ppo"]["success_rate"] for k, v in cells.items()}
    report = {
        "train": json.loads(json.dumps(dataclasses.asdict(config.train), default=str)),
        "agents": {k: str(v) for k, v in agents.items()},
        "evaluations": cells,
        "gap_model_to_world": success["model->true"] - success["model->model"],
        "gap_world_to_model": success["true->model"] - success["true->true"],
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    (config.out / "transfer.json").write_text(json.dumps(report, indent=2) + "\n")
    (config.out / "transfer.md").write_text(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report's table: success rate (mean return) of each policy in each environment."""
    lines = [
        "| agent trained in | tested in | PPO | random explorer | route follower |",
        "| --- | --- | --- | --- | --- |",
    ]
    names = {"model": "world model (warp)", "true": "true renders"}
    for key, cell in report["evaluations"].items():
        trained, tested = key.split("->")
        row = [names[trained], names[tested]]
        for policy in ("ppo", "random", "route_follower"):
            figures = cell[policy]
            row.append(f"{figures['success_rate']:.0%} ({figures['mean_return']:.1f})")
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        f"Transfer gap, model -> world: {report['gap_model_to_world']:+.0%}; "
        f"world -> model: {report['gap_world_to_model']:+.0%} (success rate, "
        f"{report['evaluations']['model->model']['ppo']['episodes']} held-out episodes each).",
    ]
    return "\n".join(lines) + "\n"


@hydra.main(version_base=None, config_path=str(config_dir()), config_name="transfer")
def main(cfg: DictConfig) -> None:
    """Run the report and log the gaps."""
    config = load_config(cfg)
    report = transfer(config)
    log.info(
        "transfer gap model->world %+.0f%%, world->model %+.0f%% -> %s",
        100 * report["gap_model_to_world"],
        100 * report["gap_world_to_model"],
        config.out / "transfer.md",
    )


if __name__ == "__main__":
    main()
