"""Benchmark the built-in procedural town renderer (headless EGL; Mesa llvmpipe without a GPU).

Run: ``python benchmarks/bench_render.py [--frames 300] [--seed 0]``.

Times one RGB + metric depth + dynamic-mask frame, read back into numpy, at 256x256 (and 512x512
for reference) in three workloads on the default 4x4-block town at noon:

(a) ``sweep``: a static world (the clock stands still) seen from a camera that drives along a lane
    while turning its head, so the visible tiles change every frame;
(b) ``drive``: the same camera path while the world clock advances 0.1 s per frame, so every actor
    moves (their instances are recomputed and uploaded each frame);
(c) ``street view``: 8-view street-view captures at points along the lane (frames/s counts views).

Prints the median and 90th-percentile milliseconds per frame, frames/s from the median, the mean
number of triangles drawn per frame (static tiles and actors), and whether the 256x256 drive meets
the target. Needs no torch. The machine may be shared: compare runs taken in the same conditions.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

from carla_tools.town.town import ProceduralTown
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose

TARGET_FPS = 100.0
"""Frames/s the 256x256 RGB + depth drive must reach on a 2-core CPU with llvmpipe."""


def lane_poses(town: ProceduralTown, n: int, step: float = 0.5) -> list[Pose]:
    """``n`` eye-height poses along the longest lane, ``step`` metres apart, the head turning."""
    lane = max(town.road_network().lanes, key=lambda lane: len(lane.waypoints))
    pts = lane.waypoints
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    s = (np.arange(n) * step) % cum[-1]
    xy = np.stack([np.interp(s, cum, pts[:, k]) for k in range(2)], axis=1)
    d = np.stack([np.interp(s + 1.0, cum, pts[:, k]) for k in range(2)], axis=1) - xy
    heading = np.degrees(np.arctan2(d[:, 0], d[:, 1]))
    swing = 35.0 * np.sin(np.arange(n) * 2 * np.pi / 120.0)  # look around, period 120 frames
    return [
        Pose.from_heading([x, y, 1.6], h + w, pitch_deg=-3.0)
        for (x, y), h, w in zip(xy, heading, swing, strict=True)
    ]


def time_frames(step: Callable[[int], object], frames: int, warmup: int = 10) -> np.ndarray:
    """Wall time of ``step(i)`` for ``i < frames`` after ``warmup`` untimed calls, in ms."""
    for i in range(warmup):
        step(i)
    out = np.empty(frames)
    for i in range(frames):
        t0 = time.perf_counter()
        step(i)
        out[i] = (time.perf_counter() - t0) * 1e3
    return out


def report(name: str, ms: np.ndarray, triangles: float, per: int = 1) -> float:
    """Print one row; ``per`` frames per timed step. Returns frames/s from the median."""
    med, p90 = np.median(ms) / per, np.percentile(ms, 90) / per
    fps = 1e3 / med
    print(f"  {name:<30} {med:6.2f} ms median {p90:6.2f} ms p90 {fps:7.1f} frames/s "
          f"{triangles:7.0f} triangles/frame")  # fmt: skip
    return fps


def bench_size(town: ProceduralTown, size: int, frames: int) -> float:
    """Run the three workloads at ``size`` x ``size``; returns the drive's frames/s."""
    camera = PinholeCamera.from_fov(size, size, 90.0)
    poses = lane_poses(town, frames + 20)
    renderer = town._renderer  # the benchmark reads its triangle counter
    t0 = town.time
    print(f"{size}x{size} RGB + depth + dynamic mask:")

    tris: list[int] = []

    def sweep(i: int) -> None:
        town.render(camera, poses[i])
        tris.append(renderer.triangles_drawn)

    ms = time_frames(sweep, frames)
    report("(a) sweep, static world", ms, np.mean(tris[-frames:]))

    tris.clear()
    town.set_time(t0)

    def drive(i: int) -> None:
        town.advance(0.1)
        town.render(camera, poses[i])
        tris.append(renderer.triangles_drawn)

    ms = time_frames(drive, frames)
    fps = report("(b) drive, actors moving", ms, np.mean(tris[-frames:]))

    tris.clear()
    town.set_time(t0)
    step = max(len(poses) // 16, 1)

    def capture(i: int) -> None:
        town.render_street_view(poses[(i * step) % len(poses)].position, size=size)
        tris.append(renderer.triangles_drawn)  # of the last view

    ms = time_frames(capture, max(frames // 10, 5), warmup=2)
    report("(c) street view, per view", ms, np.mean(tris), per=8)
    print(f"      {np.median(ms):.1f} ms per 8-view capture")
    return fps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="timed frames per workload")
    parser.add_argument("--seed", type=int, default=0, help="town seed")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    args = parser.parse_args()
    with ProceduralTown(seed=args.seed) as town:
        info = town._renderer.ctx.info
        print(f"GL renderer: {info['GL_RENDERER']} on {os.cpu_count()} CPUs; town seed "
              f"{args.seed}, {town._renderer.triangles} static triangles; {args.frames} frames "
              "per workload after 10 warm-up frames")  # fmt: skip
        fps = {size: bench_size(town, size, args.frames) for size in args.sizes}
    if 256 in fps:
        verdict = "PASS" if fps[256] >= TARGET_FPS else "FAIL"
        print(f"target: >= {TARGET_FPS:.0f} frames/s for the 256x256 drive (b): {fps[256]:.1f} "
              f"frames/s {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
