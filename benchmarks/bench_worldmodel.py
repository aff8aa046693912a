"""Per-chunk latency, frames/s, peak memory and FLOPs of the diffusion world model.

``python benchmarks/bench_worldmodel.py [--preset small] [--size 128x128] [--chunks 6]
[--steps N] [--device cpu|cuda] [--dtype float32|bfloat16] [--json FILE]``

Builds the preset with random weights (timing does not depend on them), starts an episode from a
start image and generates ``--chunks`` chunks along a straight drive past synthetic references
(textured views with metric depth, so warping, reference encoding and the sink all run). The
first chunk warms up and is not timed. It prints the median and p90 latency per chunk, its split
(conditioning incl. warp + encoding, denoising, decoding), frames/s, peak memory (RSS on the
CPU, ``torch.cuda.max_memory_allocated`` on a GPU), the FLOPs per generated frame counted by
``torch.utils.flop_counter`` over one chunk, the device's measured peak (a large matmul in the
same dtype) and their ratio (achieved FLOP/s / peak).

SWM reports 15.2 frames/s on one H100 for its self-forcing model (12-frame chunks, H=3, K=1, 4
steps, 480x832): ``--preset swm-sf --size 480x832 --steps 4 --device cuda --dtype bfloat16``
measures that shape. ``--count-only`` counts the FLOPs of one chunk of any preset on shapes alone
(FakeTensorMode: no weights, no compute), e.g. the ``swm-sf`` shape on a machine without a GPU,
and the FLOP/s that SWM's reported speed implies for it.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import numpy as np
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose, Trajectory
from cityenv.worldmodel.base import ChunkReferences
from cityenv.worldmodel.diffusion import DiffusionWorldModel
from cityenv.worldmodel.dit import CityDiT, SequenceLayout, sequence_positions
from cityenv.worldmodel.presets import load_preset
from cityenv.worldmodel.referencing import ReferenceView
from cityenv.worldmodel.settings import SamplingSettings
from cityenv.worldmodel.vae import VideoVAE

SWM_SF_H100_FPS = 15.2


def texture(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random RGB texture, uint8 ``(H, W, 3)``."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(height // 16, 2), max(width // 16, 2), 3)).astype(np.uint8)
    import cv2

    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def scene(camera: PinholeCamera, num_refs: int) -> tuple[Pose, list[ReferenceView]]:
    """A start pose and references every 10 m ahead: textured views of a wall 10 m away."""
    start = Pose.from_heading([0.0, 0.0, 1.6], 0.0)
    views = []
    for i in range(num_refs):
        pose = Pose.from_heading([0.0, 10.0 * i, 1.6], 0.0)
        depth = np.full((camera.height, camera.width), 10.0, np.float32)
        depth[: camera.height // 3] = 0.0  # sky
        image = texture(camera.height, camera.width, i)
        views.append(ReferenceView(i, image, depth, camera, pose, "bench"))
    return start, views


def chunk_references(views: list[ReferenceView], trajectory: Trajectory, k: int) -> ChunkReferences:
    """The ``k`` references nearest the chunk, each frame's nearest, and the sink."""
    positions = np.array([v.pose.position for v in views])
    mid = trajectory.positions[len(trajectory) // 2]
    order = np.argsort(np.linalg.norm(positions - mid, axis=1))[:k]
    chosen = [views[i] for i in order]
    per_frame = np.array(
        [
            int(np.argmin([np.linalg.norm(v.pose.position - p) for v in chosen]))
            for p in trajectory.positions
        ]
    )
    end = trajectory.positions[-1]
    sink = views[int(np.argmin(np.linalg.norm(positions - end, axis=1)))]
    return ChunkReferences(chosen, per_frame, sink)


def measured_peak(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul (median of 5) in ``dtype`` on ``device``."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps = 50 if device.type == "cuda" else 5
    times = []
    for _ in range(6):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 * reps / statistics.median(times[1:])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> dict:
    width, height = (int(v) for v in args.size.lower().split("x"))
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    overrides = {} if args.steps is None else {"num_inference_steps": args.steps}
    model = DiffusionWorldModel.from_preset(
        args.preset, device=device, torch_dtype=dtype, **overrides
    )
    settings = model.settings
    length = args.chunk_frames or settings.chunk_frames
    camera = PinholeCamera.from_fov(width, height, 90.0)
    metres_per_frame = 0.8
    num_refs = int(np.ceil(length * (args.chunks + 1) * metres_per_frame / 10.0)) + 2
    start, views = scene(camera, num_refs)
    first = ChunkReferences(views[:1], np.zeros(1, np.int64), views[1])
    model.reset(
        pose=start,
        camera=camera,
        references=first,
        start_image=texture(height, width, 99),
        generator=np.random.default_rng(0),
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    k = settings.max_references
    records = []
    flops_per_chunk = None
    for c in range(args.chunks):
        poses = [
            Pose.from_heading([0.0, metres_per_frame * (c * length + i + 1), 1.6], 0.0)
            for i in range(length)
        ]
        stamps = (c * length + np.arange(1, length + 1)) / 10.0
        trajectory = Trajectory.from_poses(poses, timestamps=stamps)
        refs = chunk_references(views, trajectory, k)
        _sync(device)
        t0 = time.perf_counter()
        if c == 1:  # count once, on a chunk with full history (not timed)
            with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
                model.generate(trajectory, refs)
            flops_per_chunk = counter.get_total_flops()
            continue
        out = model.generate(trajectory, refs)
        _sync(device)
        wall = time.perf_counter() - t0
        if c > 0:  # chunk 0 warms up
            records.append(
                {
                    **{k_: out.info[k_] for k_ in ("encode_s", "denoise_s")},
                    "decode_s": out.info["decode_s"],
                    "wall_s": wall,
                }
            )
    if device.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated(device) / 2**30
        mem_label = "peak_gpu_memory_gib"
    else:
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        mem_label = "peak_rss_gib"
    latency = statistics.median(r["wall_s"] for r in records)
    peak = measured_peak(device, dtype)
    achieved = flops_per_chunk / latency
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    result = {
        "device": name,
        "preset": args.preset,
        "dtype": args.dtype,
        "size": f"{width}x{height}",
        "chunk_frames": length,
        "steps": settings.num_inference_steps,
        "history": settings.history,
        "references": k,
        "parameters_m": round(model.num_parameters / 1e6, 2),
        "tokens_per_chunk": out.info["num_tokens"],
        "timed_chunks": len(records),
        "latency_s_median": round(latency, 3),
        "latency_s_p90": round(float(np.percentile([r["wall_s"] for r in records], 90)), 3),
        "split_s_median": {
            key: round(statistics.median(r[key] for r in records), 3)
            for key in ("encode_s", "denoise_s", "decode_s")
        },
        "frames_per_s": round(length / latency, 2),
        mem_label: round(peak_mem, 2),
        "gflops_per_frame": round(flops_per_chunk / length / 1e9, 2),
        "measured_peak_tflops": round(peak / 1e12, 3),
        "achieved_tflops": round(achieved / 1e12, 3),
        "fraction_of_peak": round(achieved / peak, 3),
    }
    if device.type == "cuda":
        result["swm_sf_h100_fps"] = SWM_SF_H100_FPS
        result["ratio_to_swm_sf"] = round(result["frames_per_s"] / SWM_SF_H100_FPS, 3)
    return result


def count_flops(preset: str, width: int, height: int, steps: int | None) -> dict:
    """FLOPs of one chunk of ``preset`` at ``width x height``, counted on shapes alone.

    The transformer and the VAE are built and run under ``FakeTensorMode`` (no weights, no
    memory, no compute), so the count works for the 1.3B presets on any machine. Attention is
    counted through PyTorch's math path (the fused CPU kernel is not counted by
    ``FlopCounterMode``). A chunk: ``steps`` transformer passes (twice with guidance), the VAE
    encoding of the warped video (``L + 1`` frames), of ``K`` references and the sink, and the
    decoding of ``L / r`` latents that continue a stream (``L`` frames; ``r`` the VAE's temporal
    ratio, read from its config).
    """
    from diffusers import AutoencoderKLWan

    cfg = load_preset(preset)
    settings = SamplingSettings.from_mapping(cfg["sampling"])
    steps = steps or settings.num_inference_steps
    passes = steps * (2 if settings.guidance_scale != 1.0 else 1)
    flops = {}
    with FakeTensorMode(allow_non_fake_inputs=True), sdpa_kernel(SDPBackend.MATH):
        dit = CityDiT(**cfg["transformer"])
        vae = AutoencoderKLWan(**cfg["vae"])
        wrapped = VideoVAE(vae)  # the ratios come from the VAE's config
        length, k = settings.chunk_frames, settings.max_references
        n = length // wrapped.temporal_ratio
        layout = SequenceLayout(settings.history, n, settings.use_sink, k)
        positions = sequence_positions(
            layout,
            max_history=settings.history,
            gap=settings.gap,
            sink_offset=settings.sink_offset,
            reference_stride=settings.reference_stride,
        )
        ratio = wrapped.spatial_ratio
        z, h, w, f = dit.config.latent_channels, height // ratio, width // ratio, layout.num_frames
        _, p_h, p_w = dit.config.patch_size
        text_len = cfg.get("text_encoder", {}).get("max_length") or 32
        inputs = {
            "hidden_states": torch.randn(1, z, f, h, w),
            "timestep": layout.frame_timesteps(500.0),
            "encoder_hidden_states": torch.randn(1, text_len, dit.config.text_dim),
            "positions": positions,
            "conditions": torch.randn(1, z + 1, f, h, w),
            "plucker": torch.randn(1, dit.config.plucker_channels, f, h, w),
        }
        with FlopCounterMode(display=False) as counter:
            dit(**inputs)
        flops["transformer"] = counter.get_total_flops() * passes
        with FlopCounterMode(display=False) as counter:
            vae.encode(torch.randn(1, 3, length + 1, height, width))
            for _ in range(k + int(settings.use_sink)):
                vae.encode(torch.randn(1, 3, 1, height, width))
        flops["vae_encode"] = counter.get_total_flops()
        # A chunk continues the stream: its n latents decode to 4n frames, so count a stream of
        # 1 + n latents and take away its first latent (decoded alone to one frame).
        with FlopCounterMode(display=False) as counter:
            vae.decode(torch.randn(1, z, n + 1, h, w))
        with FlopCounterMode(display=False) as first:
            vae.decode(torch.randn(1, z, 1, h, w))
        flops["vae_decode"] = counter.get_total_flops() - first.get_total_flops()
    total = sum(flops.values())
    result = {
        "preset": preset,
        "size": f"{width}x{height}",
        "chunk_frames": length,
        "steps": steps,
        "tokens_per_chunk": f * (h // p_h) * (w // p_w),
        "tflops_per_chunk": {key: round(v / 1e12, 4) for key, v in flops.items()},
        "gflops_per_frame": round(total / length / 1e9, 2),
    }
    if preset == "swm-sf":  # what SWM's reported speed means for this shape
        result["swm_sf_h100_fps"] = SWM_SF_H100_FPS
        result["tflops_per_s_at_swm_speed"] = round(total / length * SWM_SF_H100_FPS / 1e12, 1)
    return result


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        model = "CPU"
    return f"{model} ({torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="tiny, small, swm-sf or swm-tf")
    parser.add_argument("--size", default="128x128", help="WIDTHxHEIGHT, multiples of 16")
    parser.add_argument("--chunks", type=int, default=6, help="chunks (the first warms up)")
    parser.add_argument("--chunk-frames", type=int, default=None, help="default: the preset's")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (preset's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument(
        "--count-only",
        action="store_true",
        help="count the FLOPs of one chunk on shapes alone (any preset, any machine); no timing",
    )
    args = parser.parse_args()
    if args.count_only:
        width, height = (int(v) for v in args.size.lower().split("x"))
        print(json.dumps(count_flops(args.preset, width, height, args.steps), indent=1))
        return
    if args.chunks < 3:
        parser.error("--chunks must be at least 3 (one warm-up, one counted, one timed)")
    result = run(args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
