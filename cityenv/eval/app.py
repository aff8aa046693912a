"""``python -m cityenv.eval``: replay a bench's clips with every row, score them, write a report.

A typed config in (:class:`EvalConfig`, Hydra's ``eval_schema``; ``configs/eval.yaml``), the
library's parts wired together, a run folder out::

    <out>/bench.json                 the bench spec and its clip windows (checked on resume)
    <out>/rows/<row>/row.json        the row's spec
    <out>/rows/<row>/<clip>.json     one clip's numbers (per frame, per distance, timings)
    <out>/rows/<row>/<clip>.npz      its generated frames (uint8 (T, H, W, 3))
    <out>/rows/<row>/summary.json    row-level metrics of the plug-ins (or why not computed)
    <out>/report.md, results.json, plots/, videos/   (:mod:`cityenv.eval.report`)

Each clip's files are written as soon as it is replayed (the JSON last, atomically), so an
interrupted eval run again with the same ``out`` (``resume=true``, the default) replays only the
clips without a JSON. Row-level metrics that need every clip (LPIPS, FID, FVD: the
``row_metrics`` plug-ins of :func:`run`) are computed once a row's clips are all there.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from omegaconf import OmegaConf

from cityenv.citydb.clips import ClipStore
from cityenv.errors import BenchError, CityEnvError, ConfigError
from cityenv.eval.bench import BenchData, BenchSpec, ClipPlan, resolve_bench_data, select_clips
from cityenv.eval.metrics import frame_metrics, per_distance, travelled
from cityenv.eval.replay import Replay, Replayer
from cityenv.eval.rows import ABLATIONS, Row, RowSpec, build_rows
from cityenv.eval.world import WorldTestsConfig, run_world_tests

__all__ = [
    "EvalConfig",
    "EvalResult",
    "ModelConfig",
    "RowMetric",
    "register_configs",
    "row_specs",
    "run",
]

log = logging.getLogger("cityenv.eval")


# --- the config -----------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    """The diffusion model's row (and its ablations); none when neither path nor preset."""

    path: str | None = None
    """A saved world-model folder (``save_pretrained``, a training run's export)."""
    preset: str | None = None
    """Random weights of a preset (tiny | small | swm-tf | swm-sf): labelled untrained."""
    name: str | None = None
    """The row's name (default: the folder's name, or ``<preset>``)."""
    seed: int = 0
    """Seed of random weights."""
    sampling: dict[str, Any] = field(default_factory=dict)
    """Overrides of the model's sampling settings (``num_inference_steps``, ...)."""
    device: str | None = None
    """cpu | cuda (default: cuda when available)."""


@dataclass
class MetricsConfig:
    """Perceptual metrics from weights on a local path (``docs/benchmark.md``); a metric without
    weights is reported as not computed, never estimated."""

    lpips_weights: str | None = None
    """Folder with torchvision's VGG16 weights and lpips's v0.1 ``vgg.pth``."""
    fid_weights: str | None = None
    """pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``."""
    fvd_weights: str | None = None
    """pytorch-i3d's ``rgb_imagenet.pt``."""
    device: str = "cpu"
    """Where the metric networks run."""
    camera: bool = False
    """RotErr / TransErr: camera poses estimated on every generated window and on its ground
    truth (the estimator's floor); seconds per window, so off by default."""
    camera_method: str = "two_view"
    """The pose estimator of every row and the floor (``cityenv.eval.camera``): two_view
    (pairwise geometry, robustly averaged and chained; registers the town's 128 px frames) or
    sfm (pycolmap incremental SfM; registers few of them)."""
    camera_segment_frames: int | None = 13
    """Windows are scored in segments of this many frames (the 1 + 12 of a chunk), each with its
    own anchor and scale; null scores the whole window as one trajectory."""


@dataclass
class EvalConfig:
    """``python -m cityenv.eval``: see ``docs/benchmark.md``."""

    out: str = "outputs/eval-${bench.name}"
    """Run folder; run again with the same folder to resume or to add rows."""
    bench: BenchSpec = field(default_factory=BenchSpec)
    """The bench (``bench=town`` for Town-Bench, or your CityDB + clip store)."""
    warp: bool = True
    """Replay the warp baseline row."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The diffusion model's row."""
    ablations: list[str] = field(default_factory=list)
    """Ablation rows of the model: no_references | no_warp | no_sink | first_frame_sink |
    same_traversal."""
    resume: bool = True
    """Keep the clips already written in ``out`` (false: replay them all again)."""
    videos: int = 3
    """Side-by-side videos (ground truth | warp | model rows) of the first N clips."""
    progress: bool = True
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """LPIPS / FID / FVD weights (none given: those columns read n/c with the reason)."""
    world: WorldTestsConfig = field(default_factory=WorldTestsConfig)
    """Prompt adherence and long routes on ground-truth renders (``world.adherence=true``)."""


def perceptual_metrics(cfg: EvalConfig) -> RowMetric:
    """The LPIPS / FID / FVD plug-in of ``cfg.metrics`` (weights loaded and checked now).

    Raises:
        MetricWeightsNotFoundError: If a weights path does not exist.
        MetricWeightsError: If weights are of another architecture (the keys are named).
    """
    from cityenv.eval.perceptual import PerceptualMetrics

    m = cfg.metrics
    return PerceptualMetrics.from_config(
        m.lpips_weights, m.fid_weights, m.fvd_weights, device=m.device
    )


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="eval_schema", node=EvalConfig)


def row_specs(cfg: EvalConfig) -> list[RowSpec]:
    """The run's rows: the warp, the model, the model's ablations (in that order).

    Raises:
        ConfigError: If ablations are asked without a model, or an ablation is unknown.
    """
    rows = [RowSpec("warp", "warp")] if cfg.warp else []
    m = cfg.model
    for ablation in cfg.ablations:
        if ablation not in ABLATIONS:
            from cityenv.errors import unknown_name

            raise unknown_name("ablation", ablation, ABLATIONS, error=ConfigError)
    if m.path is None and m.preset is None:
        if cfg.ablations:
            raise ConfigError(
                f"ablations {list(cfg.ablations)} are of the diffusion model, got no model; give "
                "model.path=FOLDER (a saved world model) or model.preset=tiny (untrained)."
            )
        if not rows:
            raise ConfigError("no row to replay: warp=false and no model.path or model.preset.")
        return rows
    name = m.name or (Path(m.path).name if m.path else str(m.preset))
    common = dict(
        kind="diffusion", path=m.path, preset=m.preset, seed=m.seed,
        sampling=tuple(sorted(dict(m.sampling).items())), device=m.device,
    )  # fmt: skip
    rows.append(RowSpec(name, **common))
    rows += [RowSpec(f"{name}-{a}", ablation=a, **common) for a in cfg.ablations]
    return rows


# --- plug-ins -----------------------------------------------------------------------------------
class RowMetric(Protocol):
    """A metric over all of a row's clips (LPIPS, FID, FVD, RotErr, ...), e.g.
    ``cityenv.eval.perceptual.PerceptualMetrics``."""

    not_computed: dict[str, str]
    """Metric name -> why it was not computed (missing weights, ...)."""

    def compute(
        self, generated: list[np.ndarray], ground_truth: list[np.ndarray]
    ) -> Mapping[str, float | None]:
        """Metrics of uint8 ``(T, H, W, 3)`` clips against their ground truth (``None``: not
        computed, the reason in :attr:`not_computed`)."""
        ...


# --- the run ------------------------------------------------------------------------------------
@dataclass
class EvalResult:
    """What a run did.

    Attributes:
        out: The run folder.
        replayed: ``(row, clip)`` pairs replayed now.
        skipped: Pairs whose results were already written (resumed).
        seconds: Wall time.
        report: The report's ``report.md``.
    """

    out: Path
    replayed: list[tuple[str, str]]
    skipped: list[tuple[str, str]]
    seconds: float
    report: Path


def run(cfg: EvalConfig, row_metrics: Sequence[RowMetric] = ()) -> EvalResult:
    """Replay the bench with every row, write each clip's results, then the report.

    Args:
        cfg: The config.
        row_metrics: Row-level metric plug-ins (computed once a row's clips are all written).

    Raises:
        ConfigError: For a bad config (an unknown ablation, no row).
        BenchError: For clips that do not exist, a frame size or window a row's model cannot
            make, or results of another bench in ``out``.
        EvaluationError: If the CityDB's anchor differs from the clip store's.
    """
    if not isinstance(cfg, EvalConfig):
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EvalConfig), cfg))
    start = time.perf_counter()
    spec = cfg.bench
    spec.check()
    specs = row_specs(cfg)
    data = resolve_bench_data(spec, progress=cfg.progress)
    store = ClipStore(data.clips)
    plans = select_clips(spec, store)
    replayers = _replayers(spec, data, store, specs)
    rows = build_rows(specs, spec.replay_settings())
    _check_rows(rows, plans, store, spec)
    out = Path(cfg.out)
    _claim(out, spec, data, plans, rows, cfg.resume)
    replayed, skipped = _replay_all(out, rows, plans, replayers, spec, cfg)
    for row in rows:
        _row_summary(out, row, plans, replayers, spec, row_metrics)
    run_world_tests(cfg.world, out, rows, spec, data.citydb, lambda r: _chunk_frames(r, spec))
    from cityenv.eval.report import write_report

    report = write_report(out, videos=cfg.videos)
    seconds = time.perf_counter() - start
    log.info(
        "%d clip replays done, %d resumed, in %.1f s -> %s", len(replayed), len(skipped),
        seconds, report,
    )  # fmt: skip
    return EvalResult(out, replayed, skipped, seconds, report)


def _replayers(
    spec: BenchSpec, data: BenchData, store: ClipStore, specs: list[RowSpec]
) -> dict[bool, Replayer]:
    """One replayer per reference setting the rows need (cross-temporal, and same-traversal)."""
    out = {}
    base = spec.replay_settings()
    wanted = {base.cross_temporal} | {False for s in specs if s.ablation == "same_traversal"}
    for cross in sorted(wanted):
        import dataclasses

        settings = dataclasses.replace(base, cross_temporal=cross)
        out[cross] = Replayer(data.citydb, store, settings)
    return out


def _chunk_frames(row: Row, spec: BenchSpec) -> int:
    settings = getattr(row.model, "settings", None)
    own = getattr(settings, "chunk_frames", None)
    return int(own) if own is not None else spec.chunk_frames


def _check_rows(rows: list[Row], plans: list[ClipPlan], store: ClipStore, spec: BenchSpec) -> None:
    """Every row can make every clip's frame size and the window, before any work.

    Raises:
        BenchError: Naming the row, the size or window, and what to set instead.
    """
    cameras = {}
    for plan in plans:
        camera = store.info(plan.clip_id).camera
        if spec.frame_size is not None:
            camera = camera.rescaled(*spec.frame_size)
        cameras[(camera.width, camera.height)] = camera
    for row in rows:
        chunk = _chunk_frames(row, spec)
        if (spec.window_frames - 1) % chunk:
            n = max(1, (spec.window_frames - 1) // chunk)
            raise BenchError(
                f"row {row.name!r} generates {chunk}-frame chunks, so a window must hold "
                f"1 + n x {chunk} frames, got bench.window_frames={spec.window_frames}; use "
                f"bench.window_frames={1 + n * chunk} (or a common multiple for every row)."
            )
        for (width, height), camera in cameras.items():
            try:
                row.model.check_settings(camera, chunk)
            except CityEnvError as error:
                raise BenchError(
                    f"row {row.name!r} cannot make the bench's {width}x{height} frames in "
                    f"{chunk}-frame chunks: {error} Set bench.size=[W,H] to a size it can make."
                ) from error


def _claim(
    out: Path, spec: BenchSpec, data: BenchData, plans: list[ClipPlan], rows: list[Row],
    resume: bool,
) -> None:  # fmt: skip
    """Write ``bench.json`` and each ``row.json``, or check them against what ``out`` holds.

    Raises:
        BenchError: If ``out`` holds results of another bench or another row of the same name.
    """
    bench = {
        "spec": spec.as_dict(),
        "citydb": str(data.citydb),
        "clips": str(data.clips),
        "windows": [plan.__dict__ for plan in plans],
    }
    _match_or_write(out / "bench.json", bench, "bench", resume)
    for row in rows:
        folder = out / "rows" / row.name
        _match_or_write(folder / "row.json", row.spec.as_dict(), f"row {row.name!r}", resume)
        if not resume:
            for path in folder.glob("*.json"):
                if path.name != "row.json":
                    path.unlink()


def _match_or_write(path: Path, value: dict[str, Any], what: str, resume: bool) -> None:
    value = json.loads(json.dumps(value, default=str))
    if resume and path.is_file():
        held = json.loads(path.read_text())
        if held != value:
            changed = sorted(k for k in set(held) | set(value) if held.get(k) != value.get(k))
            raise BenchError(
                f"{path.parent} holds results of another {what} (differs in {changed}); give "
                "another out=FOLDER, or resume=false to replace them."
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, json.dumps(value, indent=2) + "\n")


def _replay_all(
    out: Path,
    rows: list[Row],
    plans: list[ClipPlan],
    replayers: dict[bool, Replayer],
    spec: BenchSpec,
    cfg: EvalConfig,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Replay every (row, clip) without a result, in clip order (rows share a clip's reads)."""
    from tqdm import tqdm

    replayed, skipped = [], []
    todo = [(r, p) for p in plans for r in rows]
    bar = tqdm(total=len(todo), desc="eval", unit="clip", disable=not cfg.progress)
    windows: dict[str, Any] = {}
    for row, plan in todo:
        bar.set_postfix_str(f"{row.name} {plan.clip_id}")
        if (out / "rows" / row.name / f"{plan.clip_id}.json").is_file():
            skipped.append((row.name, plan.clip_id))
        else:
            replayer = replayers[row.replay.cross_temporal]
            key = plan.clip_id
            if key not in windows:
                windows = {key: replayer.window(key, plan.start, plan.num_frames, spec.frame_size)}
            replay = _replay(replayer, row, windows[key], plan, spec)
            _write_clip(out / "rows" / row.name, plan, replay, spec, _camera_settings(cfg))
            replayed.append((row.name, plan.clip_id))
        bar.update()
    bar.close()
    return replayed, skipped


def _replay(replayer: Replayer, row: Row, window: Any, plan: ClipPlan, spec: BenchSpec) -> Replay:
    if spec.prompt == "none":
        import dataclasses

        window = dataclasses.replace(window, info=dataclasses.replace(window.info, caption=""))
    return replayer.replay(row.model, window, _chunk_frames(row, spec), seed=spec.seed + plan.index)


def _camera_settings(cfg: EvalConfig) -> Any:
    """The camera estimator's settings of ``cfg.metrics``, or ``None`` when not asked."""
    if not cfg.metrics.camera:
        return None
    from cityenv.eval.camera import SfMSettings

    return SfMSettings(
        method=cfg.metrics.camera_method, segment_frames=cfg.metrics.camera_segment_frames
    )


def _write_clip(
    folder: Path, plan: ClipPlan, replay: Replay, spec: BenchSpec, camera: Any = None
) -> None:
    """``<clip>.npz`` (frames), then ``<clip>.json`` (numbers), each written atomically;
    ``camera``: the camera estimator's ``SfMSettings`` (``True``: its defaults; ``None`` or
    ``False``: no camera errors)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{plan.clip_id}.tmp.npz"
    np.savez_compressed(tmp, frames=replay.frames)
    os.replace(tmp, folder / f"{plan.clip_id}.npz")
    numbers = _clip_numbers(plan, replay, spec)
    if camera is not None and camera is not False:
        numbers["camera"] = _camera_numbers(replay, None if camera is True else camera)
    _atomic_write(folder / f"{plan.clip_id}.json", json.dumps(numbers))


def _camera_numbers(replay: Replay, settings: Any = None) -> dict[str, Any]:
    """RotErr / TransErr of the generated window and of its ground truth (the floor), by the
    same estimator."""
    from cityenv.eval.camera import camera_errors

    w = replay.window
    generated = camera_errors(replay.frames, w.trajectory, w.camera, settings)
    floor = camera_errors(w.rgb, w.trajectory, w.camera, settings, ignore=w.dynamic)
    return _finite({"generated": generated.to_dict(), "ground_truth": floor.to_dict()})


def _clip_numbers(plan: ClipPlan, replay: Replay, spec: BenchSpec) -> dict[str, Any]:
    """Every number of one clip (JSON-ready; NaN as null)."""
    w, scored = replay.window, replay.predicted
    metrics = frame_metrics(replay.frames[scored], w.rgb[scored], w.dynamic[scored])
    distance = travelled(w.trajectory.positions)
    per_frame = metrics.as_dict()
    return _finite({
        "clip_id": plan.clip_id,
        "index": plan.index,
        "kind": w.info.kind,
        "weather": w.info.weather,
        "start_time": w.info.start_time.isoformat(),
        "caption": w.caption if spec.prompt == "caption" else "",
        "frames": w.frames.tolist(),
        "scored_frames": w.frames[scored].tolist(),
        "distance_m": distance[scored].tolist(),
        "length_m": float(distance[-1]),
        "size": [w.camera.width, w.camera.height],
        "chunk_frames": replay.chunk_frames,
        "seed": spec.seed + plan.index,
        "mean": metrics.means(),
        "per_frame": {k: v.tolist() for k, v in per_frame.items()},
        "per_distance": per_distance(per_frame, distance[scored], spec.distance_window_m),
        "references": replay.references,
        "timings": replay.timings,
        "chunk_info": replay.chunk_info,
    })  # fmt: skip


def _row_summary(
    out: Path,
    row: Row,
    plans: list[ClipPlan],
    replayers: dict[bool, Replayer],
    spec: BenchSpec,
    row_metrics: Sequence[RowMetric],
) -> None:
    """``rows/<row>/summary.json``: the plug-ins' row-level metrics and why any is missing."""
    folder = out / "rows" / row.name
    metrics: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    if row_metrics:
        generated = [np.load(folder / f"{p.clip_id}.npz")["frames"][1:] for p in plans]
        replayer = replayers[row.replay.cross_temporal]
        truth = [
            replayer.window(p.clip_id, p.start, p.num_frames, spec.frame_size).rgb[1:]
            for p in plans
        ]
        for plugin in row_metrics:
            metrics.update(plugin.compute(generated, truth))
            reasons.update(plugin.not_computed)
    metrics.update(_camera_summary(folder, plans, reasons))
    summary = {"row": row.name, "metrics": metrics, "not_computed": reasons}
    _atomic_write(folder / "summary.json", json.dumps(_finite(summary), indent=2) + "\n")


def _camera_summary(folder: Path, plans: list[ClipPlan], reasons: dict[str, str]) -> dict:
    """Mean RotErr (degrees) / TransErr over the clips the estimator could follow, the ground
    truth's floor, and the fraction of segments scored (``camera_segments``, ``_floor``);
    ``None`` with the reason when no clip was measured or the estimator followed none."""
    clips = [json.loads((folder / f"{p.clip_id}.json").read_text()) for p in plans]
    measured = [c["camera"] for c in clips if "camera" in c]
    if not measured:
        reasons.setdefault("rot_err", "not asked: metrics.camera=true (pycolmap SfM per window)")
        reasons.setdefault("trans_err", reasons["rot_err"])
        return {}
    out: dict[str, float | None] = {}
    method = measured[0]["generated"].get("method", "sfm")
    who = "SfM" if method == "sfm" else "the two-view estimator"
    for source, suffix in (("generated", ""), ("ground_truth", "_floor")):
        ok = [m[source] for m in measured if m[source]["rot_err"] is not None]
        out["camera_segments" + suffix] = _scored_fraction([m[source] for m in measured])
        if ok:
            out["rot_err" + suffix] = float(np.degrees(np.mean([m["rot_err"] for m in ok])))
            out["trans_err" + suffix] = float(np.mean([m["trans_err"] for m in ok]))
            out["camera_clips" + suffix] = len(ok)
        else:
            out["rot_err" + suffix] = out["trans_err" + suffix] = None
            why = measured[0][source]["reason"] or "the estimator failed"
            reasons["rot_err" + suffix] = reasons["trans_err" + suffix] = (
                f"{who} followed none of {len(measured)} windows ({why})"
            )
    return out


def _scored_fraction(windows: list[dict[str, Any]]) -> float | None:
    """Fraction of the windows' segments the camera estimator scored (a window scored whole is
    one segment, scored when it has numbers)."""
    total = scored = 0
    for m in windows:
        count, done = m.get("segments", 1), m.get("segments_scored")
        total += count
        scored += done if done is not None else (count if m["rot_err"] is not None else 0)
    return scored / total if total else None


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _finite(value: Any) -> Any:
    """``value`` with NaN/inf floats as ``None`` (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return _finite(value.item())
    return value
