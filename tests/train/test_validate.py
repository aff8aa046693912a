"""The training run's validation pass on held-out test clips (model vs warp, one replay path)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cityenv.citydb.clips import ClipStore
from cityenv.errors import ConfigError, EvaluationError
from cityenv.eval.metrics import frame_metrics
from cityenv.eval.replay import Replayer, ReplaySettings
from cityenv.train.app import run
from cityenv.train.config import (
    CheckpointConfig,
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    ValidationConfig,
    check_config,
)
from cityenv.worldmodel.diffusion import DiffusionWorldModel
from cityenv.worldmodel.warp import WarpWorldModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import TINY_SAMPLING  # noqa: E402

SCALARS = [
    f"val/{metric}_{row}"
    for metric in ("psnr", "psnr_static", "ssim", "ssim_static")
    for row in ("model", "warp")
]


def _config(data: Path, out: Path, steps: int = 2, **validation) -> TrainConfig:
    return TrainConfig(
        out=str(out),
        data=DataConfig(root=str(data)),
        model=ModelConfig(preset="tiny", sampling=dict(TINY_SAMPLING)),
        optim=OptimConfig(steps=steps, lr=1e-3, warmup_steps=1),
        checkpoint=CheckpointConfig(every=steps, keep=2),
        validation=ValidationConfig(**({"chunks": 1} | validation)),
        progress=False,
    )


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    return {t: [(e.step, e.value) for e in events.Scalars(t)] for t in tags}


def test_validation_writes_video_json_and_scalars_and_leaves_training_alone(town_data, tmp_path):
    run_dir = tmp_path / "run"
    run(_config(town_data, run_dir, every=1))  # passes after steps 1 and 2
    samples = run_dir / "samples"
    assert sorted(p.name for p in samples.iterdir()) == [
        "step-00000001.json", "step-00000001.mp4", "step-00000002.json", "step-00000002.mp4",
    ]  # fmt: skip
    report = json.loads((samples / "step-00000002.json").read_text())
    assert report["step"] == 2 and report["window_frames"] == 5
    assert len(report["clips"]) == 2 and report["frames_scored"] == 8
    for row in ("model", "warp"):
        assert all(np.isfinite(v) for v in report["mean"][row].values()), report["mean"]
    for clip in report["clips"]:  # both rows scored on the same ground-truth frames
        assert clip["scored_frames"] == clip["frames"][1:]
        for metric in ("psnr_static", "ssim_static"):
            assert len(clip["model"]["per_frame"][metric]) == len(clip["warp"]["per_frame"][metric])
    reader = imageio.get_reader(samples / "step-00000002.mp4", "ffmpeg")
    video = np.stack([frame for frame in reader])  # not list(): its length hint is inf
    assert video.shape == (2 * 5, 64, 3 * 64, 3)  # two windows, ground truth | warp | model
    scalars = _scalars(run_dir)
    for tag in SCALARS:
        assert [step for step, _ in scalars[tag]] == [1, 2], tag
        assert all(np.isfinite(value) for _, value in scalars[tag]), tag
    assert scalars["val/psnr_static_model"][-1][1] == pytest.approx(
        report["mean"]["model"]["psnr_static"], rel=1e-6
    )
    # the same steps without validation train the very same weights
    run(_config(town_data, tmp_path / "plain", every=-1))
    assert not (tmp_path / "plain" / "samples").exists()
    a = load_file(str(run_dir / "checkpoints/step-00000002/trainable.safetensors"))
    b = load_file(str(tmp_path / "plain/checkpoints/step-00000002/trainable.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    _check_numbers_are_the_benchs(town_data, run_dir, report)


def _check_numbers_are_the_benchs(town_data: Path, run_dir: Path, report: dict) -> None:
    """The JSON's numbers are what the eval replay gives for the same windows: the warp's, and
    the exported EMA model's (the checkpoint's world_model/) with the pass's seeds."""
    store = ClipStore(town_data / "clips", split="test")
    replayer = Replayer(town_data / "citydb", store, ReplaySettings(num_references=2))
    model = DiffusionWorldModel.from_pretrained(
        run_dir / "checkpoints/step-00000002/world_model", device="cpu"
    )
    for i, clip in enumerate(report["clips"]):
        window = replayer.window(clip["clip_id"], clip["frames"][0], len(clip["frames"]))
        for row, world_model, seed in (("warp", WarpWorldModel(), 0), ("model", model, i)):
            replay = replayer.replay(world_model, window, chunk_frames=4, seed=seed)
            got = frame_metrics(replay.frames[1:], window.rgb[1:], window.dynamic[1:])
            np.testing.assert_allclose(got.psnr_static, clip[row]["per_frame"]["psnr_static"])


def test_validation_every_zero_runs_once_at_the_end(town_data, tmp_path):
    run(_config(town_data, tmp_path / "run", steps=2, every=0, clips=1, video=False))
    assert [p.name for p in (tmp_path / "run/samples").iterdir()] == ["step-00000002.json"]


def test_validation_without_long_enough_test_clips_fails_before_training(town_data, tmp_path):
    with pytest.raises(EvaluationError, match=r"windows of 21 frames .* longest of 17 frames"):
        run(_config(town_data, tmp_path / "run", chunks=5))
    assert not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(ConfigError, match="validation.every"):
        check_config(replace(_config(town_data, tmp_path), validation=ValidationConfig(every=-2)))
