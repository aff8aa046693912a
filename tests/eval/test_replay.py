"""Replaying held-out clip windows with the warp and diffusion world models on a generated town."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from cityenv.citydb.clips import ClipStore
from cityenv.citydb.reader import CityDB
from cityenv.errors import EvaluationError
from cityenv.eval.metrics import PSNR_CAP_DB, frame_metrics
from cityenv.eval.replay import Replayer, ReplaySettings
from cityenv.worldmodel.diffusion import DiffusionWorldModel
from cityenv.worldmodel.warp import WarpWorldModel


def _replayer(data: Path, citydb: Path | None = None, **settings) -> Replayer:
    store = ClipStore(data / "clips", split="test")
    return Replayer(citydb or data / "citydb", store, ReplaySettings(**settings))


def _static_psnr(replay, frames: np.ndarray | None = None) -> float:
    w, scored = replay.window, replay.predicted
    frames = replay.frames if frames is None else frames
    return frame_metrics(frames[scored], w.rgb[scored], w.dynamic[scored]).means()["psnr_static"]


def test_a_replay_has_the_ground_truths_frames_and_poses(eval_data):
    replayer = _replayer(eval_data)
    clip_id = replayer.store.clip_ids()[0]
    window = replayer.window(clip_id, start=4, num_frames=9)
    replay = replayer.replay(WarpWorldModel(), window, chunk_frames=4)
    assert window.frames.tolist() == list(range(4, 13))
    assert replay.frames.shape == window.rgb.shape == (9, 64, 64, 3)
    assert replay.frames.dtype == np.uint8
    np.testing.assert_array_equal(replay.frames[0], window.rgb[0])  # the start image
    whole = replayer.store.read_trajectory(clip_id).matrices[4:13]
    np.testing.assert_array_equal(replay.poses, whole)
    assert replay.warps.shape == (9, 64, 64, 3) and replay.masks.shape == (9, 64, 64)
    assert not replay.masks[0].any() and replay.masks[1:].mean() > 0.05
    assert len(replay.references) == 2 and all(replay.references)
    assert set(replay.timings) == {"reset", "retrieval", "load", "generate", "total"}
    assert len(replay.chunk_info) == 2 and replay.chunk_info[0]["model"] == "warp"


def test_references_come_from_other_traversals_and_capture_times(eval_data):
    replayer = _replayer(eval_data)
    db = CityDB.open(eval_data / "citydb")
    for clip_id in replayer.store.clip_ids():
        replay = replayer.replay(WarpWorldModel(), replayer.window(clip_id, 0, 5), 4)
        info = replayer.store.info(clip_id)
        for view_id in {v for chunk in replay.references for v in chunk}:
            meta = db.load_view(view_id).metadata
            assert meta.traversal_id != info.traversal_id
            assert abs(meta.capture_time - info.start_time) > timedelta(minutes=30)
    # a window around every capture time leaves nothing: the warp falls back to neutral frames
    none = _replayer(eval_data, time_window_s=1e9)
    replay = none.replay(WarpWorldModel(), none.window(none.store.clip_ids()[0], 0, 5), 4)
    assert replay.references == [[]] and replay.chunk_info[0]["neutral_frames"] == 4


def test_replaying_against_the_clips_own_frames_is_the_identity(eval_data, mirror_db):
    """Each frame's nearest reference is the frame itself, at its own pose: warped, it comes back
    unchanged, so the replay is exact. Off by one frame or pose anywhere, it would not be."""
    replayer = _replayer(eval_data, mirror_db, num_references=4)
    for clip_id in replayer.store.clip_ids():
        window = replayer.window(clip_id, start=0, num_frames=17)
        replay = replayer.replay(WarpWorldModel(), window, chunk_frames=4)
        metrics = frame_metrics(replay.frames[1:], window.rgb[1:], window.dynamic[1:])
        assert metrics.psnr_static.min() > 50, metrics.psnr_static
        grey = np.full_like(window.rgb, 128)
        assert _static_psnr(replay, grey) < 25


def test_the_warp_beats_a_constant_grey_frame_on_the_town(eval_data):
    replayer = _replayer(eval_data)
    warp, grey = [], []
    for clip_id in replayer.store.clip_ids():
        replay = replayer.replay(WarpWorldModel(), replayer.window(clip_id), chunk_frames=4)
        warp.append(_static_psnr(replay))
        grey.append(_static_psnr(replay, np.full_like(replay.frames, 128)))
    assert np.mean(warp) > np.mean(grey) + 0.5, (warp, grey)
    assert np.mean(warp) < PSNR_CAP_DB


def test_the_diffusion_model_replays_at_its_own_chunk_length(eval_data):
    model = DiffusionWorldModel.from_preset(
        "tiny", device="cpu", chunk_frames=4, history=1, max_references=2
    )
    replayer = _replayer(eval_data, num_references=2)
    window = replayer.window(replayer.store.clip_ids()[0], start=0, num_frames=5)
    replay = replayer.replay(model, window, seed=3)
    assert replay.chunk_frames == 4
    assert replay.frames.shape == (5, 64, 64, 3) and replay.frames.dtype == np.uint8
    np.testing.assert_array_equal(replay.frames[0], window.rgb[0])
    assert replay.chunk_info[0]["prompt_used"] and replay.chunk_info[0]["references_used"] >= 1
    assert np.isfinite(_static_psnr(replay))


# --- bad input ------------------------------------------------------------------------------------
def test_windows_that_are_not_whole_chunks_or_lie_outside_the_clip_are_typed_errors(eval_data):
    replayer = _replayer(eval_data)
    clip_id = replayer.store.clip_ids()[0]
    window = replayer.window(clip_id, 0, 8)
    with pytest.raises(EvaluationError, match=r"1 \+ n x 4 frames, got 8; use a window of 5 or 9"):
        replayer.replay(WarpWorldModel(), window, chunk_frames=4)
    with pytest.raises(EvaluationError, match="needs a chunk length >= 1"):
        replayer.replay(WarpWorldModel(), window)
    with pytest.raises(EvaluationError, match="got frames 10 to 19; pick a shorter window"):
        replayer.window(clip_id, 10, 10)


def test_a_citydb_of_another_anchor_is_a_typed_error(eval_data, tmp_path):
    clips = Path(shutil.copytree(eval_data / "clips", tmp_path / "clips"))
    marker = json.loads((clips / "store.json").read_text())
    marker["anchor"]["lon"] += 0.01
    (clips / "store.json").write_text(json.dumps(marker))
    with pytest.raises(EvaluationError, match="poses are in different ENU frames"):
        Replayer(eval_data / "citydb", clips)
