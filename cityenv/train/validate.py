"""The training run's validation pass: held-out test clips replayed by the model and the warp.

:class:`Validator` is the ``validate(step, weights, writer)`` hook of
:class:`~cityenv.train.loop.Trainer` (called on rank 0). Each pass:

1. builds the world model users would get from the weights (the EMA's): the task's ``export``
   into a temporary folder of the run, loaded back as a
   :class:`~cityenv.worldmodel.diffusion.DiffusionWorldModel`;
2. replays a fixed, seeded choice of ``clips`` windows of the clip store's ``test`` split
   (held-out areas), ``1 + chunks x L`` frames each, with that model and with the
   :class:`~cityenv.worldmodel.warp.WarpWorldModel` baseline, through City-Bench's replay
   (:mod:`cityenv.eval.replay`: start frame and caption from the clip, its exact trajectory,
   references from other traversals and capture times). The warp's replays and the ground truth
   do not change from pass to pass and are made once;
3. scores both on the same predicted frames (all but the start frame) with
   :mod:`cityenv.eval.metrics`: PSNR and SSIM, whole and on static pixels;
4. writes TensorBoard scalars (``val/psnr_static_model``, ``val/psnr_static_warp``, ...,
   ``val/seconds``) and a ground truth | warp | model image, and into the run folder
   ``samples/step-<8 digits>.json`` (every number) and ``samples/step-<8 digits>.mp4`` (the
   windows one after the other, ground truth | warp | model side by side).

The pass runs under :func:`torch.random.fork_rng`, so training's random state is as if it had
not run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cityenv.citydb.clips import ClipStore
from cityenv.errors import EvaluationError
from cityenv.eval.metrics import FrameMetrics, frame_metrics, per_distance, travelled
from cityenv.eval.replay import ClipWindow, Replay, Replayer, ReplaySettings
from cityenv.train.loop import TrainTask
from cityenv.worldmodel.checkpoint import load_folder
from cityenv.worldmodel.diffusion import DiffusionWorldModel
from cityenv.worldmodel.settings import SamplingSettings
from cityenv.worldmodel.text import LazyTextEncoder, TextEncoder
from cityenv.worldmodel.warp import WarpWorldModel

__all__ = ["ValidationSettings", "Validator"]

log = logging.getLogger(__name__)

ROWS = ("model", "warp")
"""What is scored, in the order of the scalars' names."""


@dataclass(frozen=True)
class ValidationSettings:
    """What a validation pass replays (``configs/train.yaml``'s ``validation`` group).

    Attributes:
        clips: Test clips replayed per pass (fewer if the store has fewer long enough).
        chunks: Chunks generated per clip window (the window is ``1 + chunks x L`` frames).
        video: Write the side-by-side video.
        seed: Seeds the choice of clips and windows and the model's sampling noise.
        num_references: ``K``, references retrieved per chunk.
        time_window_s: Panoramas captured within this many seconds of a clip are not its
            references (its own traversal never is).
        size: ``(width, height)`` of the frames (``None``: the clips'); training's size.
        distance_window_m: Window of :func:`~cityenv.eval.metrics.per_distance` in the JSON.
    """

    clips: int = 2
    chunks: int = 2
    video: bool = True
    seed: int = 0
    num_references: int = 2
    time_window_s: float = 1800.0
    size: tuple[int, int] | None = None
    distance_window_m: float = 100.0


@dataclass(frozen=True)
class _Plan:
    clip_id: str
    start: int


class Validator:
    """The validation hook of a training run (see the module docstring).

    Args:
        task: The training task (its ``export(folder, weights)`` writes the world model).
        citydb: The CityDB the references come from.
        clips: The clip store; only its ``test`` split is read.
        run_dir: The run folder (``samples/`` is written there).
        chunk_frames: ``L``, the model's chunk length (the warp replays the same chunks).
        settings: What a pass replays.
        device: Where the validation model runs (``None``: CUDA when available).

    Raises:
        EvaluationError: If the store has no test clip of ``1 + chunks x L`` frames or more.
    """

    def __init__(
        self,
        task: TrainTask,
        citydb: str | os.PathLike[str],
        clips: str | os.PathLike[str],
        run_dir: str | os.PathLike[str],
        chunk_frames: int,
        settings: ValidationSettings | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.task = task
        self.citydb, self.clips = Path(citydb), Path(clips)
        self.run_dir = Path(run_dir)
        self.chunk_frames = int(chunk_frames)
        self.settings = s = settings or ValidationSettings()
        self.device = device
        self.window_frames = 1 + s.chunks * self.chunk_frames
        self.plan = _choose(ClipStore(self.clips, split="test"), self.window_frames, s)
        self._replayer: Replayer | None = None
        self._windows: list[ClipWindow] | None = None
        self._warps: list[Replay] | None = None
        self._text_encoder: TextEncoder | None = None

    # --- the hook ------------------------------------------------------------------------------
    def __call__(
        self, step: int, weights: Mapping[str, torch.Tensor], writer: Any = None
    ) -> dict[str, Any]:
        """Validate ``weights`` at ``step``; returns the numbers written to the JSON."""
        start = time.perf_counter()
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            windows, warps = self._ground_truth_and_warp()
            models = self._model_replays(weights, windows)
        report = _report(step, windows, warps, models, self)
        report["seconds"] = time.perf_counter() - start
        self._write(step, report, windows, warps, models, writer)
        means = report["mean"]
        log.info(
            "step %d validation: static PSNR model %.2f dB, warp %.2f dB (%d frames, %.1f s)",
            step, means["model"]["psnr_static"], means["warp"]["psnr_static"],
            report["frames_scored"], report["seconds"],
        )  # fmt: skip
        return report

    # --- replays -------------------------------------------------------------------------------
    def _ground_truth_and_warp(self) -> tuple[list[ClipWindow], list[Replay]]:
        """The windows and the warp's replays of them, made on the first pass."""
        if self._windows is None or self._warps is None:
            s = self.settings
            replay_settings = ReplaySettings(
                num_references=s.num_references, time_window_s=s.time_window_s
            )
            store = ClipStore(self.clips, split="test")
            self._replayer = Replayer(self.citydb, store, replay_settings)
            self._windows = [
                self._replayer.window(p.clip_id, p.start, self.window_frames, s.size)
                for p in self.plan
            ]
            warp = WarpWorldModel()
            self._warps = [self._replayer.replay(warp, w, self.chunk_frames) for w in self._windows]
        return self._windows, self._warps

    def _model_replays(
        self, weights: Mapping[str, torch.Tensor], windows: list[ClipWindow]
    ) -> list[Replay]:
        assert self._replayer is not None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".validate-", dir=self.run_dir) as tmp:
            self.task.export(Path(tmp), weights)
            model = self._load(Path(tmp))
            return [
                self._replayer.replay(model, w, self.chunk_frames, seed=self.settings.seed + i)
                for i, w in enumerate(windows)
            ]

    def _load(self, folder: Path) -> DiffusionWorldModel:
        """The exported world model, sharing one text encoder across passes.

        The training model's own encoder when the task has one (already loaded for training),
        else one made from the first folder's spec: a large encoder (UMT5) is not reloaded at
        every pass.
        """
        parts = load_folder(folder, class_name=DiffusionWorldModel.__name__)
        if self._text_encoder is None:
            trained = getattr(self.task, "model", None)
            shared = getattr(trained, "text_encoder", None)
            self._text_encoder = (
                shared if isinstance(shared, TextEncoder) else LazyTextEncoder(parts.text_encoder)
            )
        return DiffusionWorldModel(
            transformer=parts.transformer,
            vae=parts.vae,
            scheduler=parts.scheduler,
            text_encoder=self._text_encoder,
            settings=SamplingSettings.from_mapping(parts.sampling),
            device=self.device,
        )

    # --- files ---------------------------------------------------------------------------------
    def _write(
        self,
        step: int,
        report: dict[str, Any],
        windows: list[ClipWindow],
        warps: list[Replay],
        models: list[Replay],
        writer: Any,
    ) -> None:
        folder = self.run_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"step-{step:08d}"
        text = json.dumps(_finite(report), indent=2, allow_nan=False)
        (folder / f"{name}.json").write_text(text + "\n")
        if self.settings.video:
            _write_video(folder / f"{name}.mp4", windows, warps, models)
        if writer is not None:
            for row in ROWS:
                for metric, value in report["mean"][row].items():
                    writer.add_scalar(f"val/{metric}_{row}", value, step)
            writer.add_scalar("val/seconds", report["seconds"], step)
            last = _side_by_side(windows[0].rgb[-1:], warps[0].frames[-1:], models[0].frames[-1:])
            writer.add_image("val/sample", last[0], step, dataformats="HWC")
            writer.flush()


def _choose(store: ClipStore, window_frames: int, s: ValidationSettings) -> list[_Plan]:
    """A seeded choice of ``s.clips`` test clips long enough and a window start in each.

    Raises:
        EvaluationError: If no test clip holds ``window_frames`` frames.
    """
    infos = store.clips(split="test")
    fit = [i for i in infos if i.num_frames >= window_frames]
    if not fit:
        longest = max((i.num_frames for i in infos), default=0)
        raise EvaluationError(
            f"validation replays windows of {window_frames} frames (a start frame + "
            f"{s.chunks} chunks) of test clips, but the clip store {store.root} has "
            f"{len(infos)} test clips, the longest of {longest} frames; set validation.chunks "
            "lower, generate longer or more test clips, or validation.every=-1."
        )
    rng = np.random.default_rng(s.seed)
    picked = sorted(rng.choice(len(fit), size=min(s.clips, len(fit)), replace=False))
    plans = []
    for index in picked:
        info = fit[int(index)]
        start = int(rng.integers(0, info.num_frames - window_frames + 1))
        plans.append(_Plan(info.clip_id, start))
    return plans


def _metrics(replay: Replay) -> FrameMetrics:
    """Scores of the predicted frames (the start frame is the condition, not a prediction)."""
    w, scored = replay.window, replay.predicted
    return frame_metrics(replay.frames[scored], w.rgb[scored], w.dynamic[scored])


def _report(
    step: int,
    windows: list[ClipWindow],
    warps: list[Replay],
    models: list[Replay],
    validator: Validator,
) -> dict[str, Any]:
    """Every number of a pass (JSON-ready but for NaN, see :func:`_finite`)."""
    s = validator.settings
    clips, scores = [], {row: [] for row in ROWS}
    for window, warp, model in zip(windows, warps, models, strict=True):
        distance = travelled(window.trajectory.positions)[model.predicted]  # from the start
        entry: dict[str, Any] = {
            "clip_id": window.clip_id,
            "kind": window.info.kind,
            "caption": window.caption,
            "frames": window.frames.tolist(),
            "scored_frames": window.frames[model.predicted].tolist(),
            "distance_m": distance.tolist(),
        }
        for row, replay in (("model", model), ("warp", warp)):
            metrics = _metrics(replay)
            scores[row].append(metrics)
            entry[row] = {
                "mean": metrics.means(),
                "per_frame": {k: v.tolist() for k, v in metrics.as_dict().items()},
                "per_distance": per_distance(metrics.as_dict(), distance, s.distance_window_m),
                "references": replay.references,
                "timings": replay.timings,
            }
        clips.append(entry)
    return {
        "step": int(step),
        "chunk_frames": validator.chunk_frames,
        "window_frames": validator.window_frames,
        "frames_scored": int(sum(len(m.psnr) for m in scores["model"])),
        "mean": {row: FrameMetrics.concatenate(scores[row]).means() for row in ROWS},
        "clips": clips,
        "settings": {**asdict(s), "static": "pixels where the clip's dynamic mask is false"},
    }


def _finite(value: Any) -> Any:
    """``value`` with NaN/inf floats as ``None`` (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _side_by_side(*columns: np.ndarray) -> np.ndarray:
    """uint8 ``(T, H, W, 3)`` videos -> ``(T, H, n x W, 3)``, left to right."""
    return np.concatenate(columns, axis=2)


def _write_video(
    path: Path, windows: list[ClipWindow], warps: list[Replay], models: list[Replay]
) -> None:
    """Every window, ground truth | warp | model, one after the other (H.264 MP4)."""
    from cityenv.rollout import VideoWriter  # the project's one MP4 writer (imageio + ffmpeg)

    fps = windows[0].info.fps
    with VideoWriter(path, fps=fps) as video:
        for window, warp, model in zip(windows, warps, models, strict=True):
            video.append(_side_by_side(window.rgb, warp.frames, model.frames))
