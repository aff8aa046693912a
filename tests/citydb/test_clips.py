"""The clip store reader in the library: a tiny store written by the real generator, read back
through :mod:`cityenv.citydb.clips` (frames, windows, poses, masks, split filters, errors)."""

from __future__ import annotations

import ast
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from carla_tools.backends import make_simulator
from carla_tools.generate import (
    ClipSettings,
    ClipStoreWriter,
    GenerateSettings,
    ReferenceSettings,
    SimSettings,
    generate,
)
from carla_tools.generate.pipeline import make_plan
from cityenv.citydb import ClipStore as ExportedClipStore
from cityenv.citydb.clips import (
    CLIP_KINDS,
    INDEX_SCHEMA,
    Clip,
    ClipInfo,
    ClipStore,
    reference_traversal,
    split_traversals,
)
from cityenv.errors import (
    ClipNotFoundError,
    ClipSplitError,
    ClipStoreError,
    ClipStoreFormatError,
    ClipStoreNotFoundError,
    FrameRangeError,
    ShapeMismatchError,
    UnknownNameError,
)
from cityenv.geometry.pose import Trajectory

NOON = datetime(2024, 5, 1, 3, 0, tzinfo=timezone.utc)
DUSK = datetime(2024, 5, 1, 10, 10, tzinfo=timezone.utc)
FRAMES, WIDTH, HEIGHT = 9, 48, 32


def tiny_settings(out: Path) -> GenerateSettings:
    """A 1 x 1-block town, few references, 6 clips of 9 frames at 48 x 32 (about a second)."""
    return GenerateSettings(
        out=out,
        sim=SimSettings("town", {"seed": 1, "blocks": [1, 1]}),
        references=ReferenceSettings(spacing_m=80.0, size=32, times=(NOON,)),
        clips=ClipSettings(
            count=6,
            num_frames=FRAMES,
            fps=10.0,
            width=WIDTH,
            height=HEIGHT,
            times=(DUSK,),
            kinds=("vehicle", "pedestrian", "free"),
        ),  # fmt: skip
        cell_m=50.0,
        test_fraction=0.3,
        progress=False,
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    settings = tiny_settings(tmp_path_factory.mktemp("clips"))
    generate(settings)
    with make_simulator("town", seed=1, blocks=(1, 1)) as sim:
        plan = make_plan(settings, sim.road_network())
    return settings.out / "clips", {t.clip_id: t for t in plan.clips}


@pytest.fixture
def store(generated):
    return ClipStore(generated[0])


@pytest.fixture
def copy(generated, tmp_path):
    """A private copy of the store, for tests that damage it."""
    return Path(shutil.copytree(generated[0], tmp_path / "clips"))


# --- listing ----------------------------------------------------------------------------------
def test_index_lists_every_clip_sorted(store, generated):
    _, tasks = generated
    assert store.clip_ids() == sorted(tasks) == [f"clip-{i:05d}" for i in range(6)]
    assert store.index().schema.equals(INDEX_SCHEMA) and len(store) == 6
    assert ExportedClipStore is ClipStore


def test_clips_are_typed_rows(store, generated):
    _, tasks = generated
    for info in store.clips():
        task = tasks[info.clip_id]
        assert isinstance(info, ClipInfo)
        assert (info.kind, info.split, info.weather) == (task.kind, task.split, task.weather)
        assert info.start_time == task.start_time and info.start_time.tzinfo is not None
        assert info.traversal_id == info.clip_id and info.caption.startswith("a ")
        assert (info.num_frames, info.fps) == (FRAMES, 10.0)
        assert (info.camera.width, info.camera.height) == (WIDTH, HEIGHT)
        assert info.camera == task.camera and info.cells
        assert ClipInfo.from_row(info.to_row()) == info
        assert store.info(info.clip_id) == info


def test_split_and_kind_filters(store):
    train, test = store.clips(split="train"), store.clips(split="test")
    assert train and test, "the tiny store must hold clips of both splits"
    assert {c.split for c in train} == {"train"} and {c.split for c in test} == {"test"}
    assert sorted(c.clip_id for c in train + test) == store.clip_ids()
    vehicles = store.clip_ids(kind="vehicle")
    assert vehicles and all(store.info(c).kind == "vehicle" for c in vehicles)
    both = store.clip_ids(split="train", kind="free")
    assert set(both) == set(store.clip_ids(split="train")) & set(store.clip_ids(kind="free"))
    assert set(CLIP_KINDS) == {c.kind for c in store.clips()}


def test_unknown_split_or_kind_says_did_you_mean(store):
    with pytest.raises(UnknownNameError, match=r"Did you mean 'vehicle'\?"):
        store.clips(kind="vehical")
    with pytest.raises(UnknownNameError, match=r"split must be one of \['test', 'train'\]"):
        store.clips(split="val")
    with pytest.raises(UnknownNameError, match=r"Did you mean 'train'\?"):
        ClipStore(store.root, split="trian")


def test_a_store_opened_for_train_never_reads_test_clips(generated):
    root, _ = generated
    everything = ClipStore(root)
    train = ClipStore(root, split="train")
    assert train.clip_ids() == everything.clip_ids(split="train")
    test_clip = everything.clip_ids(split="test")[0]
    for read in (train.info, train.read_frames, train.read_clip, train.read_trajectory):
        with pytest.raises(ClipSplitError, match=r"in split 'test'.*opened for split 'train'"):
            read(test_clip)
    with pytest.raises(ClipSplitError, match="opened for split 'train'"):
        train.index(split="test")
    assert train.read_clip(train.clip_ids()[0], range(2)).info.split == "train"


# --- one clip -----------------------------------------------------------------------------------
def test_read_clip_returns_frames_masks_poses_and_times(store, generated):
    _, tasks = generated
    for clip_id, task in tasks.items():
        clip = store.read_clip(clip_id)
        assert isinstance(clip, Clip) and len(clip) == FRAMES
        assert clip.rgb.shape == (FRAMES, HEIGHT, WIDTH, 3) and clip.rgb.dtype == np.uint8
        assert clip.depth.shape == (FRAMES, HEIGHT, WIDTH) and clip.depth.dtype == np.float32
        assert clip.depth.min() >= 0 and clip.depth.max() > 0
        assert clip.dynamic.shape == (FRAMES, HEIGHT, WIDTH) and clip.dynamic.dtype == bool
        assert isinstance(clip.trajectory, Trajectory)
        np.testing.assert_allclose(clip.trajectory.positions, task.trajectory.positions)
        np.testing.assert_allclose(clip.trajectory.matrices, task.trajectory.matrices, atol=1e-9)
        np.testing.assert_allclose(clip.trajectory.timestamps, np.arange(FRAMES) / 10.0)
        assert clip.times[0] == clip.info.start_time
        assert (clip.times[-1] - clip.times[0]).total_seconds() == pytest.approx(0.8)
        assert clip.camera == task.camera and clip.caption == clip.info.caption


def test_a_window_reads_the_same_frames_as_the_whole_clip(store):
    clip_id = store.clip_ids()[0]
    whole = store.read_clip(clip_id)
    window = store.read_clip(clip_id, range(2, 7), depth=False)
    assert window.frames.tolist() == [2, 3, 4, 5, 6] and window.depth is None
    np.testing.assert_array_equal(window.rgb, whole.rgb[2:7])
    np.testing.assert_array_equal(window.dynamic, whole.dynamic[2:7])
    # timestamps keep their place in the clip, so a window knows where it starts
    np.testing.assert_allclose(window.trajectory.timestamps, whole.trajectory.timestamps[2:7])
    np.testing.assert_allclose(window.trajectory.matrices, whole.trajectory.matrices[2:7])
    assert window.times == whole.times[2:7]
    last = store.read_clip(clip_id, slice(-2, None), dynamic=False)
    assert last.frames.tolist() == [7, 8] and last.dynamic is None


def test_frames_in_any_order_and_single_arrays(store):
    clip_id = store.clip_ids()[1]
    whole = store.read_clip(clip_id)
    picks = [8, 0, 3, 3, -1]  # e.g. a sink frame after its window, repeated frames
    np.testing.assert_array_equal(store.read_frames(clip_id, picks), whole.rgb[picks])
    np.testing.assert_array_equal(store.read_depth(clip_id, picks), whole.depth[picks])
    np.testing.assert_array_equal(store.read_dynamic(clip_id, picks), whole.dynamic[picks])
    np.testing.assert_array_equal(store.read_frames(clip_id), whole.rgb)
    assert store.read_frames(clip_id, []).shape == (0, HEIGHT, WIDTH, 3)
    assert store.read_times(clip_id) == whole.times


def test_frames_outside_the_clip_are_refused(store):
    clip_id = store.clip_ids()[0]
    with pytest.raises(FrameRangeError, match=r"expected frames in \[0, 9\).*got \[9\]"):
        store.read_frames(clip_id, [0, 9])
    with pytest.raises(FrameRangeError, match="expected frame bounds"):
        store.read_clip(clip_id, slice(4, 20))
    with pytest.raises(FrameRangeError, match="increasing frame numbers"):
        store.read_clip(clip_id, [3, 2])
    with pytest.raises(IndexError):  # the builtin it refines
        store.read_dynamic(clip_id, [-10])


# --- errors ---------------------------------------------------------------------------------------
def test_a_folder_without_a_store_says_how_to_make_one(tmp_path):
    with pytest.raises(ClipStoreNotFoundError, match=r"python -m carla_tools\.generate"):
        ClipStore(tmp_path)
    with pytest.raises(FileNotFoundError):
        ClipStore(tmp_path / "missing")


def test_another_format_version_is_refused(copy):
    (copy / "store.json").write_text(json.dumps({"format": "cityenv-clips", "version": 99}))
    with pytest.raises(ClipStoreFormatError, match="expected a cityenv-clips v1 store"):
        ClipStore(copy)
    (copy / "store.json").write_text("{not json")
    with pytest.raises(ClipStoreFormatError, match="expected JSON"):
        ClipStore(copy)


def test_an_unknown_clip_says_how_to_list_them(store):
    with pytest.raises(ClipNotFoundError, match=r"no complete clip 'clip-99999'.*clip_ids\(\)"):
        store.read_clip("clip-99999")
    with pytest.raises(ClipNotFoundError, match="expected a clip id"):
        store.info("../clips")
    assert not store.has_clip("clip-99999") and store.has_clip("clip-00000")


def test_malformed_clip_files_are_format_errors(copy):
    folder = copy / "clips" / "clip-00000"
    (folder / "clip.json").write_text("[]")
    with pytest.raises(ClipStoreFormatError, match="clip.json"):
        ClipStore(copy).info("clip-00000")
    folder = copy / "clips" / "clip-00001"
    with np.load(folder / "frames.npz") as z:
        arrays = dict(z)
    np.savez_compressed(folder / "frames.npz", rgb=arrays["rgb"][:, :, :-1])
    reader = ClipStore(copy)
    with pytest.raises(ClipStoreFormatError, match=r"of shape \(9, 32, 48, 3\) uint8"):
        reader.read_frames("clip-00001")
    with pytest.raises(ClipStoreFormatError, match=r"expected an array 'depth'.*\['rgb'\]"):
        reader.read_depth("clip-00001")
    (folder / "frames.npz").write_bytes(b"not a zip")
    with pytest.raises(ClipStoreFormatError, match="expected a .npz archive"):
        reader.read_frames("clip-00001", [0])
    with pytest.raises(ClipStoreError):  # the family's base class catches them all
        reader.read_clip("clip-00001")


def test_a_damaged_index_part_is_a_format_error(copy):
    part = next((copy / "index").glob("part-*.parquet"))
    part.write_bytes(b"PAR1 broken")
    with pytest.raises(ClipStoreFormatError, match="expected index parts"):
        ClipStore(copy).clip_ids()


# --- the writer and the reader agree -------------------------------------------------------------
def test_writer_round_trip_is_lossless_but_for_float16_depth(tmp_path, store):
    rng = np.random.default_rng(0)
    info = store.info(store.clip_ids()[0])
    trajectory = store.read_trajectory(info.clip_id)
    rgb = rng.integers(0, 256, (FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    depth = rng.uniform(0.0, 200.0, (FRAMES, HEIGHT, WIDTH)).astype(np.float32)
    dynamic = rng.random((FRAMES, HEIGHT, WIDTH)) < 0.3
    writer = ClipStoreWriter(tmp_path / "store")
    writer.write_clip(info.to_row(), rgb, depth, dynamic, trajectory)
    writer.write_index([info.clip_id])
    clip = ClipStore(tmp_path / "store").read_clip(info.clip_id)
    np.testing.assert_array_equal(clip.rgb, rgb)
    np.testing.assert_array_equal(clip.dynamic, dynamic)
    np.testing.assert_allclose(clip.depth, depth, rtol=2**-11)
    np.testing.assert_allclose(clip.trajectory.matrices, trajectory.matrices, atol=1e-12)
    assert clip.info == info
    with pytest.raises(ShapeMismatchError, match="one per pose"):
        writer.write_clip(info.to_row(), rgb[:2], depth, dynamic, trajectory)
    row = info.to_row()
    del row["caption"]
    with pytest.raises(ClipStoreFormatError, match=r"without \['caption'\]"):
        writer.write_clip(row, rgb, depth, dynamic, trajectory)


def test_reference_traversals_of_a_split():
    ids = [reference_traversal("20240501T0300Z", s) for s in ("train", "test")] + ["drive-1"]
    assert split_traversals(ids, "test") == ["ref-20240501T0300Z-test"]
    with pytest.raises(UnknownNameError, match=r"Did you mean 'test'\?"):
        split_traversals(ids, "tset")


def test_the_reader_imports_only_the_library_below_it():
    """The clip store is library data: its reader needs no ``carla_tools`` (nor any cityenv
    module above ``geometry``, ``errors`` and ``cache``)."""
    import cityenv.citydb.clips as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {
        alias.name if isinstance(node, ast.Import) else node.module
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (node.names if isinstance(node, ast.Import) else [node])
    }
    ours = {m for m in imported if m.split(".")[0] in ("cityenv", "carla_tools", "policies")}
    allowed = ("cityenv.geometry", "cityenv.errors", "cityenv.cache")
    assert all(m.startswith(allowed) for m in ours), ours
