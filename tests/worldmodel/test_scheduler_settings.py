"""A saved world model's scheduler settings that cannot sample are refused at load.

A real tiny model's folder written by ``save_pretrained``, its ``scheduler_config.json``
damaged on disk: a :class:`CheckpointError` at ``from_pretrained`` names the value and the fix
(``num_train_timesteps: 0`` was an ``IndexError`` inside diffusers; ``shift: -1`` loaded).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cityenv.errors import CheckpointError
from cityenv.worldmodel.diffusion import DiffusionWorldModel

SCHEDULER = "scheduler/scheduler_config.json"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A tiny model's folder, written once; each test damages a copy."""
    model = DiffusionWorldModel.from_preset("tiny", device="cpu")
    return model.save_pretrained(tmp_path_factory.mktemp("saved") / "wm")


BAD = [
    ({"num_train_timesteps": 0}, r"num_train_timesteps must be a whole number >= 1, got 0"),
    ({"num_train_timesteps": 2.5}, r"num_train_timesteps must be a whole number >= 1, got 2\.5"),
    ({"shift": -1}, r"shift must be a finite number > 0, got -1; restore the value"),
    ({"shift": 0.0}, r"shift must be a finite number > 0, got 0\.0"),
    ({"shift": "1"}, r"shift must be a finite number > 0, got '1'"),
]


@pytest.mark.parametrize(("change", "match"), BAD, ids=[str(c) for c, _ in BAD])
def test_scheduler_settings_that_cannot_sample_fail_at_load(saved, tmp_path, change, match):
    folder = Path(shutil.copytree(saved, tmp_path / "wm"))
    config = json.loads((folder / SCHEDULER).read_text())
    config.update(change)
    (folder / SCHEDULER).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=match):
        DiffusionWorldModel.from_pretrained(folder, device="cpu")


def test_a_scheduler_config_that_is_not_an_object_is_named(saved, tmp_path):
    folder = Path(shutil.copytree(saved, tmp_path / "wm"))
    (folder / SCHEDULER).write_text("[1000]")
    with pytest.raises(CheckpointError, match=r"must hold a JSON object of scheduler settings"):
        DiffusionWorldModel.from_pretrained(folder, device="cpu")


def test_the_saved_scheduler_settings_load(saved, tmp_path):
    folder = Path(shutil.copytree(saved, tmp_path / "wm"))
    config = json.loads((folder / SCHEDULER).read_text())
    config.update(num_train_timesteps=500, shift=3.0)
    (folder / SCHEDULER).write_text(json.dumps(config))
    model = DiffusionWorldModel.from_pretrained(folder, device="cpu")
    assert model.scheduler.config.num_train_timesteps == 500
