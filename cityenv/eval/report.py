"""The report of an eval run folder: ``report.md``, ``results.json``, plots and videos.

Made from the files :mod:`cityenv.eval.app` writes (``bench.json``, ``rows/<row>/*.json``), so
it can be made again at any time (``write_report(out)``) and always agrees with them:

- ``results.json``: every number: per row its clips, frames, the means over every scored frame
  of PSNR / SSIM whole and static, per-distance means (drift), seconds per clip, the row-level
  plug-in metrics and why any is not computed, and each clip's means;
- ``report.md``: one table, rows x metrics with the number of clips and frames; a metric not
  computed reads ``n/c`` and a footnote says why;
- ``plots/psnr_static_distance.png``, ``plots/ssim_static_distance.png`` (matplotlib): the
  static metric over travelled distance per row;
- ``videos/<clip>.mp4``: ground truth | warp | model rows side by side
  (:class:`cityenv.rollout.VideoWriter`).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from cityenv.eval.metrics import per_distance
from cityenv.eval.plots import pyplot, save_figure

__all__ = ["IMAGE_METRICS", "PLANNED_METRICS", "collect", "write_report"]

log = logging.getLogger(__name__)

IMAGE_METRICS = {
    "psnr": ("PSNR", 2),
    "psnr_static": ("PSNR static", 2),
    "ssim": ("SSIM", 4),
    "ssim_static": ("SSIM static", 4),
}
"""Per-frame metrics: key -> (column title, decimals in report.md)."""

PLANNED_METRICS = {
    "lpips": ("LPIPS", 4),
    "fid": ("FID", 2),
    "fvd": ("FVD", 2),
    "rot_err": ("RotErr (deg)", 2),
    "trans_err": ("TransErr", 3),
    "rot_err_floor": ("RotErr GT floor", 2),
    "trans_err_floor": ("TransErr GT floor", 3),
}
"""Row-level metrics of plug-ins (perceptual, camera): key -> (column title, decimals)."""

NOT_PLUGGED = (
    "no plug-in for this metric ran (cityenv.eval.perceptual / cityenv.eval.camera; LPIPS, FID "
    "and FVD need local weights: metrics.lpips_weights=...)"
)


# --- numbers ------------------------------------------------------------------------------------
def collect(out: str | Path) -> dict[str, Any]:
    """Every number of the run folder ``out`` (what ``results.json`` holds).

    Only the clips of the bench's windows (``bench.json``) count; a row missing some of them
    (an interrupted run) says how many it has.
    """
    out = Path(out)
    bench = json.loads((out / "bench.json").read_text())
    clip_ids = [w["clip_id"] for w in bench["windows"]]
    window_m = float(bench["spec"]["distance_window_m"])
    rows = {}
    for folder in sorted((out / "rows").iterdir()):
        if (folder / "row.json").is_file():
            rows[folder.name] = _row(folder, clip_ids, window_m)
    order = sorted(rows, key=lambda r: (rows[r]["kind"] != "warp", rows[r]["ablation"] or "", r))
    return {
        "bench": bench["spec"]["name"],
        "spec": bench["spec"],
        "clips": len(clip_ids),
        "rows": {name: rows[name] for name in order},
    }


def _row(folder: Path, clip_ids: list[str], window_m: float) -> dict[str, Any]:
    spec = json.loads((folder / "row.json").read_text())
    clips = [
        json.loads((folder / f"{c}.json").read_text())
        for c in clip_ids
        if (folder / f"{c}.json").is_file()
    ]
    per_frame = {
        k: np.array([_nan(v) for c in clips for v in c["per_frame"][k]], np.float64)
        for k in IMAGE_METRICS
    }
    distance = np.array([d for c in clips for d in c["distance_m"]], np.float64)
    summary_path = folder / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    row_metrics = summary.get("metrics", {})
    reasons = summary.get("not_computed", {})
    seconds = [c["timings"]["total"] for c in clips]
    return {
        "label": f"{spec['name']} (untrained)" if _untrained(spec) else spec["name"],
        "description": spec["description"],
        "kind": spec["kind"],
        "ablation": spec["ablation"],
        "clips": len(clips),
        "frames": int(distance.size),
        "mean": {k: _mean(v) for k, v in per_frame.items()},
        "row_metrics": {k: row_metrics.get(k) for k in {*PLANNED_METRICS, *row_metrics}},
        "not_computed": {
            k: reasons.get(k, NOT_PLUGGED) for k in PLANNED_METRICS if row_metrics.get(k) is None
        },
        "seconds_per_clip": float(np.mean(seconds)) if seconds else None,
        "per_distance": _finite(per_distance(per_frame, distance, window_m)) if clips else [],
        "per_clip": {c["clip_id"]: {"kind": c["kind"], **c["mean"]} for c in clips},
    }


def _untrained(spec: dict[str, Any]) -> bool:
    return spec["kind"] == "diffusion" and spec["path"] is None


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _mean(values: np.ndarray) -> float | None:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else None


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# --- files --------------------------------------------------------------------------------------
def write_report(out: str | Path, *, videos: int = 3) -> Path:
    """Write ``results.json``, ``report.md``, the plots and ``videos`` side-by-side videos.

    Returns:
        The path of ``report.md``.
    """
    out = Path(out)
    results = collect(out)
    (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    plots = _plots(out / "plots", results)
    made = _videos(out, results, videos)
    from cityenv.eval.world import world_markdown

    path = out / "report.md"
    path.write_text(markdown(results, plots, made) + world_markdown(out))
    return path


def markdown(results: dict[str, Any], plots: list[Path], videos: list[Path]) -> str:
    """``report.md``: the bench's table and its footnotes."""
    spec = results["spec"]
    columns = {**IMAGE_METRICS, **PLANNED_METRICS}
    head = ["row", "clips", "frames", *(t for t, _ in columns.values()), "s / clip"]
    lines = [
        f"# {results['bench']}: {results['clips']} clips",
        "",
        f"Windows of {spec['window_frames']} frames from frame {spec['window_start']}; the start "
        f"frame is the condition, the other {spec['window_frames'] - 1} are scored. "
        f"K = {spec['num_references']} references per chunk, "
        + ("from other traversals and capture times" if spec["cross_temporal"] else "any")
        + f" ({spec['time_window_s']:g} s window); prompt: {spec['prompt']}; seed {spec['seed']}. "
        "Static: pixels outside the clips' dynamic masks. PSNR in dB.",
        "",
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |",
    ]
    notes: dict[str, int] = {}
    for row in results["rows"].values():
        cells = [row["label"], str(row["clips"]), str(row["frames"])]
        for key, (_, digits) in columns.items():
            value = row["mean"].get(key) if key in IMAGE_METRICS else row["row_metrics"].get(key)
            if value is None:
                reason = row["not_computed"].get(key, "no frame had a value")
                note = notes.setdefault(reason, len(notes) + 1)
                cells.append(f"n/c[^{note}]")
            else:
                cells.append(f"{value:.{digits}f}")
        seconds = row["seconds_per_clip"]
        cells.append("-" if seconds is None else f"{seconds:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Rows:", ""]
    lines += [f"- **{r['label']}**: {r['description']}" for r in results["rows"].values()]
    if plots or videos:
        lines += ["", "Files: " + ", ".join(f"`{p.parent.name}/{p.name}`" for p in plots + videos)]
    lines += [""] + [f"[^{n}]: not computed: {reason}" for reason, n in notes.items()]
    return "\n".join(lines) + "\n"


def _plots(folder: Path, results: dict[str, Any]) -> list[Path]:
    """Static PSNR and SSIM over travelled distance, one line per row (matplotlib)."""
    try:
        plt = pyplot()
    except ModuleNotFoundError as error:
        log.warning("no plots: %s", error)
        return []
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for key, title in (("psnr_static", "static PSNR (dB)"), ("ssim_static", "static SSIM")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for row in results["rows"].values():
            bins = [b for b in row["per_distance"] if b["frames"] and b[key] is not None]
            centres = [(b["start_m"] + b["end_m"]) / 2 for b in bins]
            ax.plot(centres, [b[key] for b in bins], marker="o", label=row["label"])
        ax.set_xlabel("distance travelled (m)")
        ax.set_ylabel(title)
        ax.set_title(f"{results['bench']}: {title} over distance")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        made.append(save_figure(fig, folder / f"{key}_distance.png"))
    return made


def _videos(out: Path, results: dict[str, Any], count: int) -> list[Path]:
    """``videos/<clip>.mp4``: ground truth | each row with the clip, left to right."""
    if count <= 0:
        return []
    from cityenv.citydb.clips import ClipStore, resize_frames
    from cityenv.rollout import VideoWriter  # the project's one MP4 writer

    bench = json.loads((out / "bench.json").read_text())
    store = ClipStore(bench["clips"])
    made = []
    for window in bench["windows"][:count]:
        clip_id = window["clip_id"]
        columns = [
            np.load(out / "rows" / name / f"{clip_id}.npz")["frames"]
            for name in results["rows"]
            if (out / "rows" / name / f"{clip_id}.npz").is_file()
        ]
        if not columns:
            continue
        frames = range(window["start"], window["start"] + window["num_frames"])
        truth = store.read_frames(clip_id, frames)
        truth = resize_frames(truth, (columns[0].shape[2], columns[0].shape[1]))
        path = out / "videos" / f"{clip_id}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        with VideoWriter(path, fps=max(store.info(clip_id).fps, 4.0)) as video:
            video.append(np.concatenate([truth, *columns], axis=2))
        made.append(path)
    return made
