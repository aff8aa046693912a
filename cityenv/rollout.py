"""``python -m cityenv.rollout [key=value ...]``: play a scenario and record it (Hydra).

Runs a scenario (default ``configs/scenarios/town_route.yaml``: a scripted route of more than
200 m through the built-in town with text prompts) with the route follower, and writes into
``out`` (default ``outputs/rollout-<timestamp>``):

- ``rollout.mp4``: every generated frame (H.264, ``fps`` frames per second);
- ``rollout.rrd``: a Rerun recording (``rerun rollout.rrd``): poses, frames, references, warps;
- ``summary.json``: frames, metres travelled, frames/s, references used, prompts, success, times.

The first run builds the town's street-view database (about a minute, cached). Examples::

    python -m cityenv.rollout
    python -m cityenv.rollout width=128 height=128 out=/tmp/run max_steps=10
    python -m cityenv.rollout scenario=my_route.yaml action_mode=velocity rrd=false
    python -m cityenv.rollout world_model=diffusion world_model_options.preset=tiny chunk_length=8

See ``docs/rollout.md``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from cityenv.config import config_dir
from policies.scenario import Scenario, ScenarioError, ScenarioResult, load_scenario, run_scenario

log = logging.getLogger("cityenv.rollout")

__all__ = ["RolloutSettings", "VideoWriter", "rollout", "scenario_path", "settings_from_config"]


@dataclass(frozen=True)
class RolloutSettings:
    """What :func:`rollout` runs (``configs/rollout.yaml`` documents every field).

    Attributes:
        scenario: Scenario YAML file.
        out: Output folder.
        env_id: Gymnasium id; ``None`` = the scenario's.
        city_db: CityDB folder; ``None`` = the env's own.
        town: Options of the built-in town's database (``seed``, ``blocks``, ``size``,
            ``spacing_m``); used by ``CityWorld-Town-v0`` only.
        world_model: The env's world model name.
        world_model_options: Keyword arguments of the world model's factory (the env's
            ``world_model_options``; for ``diffusion``: ``path``, ``preset``, ``seed``,
            ``device`` and ``RolloutSettings`` overrides); ``None`` values are left out.
        width: Frame width, pixels.
        height: Frame height, pixels.
        fov_deg: Horizontal field of view, degrees.
        chunk_length: Frames per environment step.
        fps: Camera frames per second (and the video's).
        action_mode: ``discrete``, ``velocity`` or ``trajectory``; ``None`` = the scenario's.
        max_steps: Environment steps; ``None`` = the scenario's.
        seed: Seed of ``env.reset``.
        video: Write ``rollout.mp4``.
        rrd: Write ``rollout.rrd``.
        progress: Show progress bars.
    """

    scenario: Path
    out: Path
    env_id: str | None = None
    city_db: str | None = None
    town: dict[str, Any] = dataclasses.field(default_factory=dict)
    world_model: str = "warp"
    world_model_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    width: int = 256
    height: int = 256
    fov_deg: float = 90.0
    chunk_length: int = 12
    fps: float = 10.0
    action_mode: str | None = None
    max_steps: int | None = None
    seed: int = 0
    video: bool = True
    rrd: bool = True
    progress: bool = True


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
    known = sorted(p.stem for p in folder.glob("*.yaml"))
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ScenarioError(
        f"scenario must be a YAML file or one of {known} (configs/scenarios/), got {str(name)!r}."
        + hint
    )


def settings_from_config(cfg: DictConfig | dict[str, Any]) -> RolloutSettings:
    """Typed settings from the Hydra config (the only place that reads it)."""
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    c.pop("hydra", None)
    fields = {f.name for f in dataclasses.fields(RolloutSettings)}
    unknown = sorted(set(c) - fields)
    if unknown:
        raise ValueError(f"rollout config keys must be among {sorted(fields)}, got {unknown}.")
    c["scenario"] = scenario_path(c["scenario"])
    c["out"] = Path(c["out"])
    return RolloutSettings(**c)


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
def _resolved(settings: RolloutSettings, scenario: Scenario) -> Scenario:
    """The scenario with the settings' overrides applied."""
    changes: dict[str, Any] = {}
    if settings.env_id:
        changes["env_id"] = settings.env_id
    if settings.action_mode:
        changes["action_mode"] = settings.action_mode
    if settings.max_steps:
        changes["max_steps"] = int(settings.max_steps)
    return dataclasses.replace(scenario, **changes)


def make_env(settings: RolloutSettings, scenario: Scenario) -> gym.Env:
    """The environment of a rollout, wrapped in a Rerun recorder when ``settings.rrd``."""

    kwargs: dict[str, Any] = {
        "width": settings.width,
        "height": settings.height,
        "fov_deg": settings.fov_deg,
        "chunk_length": settings.chunk_length,
        "fps": settings.fps,
        "action_mode": scenario.action_mode,
        "world_model": settings.world_model,
    }
    options = _world_model_options(settings)
    if options:
        kwargs["world_model_options"] = options
    if settings.city_db:
        kwargs["city_db"] = settings.city_db
    elif gym.spec(scenario.env_id).kwargs.get("city") == "town":
        kwargs["town"] = {**settings.town, "progress": settings.progress}
    env = gym.make(scenario.env_id, max_episode_steps=scenario.max_steps, **kwargs)
    if settings.rrd:
        from cityenv.viz import RerunRecorder

        env = RerunRecorder(env, settings.out / "rollout.rrd")
    return env


def _world_model_options(settings: RolloutSettings) -> dict[str, Any]:
    """The world model's options without the unset (``None``) ones."""
    return {k: v for k, v in settings.world_model_options.items() if v is not None}


def summarize(
    settings: RolloutSettings,
    scenario: Scenario,
    result: ScenarioResult,
    times: dict[str, float],
) -> dict[str, Any]:
    """The JSON summary of a rollout."""
    refs = np.asarray(result.references_used, np.float64)
    outputs = {"summary": "summary.json"}
    if settings.video:
        outputs["video"] = "rollout.mp4"
    if settings.rrd:
        outputs["rrd"] = "rollout.rrd"
    return {
        "scenario": scenario.name,
        "scenario_file": str(settings.scenario),
        "env_id": scenario.env_id,
        "action_mode": scenario.action_mode,
        "world_model": settings.world_model,
        "world_model_options": _world_model_options(settings),
        "resolution": [settings.width, settings.height],
        "chunk_length": settings.chunk_length,
        "fps": settings.fps,
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
        "seed": settings.seed,
        "outputs": outputs,
    }


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def rollout(settings: RolloutSettings) -> dict[str, Any]:
    """Run a scenario, write the video, the recording and ``summary.json``; return the summary."""
    start = time.perf_counter()
    scenario = _resolved(settings, load_scenario(settings.scenario))
    settings.out.mkdir(parents=True, exist_ok=True)
    env = make_env(settings, scenario)
    setup_s = time.perf_counter() - start
    video = VideoWriter(settings.out / "rollout.mp4", settings.fps) if settings.video else None
    try:
        result = run_scenario(
            env,
            scenario,
            seed=settings.seed,
            on_frames=video.append if video is not None else None,
            progress=settings.progress,
        )
    finally:
        if video is not None:
            video.close()
        env.close()
    wall_s = time.perf_counter() - start
    times = {"wall_s": wall_s, "setup_s": setup_s, "rollout_s": wall_s - setup_s}
    summary = summarize(settings, scenario, result, times)
    (settings.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@hydra.main(version_base=None, config_path=str(config_dir()), config_name="rollout")
def main(cfg: DictConfig) -> None:
    """Run the configured scenario and log where the outputs went."""
    settings = settings_from_config(cfg)
    summary = rollout(settings)
    log.info(
        "%s: %d frames, %.0f m travelled, %.1f frames/s, success=%s -> %s",
        summary["scenario"],
        summary["frames"],
        summary["metres_travelled"],
        summary["frames_per_s"] or 0.0,
        summary["success"],
        settings.out,
    )


if __name__ == "__main__":
    main()
