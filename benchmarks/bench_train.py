"""Training throughput: samples/s and peak memory of ``python -m cityenv.train``.

Each configuration runs as its own process (a real ``python -m cityenv.train``, or ``torchrun``
for the 2-process rows) on town data generated once into ``--data`` (default
``/tmp/cityenv-bench-train``): the first ``--warmup`` steps are excluded, the rest timed from the
run's TensorBoard step times. Rows: each preset with and without the latent cache (when the
installed cityenv has one), and 1 vs 2 processes (scaling efficiency = samples/s of 2 processes /
(2 x samples/s of 1)). ``--device cuda --presets swm-sf`` times the swm-sf shape on a GPU.

    python benchmarks/bench_train.py                       # tiny and small on this CPU
    python benchmarks/bench_train.py --presets tiny --steps 20
    python benchmarks/bench_train.py --device cuda --presets swm-sf --size 480x832
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Per preset: clip size and the frames a sample needs (history + chunk + sink).
SHAPES = {"tiny": (64, 25), "small": (128, 25), "swm-sf": (256, 25)}


def make_data(out: Path, size: int, frames: int) -> Path:
    """A 1 x 1-block town: references every 20 m, 8 clips of ``frames`` frames (cached)."""
    if (out / "clips" / "store.json").is_file():
        return out
    from carla_tools.generate import (
        ClipSettings,
        GenerateSettings,
        ReferenceSettings,
        SimSettings,
        generate,
    )

    noon = datetime(2024, 5, 1, 3, 0, tzinfo=timezone.utc)
    dusk = datetime(2024, 5, 1, 10, 10, tzinfo=timezone.utc)
    generate(
        GenerateSettings(
            out=out,
            sim=SimSettings("town", {"seed": 1, "blocks": [1, 1]}),
            references=ReferenceSettings(spacing_m=20.0, size=size, times=(noon,)),
            clips=ClipSettings(
                count=8,
                num_frames=frames,
                fps=10.0,
                width=size,
                height=size,
                times=(dusk,),
                kinds=("vehicle", "pedestrian", "free"),
            ),  # fmt: skip
            cell_m=50.0,
            test_fraction=0.2,
            progress=False,
        )
    )
    return out


def _scalars(run: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def run_config(
    args, preset: str, data: Path, *, procs: int, cache: bool, threads: int | None = None
) -> dict:
    """One timed training run in a fresh process; returns its figures.

    ``threads`` sets ``OMP_NUM_THREADS`` (torchrun sets 1 per process by itself)."""
    tag = f"-t{threads}" if threads else ""
    out = Path(args.work) / f"{preset}-p{procs}{tag}-{'cache' if cache else 'nocache'}"
    shutil.rmtree(out, ignore_errors=True)
    overrides = [
        f"data.root={data}", f"model={preset}", f"out={out}", f"optim.steps={args.steps}",
        "optim.warmup_steps=1", f"checkpoint.every={args.steps}", "log_every=1",
        "progress=false", "validation.every=-1", f"optim.batch_size={args.batch}",
    ]  # fmt: skip
    if args.device:
        overrides.append(f"parallel.device={args.device}")
    if cache:
        overrides.append("data.latent_cache=true")
        overrides.append(f"data.latent_cache_dir={Path(args.work) / 'latents'}")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if procs > 1:
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone",
               f"--nproc_per_node={procs}", "-m", "cityenv.train", *overrides]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "cityenv.train", *overrides]
    wrapper = [sys.executable, __file__, "--measure", "--", *cmd]
    t0 = time.perf_counter()
    done = subprocess.run(wrapper, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        return {"preset": preset, "procs": procs, "cache": cache, "error": done.stderr[-800:]}
    peak = json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_gib"]
    times = _scalars(out, "perf/step_time_s")[args.warmup :]
    step_s = statistics.median(times) if times else float("nan")
    samples = args.batch * procs
    return {
        "preset": preset, "procs": procs, "threads": threads or ("1/proc" if procs > 1 else "all"),
        "cache": cache, "steps_timed": len(times),
        "step_s_median": round(step_s, 4), "samples_per_s": round(samples / step_s, 3),
        "peak_rss_gib": peak, "wall_s": round(wall, 1),
    }  # fmt: skip


def _measure(cmd: list[str]) -> None:
    """Run ``cmd`` and print the peak RSS of it and its children (RUSAGE_CHILDREN)."""
    import resource

    code = subprocess.run(cmd).returncode
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"peak_rss_gib": round(peak_kib / 2**20, 3)}))
    sys.exit(code)


def _has_cache() -> bool:
    from cityenv.train.config import DataConfig

    return "latent_cache" in DataConfig.__dataclass_fields__


def main() -> None:
    if "--measure" in sys.argv:
        _measure(sys.argv[sys.argv.index("--") + 1 :])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "small"])
    p.add_argument("--steps", type=int, default=12, help="steps per run (the first are warm-up)")
    p.add_argument("--warmup", type=int, default=2, help="steps left out of the timing")
    p.add_argument("--batch", type=int, default=1, help="samples per process per step")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--data", default="/tmp/cityenv-bench-train")
    p.add_argument("--work", default="/tmp/cityenv-bench-train-runs")
    p.add_argument("--no-procs", action="store_true", help="skip the 2-process rows")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args()
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, device {args.device or 'auto'}")
    rows = []
    caches = [False, True] if _has_cache() else [False]
    for preset in args.presets:
        size, frames = SHAPES.get(preset, (128, 25))
        data = make_data(Path(args.data) / f"{size}px", size, frames + 8)
        for cache in caches:
            rows.append(run_config(args, preset, data, procs=1, cache=cache))
            print(json.dumps(rows[-1]))
        if not args.no_procs and args.device != "cuda":
            # scaling: 2 processes of 1 thread each against 1 process of 1 thread
            rows.append(run_config(args, preset, data, procs=1, cache=False, threads=1))
            one = rows[-1]
            print(json.dumps(one))
            rows.append(run_config(args, preset, data, procs=2, cache=False))
            two = rows[-1]
            if "samples_per_s" in one and "samples_per_s" in two:
                two["scaling_efficiency"] = round(
                    two["samples_per_s"] / (2 * one["samples_per_s"]), 3
                )
            print(json.dumps(rows[-1]))
    print(
        f"\n{'preset':8} {'procs':>5} {'cache':>6} {'s/step':>8} {'samples/s':>10} {'RSS GiB':>8}"
    )
    for r in rows:
        if "error" in r:
            print(
                f"{r['preset']:8} {r['procs']:>5} {str(r['cache']):>6}  error: {r['error'][-200:]}"
            )
            continue
        eff = f"  scaling {r['scaling_efficiency']:.2f}" if "scaling_efficiency" in r else ""
        print(
            f"{r['preset']:8} {r['procs']:>5} {str(r['threads']):>8} {str(r['cache']):>6} "
            f"{r['step_s_median']:>8.3f} {r['samples_per_s']:>10.2f} {r['peak_rss_gib']:>8.2f}{eff}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
