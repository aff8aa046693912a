"""What a world-model folder records about its training (``"trained"`` in config.json), and the
frame size and chunk length a model that records them accepts."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

from cityenv.errors import CheckpointError, ShapeMismatchError
from cityenv.geometry.camera import PinholeCamera
from cityenv.worldmodel.checkpoint import TrainedOn
from cityenv.worldmodel.diffusion import DiffusionWorldModel

RECORD = TrainedOn(frame_size=(48, 32), chunk_frames=8, stage="transformer", steps=7)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model saved with :data:`RECORD`."""
    model = DiffusionWorldModel.from_preset("tiny", device="cpu")
    model.trained = RECORD
    return model.save_pretrained(tmp_path_factory.mktemp("trained") / "wm")


def _with_trained(saved: Path, tmp_path: Path, value: object) -> Path:
    """A copy of ``saved`` whose config.json's "trained" entry is ``value``."""
    import shutil

    folder = Path(shutil.copytree(saved, tmp_path / "wm"))
    meta = json.loads((folder / "config.json").read_text())
    meta["trained"] = value
    (folder / "config.json").write_text(json.dumps(meta))
    return folder


def test_the_record_round_trips(saved: Path, tmp_path: Path) -> None:
    meta = json.loads((saved / "config.json").read_text())
    assert meta["trained"] == {
        "frame_size": [48, 32],
        "chunk_frames": 8,
        "stage": "transformer",
        "steps": 7,
    }
    loaded = DiffusionWorldModel.from_pretrained(saved, device="cpu")
    assert loaded.trained == RECORD
    assert loaded.native_size == (48, 32)
    again = json.loads((loaded.save_pretrained(tmp_path / "again") / "config.json").read_text())
    assert again["trained"] == meta["trained"]


def test_a_partial_record_writes_only_what_it_knows() -> None:
    assert TrainedOn(chunk_frames=12).as_dict() == {"chunk_frames": 12}
    assert TrainedOn.from_mapping({"chunk_frames": 12, "frame_size": None}) == TrainedOn(
        chunk_frames=12
    )


def test_folders_without_a_record_load_as_before(tmp_path: Path) -> None:
    model = DiffusionWorldModel.from_preset("tiny", device="cpu")
    assert model.trained is None and model.native_size is None
    folder = model.save_pretrained(tmp_path / "old")
    assert "trained" not in json.loads((folder / "config.json").read_text())
    loaded = DiffusionWorldModel.from_pretrained(folder, device="cpu")
    assert loaded.trained is None and loaded.native_size is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded.check_settings(PinholeCamera.from_fov(64, 96, 90.0), 12)  # any multiple of 16


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ([48, 32], r"'trained' must be a mapping"),
        ({"frame_size": [48]}, r"trained\.frame_size must be \[width, height\]"),
        ({"frame_size": [48, 0]}, r"trained\.frame_size must be .* got list \[48, 0\]"),
        ({"frame_size": [48.5, 32]}, r"trained\.frame_size"),
        ({"frame_size": "48x32"}, r"trained\.frame_size"),
        ({"chunk_frames": 0}, r"trained\.chunk_frames must be a whole number >= 1, got int 0"),
        ({"chunk_frames": "12"}, r"trained\.chunk_frames .* got str '12'"),
        ({"chunk_frames": True}, r"trained\.chunk_frames"),
        ({"stage": ""}, r"trained\.stage must be a non-empty string"),
        ({"steps": -1}, r"trained\.steps must be a whole number >= 0"),
        ({"frame_sizes": [48, 32]}, r"got 'frame_sizes'\. Did you mean 'frame_size'\?"),
    ],
)
def test_a_bad_record_is_refused_naming_the_file_and_key(
    saved: Path, tmp_path: Path, value: object, match: str
) -> None:
    folder = _with_trained(saved, tmp_path, value)
    with pytest.raises(CheckpointError, match=match) as caught:
        DiffusionWorldModel.from_pretrained(folder, device="cpu")
    assert str(folder / "config.json") in str(caught.value)


def test_a_recording_model_refuses_another_frame_size(saved: Path) -> None:
    model = DiffusionWorldModel.from_pretrained(saved, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.check_settings(PinholeCamera.from_fov(48, 32, 90.0), 8)  # what it was trained on
    message = (
        f"this model ({saved}) was trained on 48 x 32 frames in 8-frame chunks; got 64 x 64 "
        "frames: make the env with width=48, height=32 (or leave width and height unset: the "
        "model's own size)."
    )
    with pytest.raises(ShapeMismatchError, match=re.escape(message)):
        model.check_settings(PinholeCamera.from_fov(64, 64, 90.0), 8)


def test_a_recording_model_refuses_another_chunk_length(saved: Path) -> None:
    model = DiffusionWorldModel.from_pretrained(saved, device="cpu")
    with pytest.raises(
        ShapeMismatchError,
        match=r"in 8-frame chunks; got 12-frame chunks: make the env with chunk_length=8\.$",
    ):
        model.check_settings(PinholeCamera.from_fov(48, 32, 90.0), 12)
    with pytest.raises(
        ShapeMismatchError,
        match=r"got 64 x 64 frames in 4-frame chunks: make the env with width=48, height=32, "
        r"chunk_length=8 \(",
    ):
        model.check_settings(PinholeCamera.from_fov(64, 64, 90.0), 4)


def test_the_record_is_checked_before_the_frame_multiple(saved: Path) -> None:
    """A size the VAE cannot take is answered with the size to use, not a multiple of 16."""
    model = DiffusionWorldModel.from_pretrained(saved, device="cpu")
    with pytest.raises(ShapeMismatchError, match=r"got 72 x 64 frames: make the env with width=48"):
        model.check_settings(PinholeCamera.from_fov(72, 64, 90.0), 8)
