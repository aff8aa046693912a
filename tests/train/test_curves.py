"""The training curves export: TensorBoard scalars of a real run -> CSV + PNG."""

from __future__ import annotations

import csv
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from cityenv.errors import ConfigError
from cityenv.train.app import run
from cityenv.train.config import (
    CheckpointConfig,
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    ValidationConfig,
)
from cityenv.train.curves import read_scalars, write_curves

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import TINY_SAMPLING  # noqa: E402


def test_a_runs_scalars_become_a_csv_and_a_plot(town_data, tmp_path):
    cfg = TrainConfig(
        out=str(tmp_path / "run"),
        data=DataConfig(root=str(town_data)),
        model=ModelConfig(preset="tiny", sampling=dict(TINY_SAMPLING)),
        optim=OptimConfig(steps=3, lr=1e-3, warmup_steps=1),
        checkpoint=CheckpointConfig(every=3),
        validation=ValidationConfig(every=-1),
        progress=False,
    )
    result = run(replace(cfg, log_every=1))
    scalars = read_scalars(tmp_path / "run")
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx(result.losses, rel=1e-5)
    png = write_curves([tmp_path / "run"], tmp_path / "docs", name="tiny")
    assert png.stat().st_size > 1000
    with open(tmp_path / "docs/tiny.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["tag"] == "train/loss"]
    assert [(r["run"], int(r["step"])) for r in rows] == [("run", 1), ("run", 2), ("run", 3)]


def test_a_folder_without_events_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="expected a training run folder with tensorboard/"):
        read_scalars(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "cityenv.train.curves", str(tmp_path), "--out", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode != 0 and "tensorboard/" in done.stderr
