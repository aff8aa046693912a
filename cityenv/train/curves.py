"""A training run's TensorBoard scalars as a CSV table and a loss plot, for docs and model cards.

``python -m cityenv.train.curves RUN [RUN ...] --out DIR [--name NAME]`` reads the scalars every
run folder's ``tensorboard/`` holds (loss, learning rate, gradient norm, step time, validation
PSNR/SSIM) and writes ``DIR/NAME.csv`` (one row per step and tag: ``run,tag,step,value``) and
``DIR/NAME.png`` (the training loss of each run, raw and smoothed, and the validation static PSNR
of the model and of the warp baseline where the run validated).
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cityenv.errors import ConfigError

__all__ = ["read_scalars", "write_curves"]


def read_scalars(run: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of ``run/tensorboard`` as ``tag -> [(step, value), ...]`` in step order.

    Raises:
        ConfigError: If ``run`` has no ``tensorboard/`` folder with events.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = Path(run) / "tensorboard"
    if not any(folder.glob("events.out.tfevents.*")):
        raise ConfigError(
            f"expected a training run folder with tensorboard/ event files, got {str(run)!r}; "
            "give the out= folder of python -m cityenv.train"
        )
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0 = keep every event
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        last = {e.step: float(e.value) for e in acc.Scalars(tag)}  # a resumed run repeats steps
        out[tag] = sorted(last.items())
    return out


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    window = max(1, min(window, len(values)))
    kernel = np.ones(window) / window
    return np.convolve(np.pad(values, (window - 1, 0), mode="edge"), kernel, mode="valid")


def write_curves(runs: Sequence[str | Path], out: str | Path, name: str = "curves") -> Path:
    """Write ``out/name.csv`` and ``out/name.png`` for ``runs``; returns the PNG's path."""
    from cityenv.eval.plots import pyplot, save_figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scalars = {Path(r).name: read_scalars(r) for r in runs}
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "tag", "step", "value"])
        for run, tags in scalars.items():
            for tag, points in sorted(tags.items()):
                writer.writerows([run, tag, step, f"{value:.6g}"] for step, value in points)
    plt = pyplot()
    has_val = any("val/psnr_static_model" in t for t in scalars.values())
    fig, axes = plt.subplots(1, 2 if has_val else 1, figsize=(11 if has_val else 6, 4))
    axes = np.atleast_1d(axes)
    for run, tags in scalars.items():
        points = np.asarray(tags.get("train/loss", []), float).reshape(-1, 2)
        if len(points):
            line = axes[0].plot(points[:, 0], points[:, 1], alpha=0.25, lw=0.8)[0]
            smooth = _smooth(points[:, 1], max(1, len(points) // 20))
            axes[0].plot(points[:, 0], smooth, color=line.get_color(), label=run)
        for tag, style in (("val/psnr_static_model", "o-"), ("val/psnr_static_warp", "x--")):
            val = np.asarray(tags.get(tag, []), float).reshape(-1, 2)
            if len(val) and has_val:
                axes[1].plot(val[:, 0], val[:, 1], style, label=f"{run}: {tag.split('_')[-1]}")
    axes[0].set(xlabel="step", ylabel="training loss", title="loss (light: raw; dark: smoothed)")
    axes[0].legend()
    if has_val:
        axes[1].set(xlabel="step", ylabel="static PSNR (dB)", title="validation, held-out clips")
        axes[1].legend()
    return save_figure(fig, out / f"{name}.png")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cityenv.train.curves", description=__doc__)
    parser.add_argument("runs", nargs="+", help="run folders (python -m cityenv.train out=...)")
    parser.add_argument("--out", required=True, help="folder for NAME.csv and NAME.png")
    parser.add_argument("--name", default="curves", help="file name stem (default: curves)")
    args = parser.parse_args(argv)
    print(write_curves(args.runs, args.out, args.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
