"""Throughput of ``CityWorld-Town-v0`` with the warp world model, retrieval included.

Two shapes:

- ``--rl``: the shape reinforcement learning runs in: 64 x 64 and 128 x 128 frames, short chunks
  (``--chunk 4``), random actions, one process and ``gym.make_vec`` with ``--workers`` async
  worker processes; each measured with torch on its default threads ("before") and on one
  thread ("after": what :func:`cityenv.envs.vector.make_vec` sets in its workers), interleaved
  ``--repeats`` times so both see the same machine; prints the medians of env steps/s and
  frames/s and the time split of the one-process runs; then PPO end to end (``--ppo-steps``
  steps of :mod:`policies.train_ppo`'s agent and settings: collection + updates) in steps/s.
  ``python benchmarks/bench_env.py --rl [--steps 200] [--workers 4] [--repeats 3]``
- the drive (default): ``python benchmarks/bench_env.py [--steps 1000] [--size 256] [--chunk 12]
  [--world-model diffusion [--model-path DIR | --preset town]]``
  drives the camera
along the town's streets for ``--steps`` steps with the route follower of :mod:`policies`
(navigation task, discrete actions; at each goal the episode restarts where the camera is, with a
new goal, so the drive never leaves the streets; resets are not timed) and prints steps/s,
frames/s, the time split (retrieval incl. loading, splat, fill, rest of generate, rest of the
step) and the process's RSS every 100 steps (flat RSS = no leak; peak RSS at the end). The
town database is built on first use (about 30 s) into the cache (``$CITYENV_CACHE`` or
``~/.cache/cityenv``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import gymnasium as gym
import numpy as np
import psutil

import cityenv  # noqa: F401  (registers the IDs)

_DEFAULT_THREADS = __import__("torch").get_num_threads()


def _rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def run(
    steps: int,
    size: int,
    chunk: int,
    seed: int,
    world_model: str = "warp",
    world_model_options: dict | None = None,
) -> dict:
    """Run the episode and return the figures (``world_model`` and its options as the env
    takes them: the diffusion model's split is encode / denoise / decode instead of splat /
    fill)."""
    from policies.route_follower import RouteFollower

    env = gym.make(
        "CityWorld-Town-v0",
        width=size,
        height=size,
        chunk_length=chunk,
        max_episode_steps=steps + 1,
        world_model=world_model,
        world_model_options=world_model_options,
    )
    base = env.unwrapped
    obs, info = env.reset(seed=seed)
    follower = RouteFollower(env)
    resets, reset_s = 0, 0.0
    parts = ("encode_s", "denoise_s") if world_model == "diffusion" else ("splat_s", "fill_s")
    split = {k: 0.0 for k in ("retrieval", *(p[:-2] for p in parts), "generate_other", "env_other")}
    rss = [(0, round(_rss_mib(), 1))]
    refs = []
    start = time.perf_counter()
    for i in range(1, steps + 1):
        t0 = time.perf_counter()
        obs, _, terminated, _, info = env.step(follower.act(obs, info))
        step_s = time.perf_counter() - t0
        record = base.last_step
        info, timings = record.output.info, record.timings
        first, second = (float(info.get(p, 0.0)) for p in parts)
        split["retrieval"] += timings["retrieval"]
        split[parts[0][:-2]] += first
        split[parts[1][:-2]] += second
        split["generate_other"] += timings["generate"] - first - second
        split["env_other"] += step_s - timings["retrieval"] - timings["generate"]
        refs.append(len(record.output.references.views))
        if i % 100 == 0 or i == steps:
            rss.append((i, round(_rss_mib(), 1)))
        if terminated:  # a new goal from here (the reset is not part of the step figures)
            t0 = time.perf_counter()
            obs, info = env.reset(options={"start": base.pose})
            follower.reset()
            resets, reset_s = resets + 1, reset_s + time.perf_counter() - t0
    wall = time.perf_counter() - start - reset_s
    env.close()
    return {
        "world_model": world_model,
        "steps": steps,
        "size": size,
        "chunk_length": chunk,
        "wall_s": round(wall, 2),
        "steps_per_s": round(steps / wall, 2),
        "frames_per_s": round(steps * chunk / wall, 1),
        "split_ms_per_step": {k: round(1000 * v / steps, 2) for k, v in split.items()},
        "split_fraction": {k: round(v / wall, 3) for k, v in split.items()},
        "mean_references": round(float(np.mean(refs)), 2),
        "steps_without_references": int(np.sum(np.asarray(refs) == 0)),
        "goals_reached": resets,
        "rss_mib": rss,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


# --- the RL shape -------------------------------------------------------------------------------
def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads if threads > 0 else _DEFAULT_THREADS)


def _rl_kwargs(size: int, chunk: int) -> dict:
    return {"width": size, "height": size, "chunk_length": chunk, "town": {"progress": False}}


def one_process(steps: int, size: int, chunk: int, threads: int, seed: int) -> dict:
    """Random actions in one process: steps/s, frames/s and the split (ms per step)."""
    _set_threads(threads)
    env = gym.make("CityWorld-Town-v0", max_episode_steps=10**6, **_rl_kwargs(size, chunk))
    base = env.unwrapped
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(10):  # warm the reference caches
        env.step(int(rng.integers(4)))
    split = {"retrieval": 0.0, "generate": 0.0, "rest": 0.0}
    resets = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        _, _, terminated, _, _ = env.step(int(rng.integers(4)))
        step_s = time.perf_counter() - t0
        timings = base.last_step.timings
        split["retrieval"] += timings["retrieval"]
        split["generate"] += timings["generate"]
        split["rest"] += step_s - timings["retrieval"] - timings["generate"]
        if terminated:
            t0 = time.perf_counter()
            env.reset()
            resets += time.perf_counter() - t0
    wall = time.perf_counter() - start - resets
    env.close()
    return {
        "steps_per_s": steps / wall,
        "frames_per_s": steps * chunk / wall,
        "split_ms": {k: 1000 * v / steps for k, v in split.items()},
    }


def async_workers(steps: int, size: int, chunk: int, workers: int, threads: int, seed: int) -> dict:
    """Random actions on ``workers`` async workers (torch threads each; 0 = torch's default)."""
    from functools import partial

    from cityenv.envs import vector

    # make_vec sets one thread in async workers; "before" replaces that with torch's default
    make = partial(vector._make, one_thread=threads == 1)
    fns = [
        partial(
            make, "CityWorld-Town-v0", (), {"max_episode_steps": 10**6, **_rl_kwargs(size, chunk)}
        )
    ] * workers
    envs = gym.vector.AsyncVectorEnv(fns, context="spawn")
    envs.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(5):
        envs.step(rng.integers(4, size=workers))
    start = time.perf_counter()
    for _ in range(steps):
        envs.step(rng.integers(4, size=workers))
    wall = time.perf_counter() - start
    envs.close()
    total = steps * workers
    return {"steps_per_s": total / wall, "frames_per_s": total * chunk / wall}


def ppo_end_to_end(steps: int, workers: int, seed: int) -> dict:
    """PPO (policies.train_ppo's agent and settings) learning ``steps`` steps: steps/s."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor

    from policies.navigation import agent_wrappers
    from policies.train_ppo import TrainPPOConfig, env_kwargs
    from policies.vec import GymVecEnv, make_vec

    _set_threads(1)
    config = TrainPPOConfig(num_envs=workers, progress=False)
    venv = make_vec(
        config.env_id,
        workers,
        wrappers=[agent_wrappers],
        max_episode_steps=config.max_episode_steps,
        **env_kwargs(config, "train"),
    )
    env = VecMonitor(GymVecEnv(venv))
    model = PPO(
        "MultiInputPolicy",
        env,
        n_steps=config.n_steps,
        batch_size=config.batch_size,
        n_epochs=config.n_epochs,
        policy_kwargs={"features_extractor_kwargs": {"cnn_output_dim": config.cnn_dim}},
        seed=seed,
        device="cpu",
    )
    model.learn(total_timesteps=config.n_steps * workers)  # warm: workers started, caches
    start = time.perf_counter()
    model.learn(total_timesteps=steps, reset_num_timesteps=False)
    wall = time.perf_counter() - start
    env.close()
    return {"steps_per_s": steps / wall, "steps": steps, "workers": workers}


def run_rl(args: argparse.Namespace) -> dict:
    """Every RL-shape configuration, before/after interleaved ``repeats`` times; medians."""
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for size in (64, 128):
            for label, threads in (("before", 0), ("after", 1)):
                key = f"one_process {size}x{size} {label}"
                runs.setdefault(key, []).append(
                    one_process(args.steps, size, args.chunk, threads, args.seed)
                )
                key = f"async x{args.workers} {size}x{size} {label}"
                runs.setdefault(key, []).append(
                    async_workers(
                        args.steps // 2, size, args.chunk, args.workers, threads, args.seed
                    )
                )
    table = {key: _medians(values) for key, values in runs.items()}
    if args.ppo_steps:
        table["ppo end to end (4 workers, 64x64)"] = ppo_end_to_end(
            args.ppo_steps, args.workers, args.seed
        )
    return {
        "chunk_length": args.chunk,
        "repeats": args.repeats,
        "load_avg": os.getloadavg()[0],
        "results": table,
    }


def _medians(values: list[dict]) -> dict:
    out = {}
    for key in values[0]:
        if isinstance(values[0][key], dict):
            out[key] = {
                k: round(float(np.median([v[key][k] for v in values])), 2) for k in values[0][key]
            }
        else:
            out[key] = round(float(np.median([v[key] for v in values])), 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rl", action="store_true", help="the RL shape (see the module doc)")
    parser.add_argument("--steps", type=int, default=None, help="steps (drive 1000, rl 200)")
    parser.add_argument("--size", type=int, default=256, help="frame width and height, pixels")
    parser.add_argument("--chunk", type=int, default=None, help="frames per step (drive 12, rl 4)")
    parser.add_argument("--workers", type=int, default=4, help="async workers (rl)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (rl)")
    parser.add_argument("--ppo-steps", type=int, default=2048, help="PPO steps timed (rl; 0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--world-model", default="warp", choices=["warp", "diffusion"], help="drive: the model"
    )
    parser.add_argument(
        "--model-path", default=None, help="drive, diffusion: a saved model folder (default: "
        "the shipped one); --preset NAME for random weights (timing only)",
    )  # fmt: skip
    parser.add_argument("--preset", default=None, help="drive, diffusion: random weights")
    args = parser.parse_args()
    if args.rl:
        args.steps, args.chunk = args.steps or 200, args.chunk or 4
        print(json.dumps(run_rl(args), indent=1))
        return
    steps, chunk = args.steps or 1000, args.chunk or 12
    options = None
    if args.world_model == "diffusion":
        options = {"path": args.model_path, "preset": args.preset, "device": "cpu"}
    print(json.dumps(run(steps, args.size, chunk, args.seed, args.world_model, options), indent=1))


if __name__ == "__main__":
    main()
