"""Throughput of ``CityWorld-Town-v0`` with the warp world model, retrieval included.

``python benchmarks/bench_env.py [--steps 1000] [--size 256] [--chunk 12]`` drives the camera
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
import resource
import time

import gymnasium as gym
import numpy as np
import psutil

import cityenv  # noqa: F401  (registers the IDs)


def _rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def run(steps: int, size: int, chunk: int, seed: int) -> dict:
    """Run the episode and return the figures."""
    from policies.route_follower import RouteFollower

    env = gym.make(
        "CityWorld-Town-v0",
        width=size,
        height=size,
        chunk_length=chunk,
        max_episode_steps=steps + 1,
    )
    base = env.unwrapped
    obs, info = env.reset(seed=seed)
    follower = RouteFollower(env)
    resets, reset_s = 0, 0.0
    split = {"retrieval": 0.0, "splat": 0.0, "fill": 0.0, "generate_other": 0.0, "env_other": 0.0}
    rss = [(0, round(_rss_mib(), 1))]
    refs = []
    start = time.perf_counter()
    for i in range(1, steps + 1):
        t0 = time.perf_counter()
        obs, _, terminated, _, info = env.step(follower.act(obs, info))
        step_s = time.perf_counter() - t0
        record = base.last_step
        info, timings = record.output.info, record.timings
        splat, fill = float(info.get("splat_s", 0.0)), float(info.get("fill_s", 0.0))
        split["retrieval"] += timings["retrieval"]
        split["splat"] += splat
        split["fill"] += fill
        split["generate_other"] += timings["generate"] - splat - fill
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="steps of the episode")
    parser.add_argument("--size", type=int, default=256, help="frame width and height, pixels")
    parser.add_argument("--chunk", type=int, default=12, help="frames per step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(run(args.steps, args.size, args.chunk, args.seed), indent=1))


if __name__ == "__main__":
    main()
