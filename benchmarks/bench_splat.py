"""Benchmark forward splatting and coverage on one CPU thread.

Run: ``python benchmarks/bench_splat.py [--runs 30]``.

Times :func:`cityenv.geometry.forward_splat` at 480x832 and 256x256 on a synthetic street scene
(ground plane, two facades, boxes, sky with no depth) after a small camera motion, against a plain
scatter z-buffer written here (sort source points by depth, far to near, then ``index_put_`` so the
nearest write lands last), which is the naive approach. Also times :func:`coverage` on a batch of
16 candidate depths at 64x64 projected into one target view, the retrieval stage-2 workload.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose
from cityenv.geometry.splat import coverage, forward_splat

_EYE_HEIGHT = 1.6  # metres above the ground
_STREET_HALF_WIDTH = 8.0  # metres from the camera to each facade
_FAR = 150.0  # beyond this the scene is sky (depth 0)


def street_depth(camera: PinholeCamera, rng: np.random.Generator) -> np.ndarray:
    """Ray-cast a street canyon seen by ``camera`` at the origin; returns z-depth ``(H, W)``.

    Surfaces (camera frame, OpenCV): the ground ``y = 1.6``, facades ``x = +-8``, and a dozen
    fronto-parallel boxes at 6-60 m; the nearest hit along each pixel ray wins; no hit is sky (0).
    """
    rays = camera.pixel_rays()  # (H, W, 3), z = 1, so a hit's ray parameter is its z-depth
    x, y = rays[..., 0], rays[..., 1]
    with np.errstate(divide="ignore"):
        hits = [
            np.where(y > 0, _EYE_HEIGHT / y, np.inf),
            np.where(np.abs(x) > 0, _STREET_HALF_WIDTH / np.abs(x), np.inf),
        ]
    for _ in range(12):
        z = rng.uniform(6.0, 60.0)
        x0, x1 = np.sort(rng.uniform(-_STREET_HALF_WIDTH, _STREET_HALF_WIDTH, 2))
        top = rng.uniform(-6.0, 0.5)
        inside = (x * z >= x0) & (x * z <= x1) & (y * z >= top) & (y * z <= _EYE_HEIGHT)
        hits.append(np.where(inside, z, np.inf))
    depth = np.min(hits, axis=0)
    return np.where(depth < _FAR, depth, 0.0).astype(np.float32)


def plain_scatter(image, depth, src_camera, src_pose, dst_camera, dst_pose):
    """The naive z-buffer: project, sort far to near, ``index_put_`` (the last write wins)."""
    h, w = dst_camera.height, dst_camera.width
    rel = torch.from_numpy(np.linalg.inv(dst_pose) @ src_pose).float()
    k_src_inv = torch.from_numpy(np.linalg.inv(src_camera.K)).float()
    k_dst = torch.from_numpy(dst_camera.K).float()
    rows, cols = torch.meshgrid(
        torch.arange(src_camera.height) + 0.5, torch.arange(src_camera.width) + 0.5, indexing="ij"
    )
    pix = torch.stack([cols, rows, torch.ones_like(rows)], -1).reshape(-1, 3)  # centres (x, y, 1)
    pts = (pix @ k_src_inv.T) * depth.reshape(-1, 1)
    pts = pts @ rel[:3, :3].T + rel[:3, 3]
    uvz = pts @ k_dst.T
    z = uvz[:, 2]
    u, v = uvz[:, 0] / z, uvz[:, 1] / z
    keep = (depth.reshape(-1) > 0) & (z > 1e-6) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    u, v, z, colors = u[keep], v[keep], z[keep], image.reshape(-1, image.shape[-1])[keep]
    order = torch.argsort(z, descending=True)
    index = (v.long() * w + u.long())[order]
    warped = torch.zeros(h * w, image.shape[-1], dtype=image.dtype)
    warped.index_put_((index,), colors[order])
    valid = torch.zeros(h * w, dtype=torch.bool)
    valid[index] = True
    return warped.reshape(h, w, -1), valid.reshape(h, w)


def time_ms(fn: Callable[[], object], runs: int, warmup: int = 3) -> tuple[float, float]:
    """Median and 90th-percentile wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times)), float(np.percentile(times, 90))


def splat_rows(width: int, height: int, runs: int, rng: np.random.Generator) -> list[tuple]:
    """Timings of forward_splat (torch and numpy inputs) and the plain scatter at one size."""
    camera = PinholeCamera.from_fov(width, height, 90.0)
    depth = street_depth(camera, rng)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    src = Pose.identity().matrix
    dst = Pose.from_rt(_yaw(2.0), [0.3, 0.0, 0.5]).matrix  # 0.5 m forward, 0.3 m right, 2 deg
    image_t, depth_t = torch.from_numpy(image), torch.from_numpy(depth)
    _, valid = forward_splat(image_t, depth_t, camera, src, camera, dst)
    _, plain_valid = plain_scatter(image_t, depth_t, camera, src, camera, dst)
    agree = float((valid == plain_valid).float().mean())
    size = f"{height}x{width}"
    print(f"{size}: splat covers {valid.float().mean():.1%} of the target; valid masks of the two")
    print(f"  methods agree on {agree:.4%} of pixels (float rounding at pixel edges)")
    base = time_ms(lambda: plain_scatter(image_t, depth_t, camera, src, camera, dst), runs)
    rows = [(f"plain scatter {size}", *base, 1.0)]
    for kind, args in (("torch", (image_t, depth_t)), ("numpy", (image, depth))):
        med, p90 = time_ms(lambda a=args: forward_splat(*a, camera, src, camera, dst), runs)
        rows.append((f"forward_splat {size} ({kind})", med, p90, base[0] / med))
    return rows


def coverage_rows(runs: int, rng: np.random.Generator) -> list[tuple]:
    """Coverage of 16 candidate 64x64 depths in one 64x64 target view, against splat-and-count."""
    camera = PinholeCamera.from_fov(64, 64, 90.0)
    depths = np.stack([street_depth(camera, rng) for _ in range(16)])
    poses = [Pose.from_heading(rng.normal(0, 3, 3), rng.uniform(0, 360)) for _ in range(16)]
    poses = np.stack([p.matrix for p in poses])
    target = Pose.from_heading([0.0, 0.0, 0.0], 0.0).matrix

    def splat_and_count() -> np.ndarray:  # the z-buffered warp, then the mean of its valid mask
        _, valid = forward_splat(depths, depths, camera, poses, camera, target)
        return valid.mean(axis=(1, 2))

    assert np.allclose(splat_and_count(), coverage(depths, camera, poses, camera, target))
    base = time_ms(splat_and_count, runs * 10)
    med, p90 = time_ms(lambda: coverage(depths, camera, poses, camera, target), runs * 10)
    return [
        ("splat-and-count B=16 64x64", *base, 1.0),
        ("coverage B=16 64x64", med, p90, base[0] / med),
    ]


def _yaw(deg: float) -> np.ndarray:
    """Rotation about the camera y axis (down) by ``deg``: a turn to the right."""
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per case (>= 30)")
    args = parser.parse_args()
    if args.runs < 30:
        parser.error(f"--runs must be at least 30 for a stable p90, got {args.runs}")
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, numpy {np.__version__}, 1 CPU thread, {args.runs} runs")
    rng = np.random.default_rng(0)
    rows = splat_rows(832, 480, args.runs, rng) + splat_rows(256, 256, args.runs, rng)
    rows += coverage_rows(args.runs, rng)
    print(f"\n{'case':<36}{'median ms':>10}{'p90 ms':>10}{'speed-up':>10}")
    for name, med, p90, ratio in rows:
        print(f"{name:<36}{med:>10.2f}{p90:>10.2f}{ratio:>9.1f}x")
    print("speed-up: baseline median / this median; baselines are the 1.0x rows of each group")


if __name__ == "__main__":
    main()
