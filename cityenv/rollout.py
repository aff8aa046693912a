"""``python -m cityenv.rollout [key=value ...]``: play a scenario and record it (Hydra).

Runs a scenario (default ``configs/scenarios/town_route.yaml``: a scripted route of more than
200 m through the built-in town with text prompts) with an agent of :data:`cityenv.agents.AGENTS`
(``agent=route_follower``, provided by ``policies``), and writes into ``out`` (default
``outputs/rollout-<timestamp>``):

- ``rollout.mp4``: every generated frame (H.264, ``fps`` frames per second);
- ``rollout.rrd``: a Rerun recording (``rerun rollout.rrd``): poses, frames, references, warps;
- ``summary.json``: frames, metres travelled, frames/s, references used, prompts, success, times.

The config is the typed :class:`RolloutConfig` (Hydra's ConfigStore holds it; an unknown key
or a value of the wrong type is refused). The first run builds the town's street-view database
(about a minute, cached). Examples::

    python -m cityenv.rollout
    python -m cityenv.rollout width=128 height=128 out=/tmp/run max_steps=10
    python -m cityenv.rollout scenario=my_route.yaml action_mode=velocity rrd=false
    python -m cityenv.rollout world_model=diffusion   # the shipped town model, at its 128 x 128
    python -m cityenv.rollout world_model=diffusion world_model_options.preset=tiny chunk_length=8

A typed error (a bad key, a missing file, a scenario that does not fit) prints its message and
exits with status 2, leaving no empty run folder; ``--verbose`` or ``HYDRA_FULL_ERROR=1`` shows
the traceback (:mod:`cityenv.cli`). See ``docs/rollout.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cityenv.agents import AGENTS
from cityenv.cli import take_verbose_flag, typed_errors
from cityenv.config import config_dir
from cityenv.envs.town import TownSpec
from cityenv.errors import ConfigError, unknown_name
from cityenv.scenario import (
    Scenario,
    ScenarioError,
    ScenarioResult,
    load_scenario,
    run_scenario,
)

log = logging.getLogger("cityenv.rollout")

__all__ = [
    "RolloutConfig",
    "VideoWriter",
    "clean_failed_run",
    "load_config",
    "rollout",
    "scenario_path",
]


DEFAULT_OUT = "outputs/rollout-${now:%Y%m%d-%H%M%S}"
"""The default run folder; Hydra resolves ``${now:...}`` when the run starts."""


def _default_world_model_options() -> dict[str, Any]:
    # Listed so that `world_model_options.preset=tiny` needs no `+` on the command line.
    return {"path": None, "preset": None, "seed": None, "device": None}


@dataclass
class RolloutConfig:
    """What :func:`rollout` runs: the one source of the rollout's defaults.

    Registered in Hydra's ConfigStore as ``rollout_schema``; ``configs/rollout.yaml`` only adds
    Hydra's own settings on top, so every key and default is here and every command-line
    override is checked against these types.

    Attributes:
        scenario: A name in ``configs/scenarios/`` or a path to a scenario YAML file.
        out: Output folder (default :data:`DEFAULT_OUT`, ``outputs/rollout-<timestamp>``).
        agent: The agent that drives (a name of :data:`cityenv.agents.AGENTS`;
            ``route_follower`` comes from ``policies``).
        env_id: Gymnasium id; ``None`` = the scenario's.
        city_db: CityDB folder; ``None`` = the env's own.
        town: The built-in town's database (used by ``CityWorld-Town-v0`` only).
        world_model: The env's world model: ``warp`` or ``diffusion`` (docs/worldmodel.md).
        world_model_options: Keyword arguments of the world model's factory (the env's
            ``world_model_options``; for ``diffusion``: ``path`` of a saved model, ``preset``
            of random weights, ``seed``, ``device``, and overrides of the model's settings,
            which need a ``+`` on the command line); ``None`` values are left out.
        width: Frame width, pixels; ``None`` = the env's: the world model's own size (a
            trained diffusion model's training size, 128 for the shipped town model), else 256.
        height: Frame height, pixels; ``None`` as for ``width``.
        fov_deg: Horizontal field of view, degrees.
        chunk_length: Frames per environment step.
        fps: Camera frames per second (and the video's).
        action_mode: ``discrete``, ``velocity`` or ``trajectory``; ``None`` = the scenario's.
        max_steps: Environment steps, >= 1; ``None`` = the scenario's. A prompt the scenario
            schedules at or after it is never set, with a warning.
        seed: Seed of ``env.reset``.
        video: Write ``rollout.mp4``.
        rrd: Write ``rollout.rrd``.
        progress: Show progress bars.
    """

    scenario: str = "town_route"
    # A str, not a Path: OmegaConf interpolates only strings, and a Path default would reach
    # Hydra's run.dir with a literal "${now:...}" (its log file then cannot be opened).
    out: Path = DEFAULT_OUT  # type: ignore[assignment]
    agent: str = "route_follower"
    env_id: str | None = None
    city_db: str | None = None
    town: TownSpec = field(default_factory=TownSpec)
    world_model: str = "warp"
    world_model_options: dict[str, Any] = field(default_factory=_default_world_model_options)
    width: int | None = None
    height: int | None = None
    fov_deg: float = 90.0
    chunk_length: int = 12
    fps: float = 10.0
    action_mode: str | None = None
    max_steps: int | None = None
    seed: int = 0
    video: bool = True
    rrd: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        # Built directly (not through Hydra), ``out`` may still be the default's string.
        if isinstance(self.out, str):
            self.out = Path(_resolve_now(self.out))


def _resolve_now(text: str) -> str:
    """``text`` with each ``${now:FORMAT}`` replaced by the local time in that format."""
    return re.sub(r"\$\{now:([^}]*)\}", lambda m: time.strftime(m.group(1)), text)


ConfigStore.instance().store(name="rollout_schema", node=RolloutConfig)


def scenario_path(name: str | Path) -> Path:
    """The scenario file for a path or a name in ``configs/scenarios/``.

    Raises:
        ScenarioError: If it is neither an existing file nor a known name (with "did you mean").
    """
    path = Path(name)
    if path.is_file():
        return path
    folder = config_dir() / "scenarios"
    named = folder / f"{path.stem if path.suffix in ('.yaml', '.yml') else name}.yaml"
    if named.is_file():
        return named
    raise unknown_name(
        "scenario",
        str(name),
        [p.stem for p in folder.glob("*.yaml")],
        error=ScenarioError,
        advice="Give a name in configs/scenarios/ or a path to a scenario YAML file.",
    )


def load_config(cfg: DictConfig | Mapping[str, Any]) -> RolloutConfig:
    """The typed config of a Hydra config or a plain mapping (the only place that reads one).

    Keys and types are checked against :class:`RolloutConfig` (Hydra has checked them already
    for a command line); the scenario and the agent must exist.

    Raises:
        ConfigError: If a key is unknown ("Did you mean ...?"), a value has the wrong type, or
            ``max_steps`` is below 1.
        ScenarioError: If the scenario is neither a file nor a known name.
        UnknownNameError: If no agent is registered under ``agent``.
    """
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    data.pop("hydra", None)
    _check_keys(data, RolloutConfig, "rollout config key")
    # Outside Hydra no `now` resolver is registered: resolve the default's timestamp here.
    if isinstance(data.get("out", DEFAULT_OUT), str):
        data["out"] = _resolve_now(data.get("out", DEFAULT_OUT))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RolloutConfig), data)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"rollout config: {err}".strip()) from None
    assert isinstance(config, RolloutConfig)
    if config.max_steps is not None and config.max_steps < 1:
        raise ConfigError(
            f"rollout config: max_steps must be a number of environment steps >= 1, or null for "
            f"the scenario's own, got {config.max_steps}."
        )
    scenario_path(config.scenario)  # fail before anything is built
    AGENTS.get(config.agent)
    return config


def _check_keys(data: Mapping[str, Any], cls: type, kind: str) -> None:
    """Raise :class:`ConfigError` for a key of ``data`` that is not a field of dataclass ``cls``.

    Nested dataclass fields are checked too (``town``).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in fields:
            raise unknown_name(kind, key, fields, error=ConfigError)
        nested = fields[key].default_factory
        if dataclasses.is_dataclass(nested) and isinstance(value, Mapping):
            _check_keys(value, nested, f"{kind.replace(' key', '')} {key} key")


# --- video ------------------------------------------------------------------------------------
class VideoWriter:
    """Writes uint8 frames to an H.264 MP4 (imageio's ffmpeg plugin, ``imageio-ffmpeg``).

    Args:
        path: The ``.mp4`` file.
        fps: Frames per second.

    Attributes:
        count: Frames written so far.
    """

    def __init__(self, path: str | Path, fps: float) -> None:
        import imageio.v2 as imageio

        self.path = Path(path)
        # macro_block_size=2: yuv420p needs even sizes only; imageio's default (16) would
        # rescale small frames.
        self._writer = imageio.get_writer(
            self.path, fps=fps, codec="libx264", quality=7, macro_block_size=2
        )
        self.count = 0

    def append(self, frames: np.ndarray) -> None:
        """Append frames, uint8 ``(T, H, W, 3)`` or one ``(H, W, 3)``."""
        frames = np.asarray(frames, np.uint8)
        for frame in frames if frames.ndim == 4 else frames[None]:
            self._writer.append_data(frame)
            self.count += 1

    def close(self) -> None:
        """Finish the file."""
        self._writer.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the run ----------------------------------------------------------------------------------
def _resolved(config: RolloutConfig, scenario: Scenario) -> Scenario:
    """The scenario with the config's overrides applied."""
    changes: dict[str, Any] = {}
    if config.env_id:
        changes["env_id"] = config.env_id
    if config.action_mode:
        changes["action_mode"] = config.action_mode
    if config.max_steps is not None:
        changes["max_steps"] = config.max_steps
    resolved = dataclasses.replace(scenario, **changes)
    if resolved.env_id not in gym.registry:
        raise unknown_name(
            "env_id",
            resolved.env_id,
            [k for k in gym.registry if k.startswith("CityWorld")],
            error=ConfigError,
            advice="Set env_id= (or the scenario's env_id) to a registered id.",
        )
    _warn_late_prompts(resolved)
    return resolved


def _warn_late_prompts(scenario: Scenario) -> None:
    """Warn about prompt changes scheduled at or after the last step: they would never be set."""
    late = [c for c in scenario.prompts if c.step >= scenario.max_steps]
    for change in late:
        warnings.warn(
            f"the prompt {change.prompt!r} is scheduled at step {change.step}, but the episode "
            f"has max_steps={scenario.max_steps} (a change at step s is set before step s + 1), "
            "so it is never used; raise max_steps or move the prompt earlier.",
            stacklevel=3,
        )


def make_env(config: RolloutConfig, scenario: Scenario) -> gym.Env:
    """The environment of a rollout, wrapped in a Rerun recorder when ``config.rrd``."""
    kwargs: dict[str, Any] = {
        "width": config.width,
        "height": config.height,
        "fov_deg": config.fov_deg,
        "chunk_length": config.chunk_length,
        "fps": config.fps,
        "action_mode": scenario.action_mode,
        "world_model": config.world_model,
    }
    options = _world_model_options(config)
    if options:
        kwargs["world_model_options"] = options
    if config.city_db:
        kwargs["city_db"] = config.city_db
    elif gym.spec(scenario.env_id).kwargs.get("city") == "town":
        kwargs["town"] = {**dataclasses.asdict(config.town), "progress": config.progress}
    env = gym.make(scenario.env_id, max_episode_steps=scenario.max_steps, **kwargs)
    if config.rrd:
        from cityenv.viz import RerunRecorder

        env = RerunRecorder(env, config.out / "rollout.rrd")
    return env


def _world_model_options(config: RolloutConfig) -> dict[str, Any]:
    """The world model's options without the unset (``None``) ones."""
    return {k: v for k, v in config.world_model_options.items() if v is not None}


def summarize(
    config: RolloutConfig,
    scenario: Scenario,
    result: ScenarioResult,
    times: dict[str, float],
    resolution: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The JSON summary of a rollout; ``resolution`` is the ``(width, height)`` the env used
    (default: the config's)."""
    refs = np.asarray(result.references_used, np.float64)
    outputs = {"summary": "summary.json"}
    if config.video:
        outputs["video"] = "rollout.mp4"
    if config.rrd:
        outputs["rrd"] = "rollout.rrd"
    return {
        "scenario": scenario.name,
        "scenario_file": str(scenario_path(config.scenario)),
        "agent": config.agent,
        "env_id": scenario.env_id,
        "action_mode": scenario.action_mode,
        "world_model": config.world_model,
        "world_model_options": _world_model_options(config),
        "resolution": list(resolution or (config.width, config.height)),
        "chunk_length": config.chunk_length,
        "fps": config.fps,
        "steps": result.steps,
        "frames": result.frames,
        "metres_travelled": round(result.metres_travelled, 3),
        "route_length_m": round(result.route_length_m, 3),
        "success": result.success,
        "distance_to_goal_m": _finite_or_none(result.distance_to_goal_m),
        "references_used": {
            "total": int(refs.sum()),
            "per_step_mean": float(refs.mean()) if refs.size else 0.0,
        },
        "prompts": [{"step": s, "prompt": p} for s, p in result.prompts],
        "frames_per_s": result.frames / times["rollout_s"] if times["rollout_s"] > 0 else None,
        "wall_time_s": times["wall_s"],
        "setup_s": times["setup_s"],
        "rollout_s": times["rollout_s"],
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "seed": config.seed,
        "outputs": outputs,
    }


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def rollout(config: RolloutConfig) -> dict[str, Any]:
    """Run a scenario, write the video, the recording and ``summary.json``; return the summary.

    On an error, what this run wrote into ``config.out`` is removed, and the folder too when
    nothing else is left in it (a folder that held files before is kept with them).

    Raises:
        ConfigError: If the env id is not registered.
        CityEnvError: Any typed error of the scenario, the environment or the world model.
    """
    before = _entries(config.out)
    try:
        return _rollout(config)
    except BaseException:
        clean_failed_run(config.out, before)
        raise


def _rollout(config: RolloutConfig) -> dict[str, Any]:
    start = time.perf_counter()
    scenario = _resolved(config, load_scenario(scenario_path(config.scenario)))
    config.out.mkdir(parents=True, exist_ok=True)
    env = make_env(config, scenario)
    camera = env.unwrapped.camera  # the size used: the config's, or the world model's own
    setup_s = time.perf_counter() - start
    video = VideoWriter(config.out / "rollout.mp4", config.fps) if config.video else None
    try:
        result = run_scenario(
            env,
            scenario,
            seed=config.seed,
            agent=config.agent,
            on_frames=video.append if video is not None else None,
            progress=config.progress,
        )
    finally:
        if video is not None:
            video.close()
        env.close()
    wall_s = time.perf_counter() - start
    times = {"wall_s": wall_s, "setup_s": setup_s, "rollout_s": wall_s - setup_s}
    summary = summarize(config, scenario, result, times, (camera.width, camera.height))
    (config.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# --- a failed run leaves nothing behind -------------------------------------------------------
HYDRA_FILES = frozenset({".hydra", "rollout.log"})
"""What Hydra writes into the run folder before the rollout starts."""


def _entries(folder: Path) -> set[str]:
    return set(os.listdir(folder)) if folder.is_dir() else set()


def clean_failed_run(folder: Path, before: set[str]) -> None:
    """Remove what a failed run added to ``folder``, and the folder if only Hydra's files are left.

    Args:
        folder: The run folder.
        before: Its entries when the run began (kept: they are not this run's).
    """
    for name in _entries(folder) - before - HYDRA_FILES:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    if folder.is_dir() and _entries(folder) <= HYDRA_FILES:
        shutil.rmtree(folder, ignore_errors=True)


@hydra.main(version_base=None, config_path=str(config_dir()), config_name="rollout")
def main(cfg: DictConfig) -> None:
    """Run the configured scenario and log where the outputs went (errors: see cityenv.cli)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    before = _entries(run_dir) - HYDRA_FILES
    with typed_errors(cleanup=lambda: clean_failed_run(run_dir, before)):
        config = load_config(cfg)
        summary = rollout(config)
    log.info(
        "%s: %d frames, %.0f m travelled, %.1f frames/s, success=%s -> %s",
        summary["scenario"],
        summary["frames"],
        summary["metres_travelled"],
        summary["frames_per_s"] or 0.0,
        summary["success"],
        config.out,
    )


if __name__ == "__main__":
    take_verbose_flag()
    main()
