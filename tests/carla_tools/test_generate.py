"""End to end: a tiny town -> CityDB of references + clip store, resumable, split by area."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from carla_tools.generate import (
    ClipSettings,
    GenerateSettings,
    ReferenceSettings,
    SimSettings,
    generate,
    merge_shards,
    split_traversals,
)
from carla_tools.generate.captions import caption
from carla_tools.generate.pipeline import make_plan
from carla_tools.generate.split import AreaSplit
from carla_tools.town.layout import LayoutParams, generate_layout
from cityenv.citydb.clips import ClipStore
from cityenv.citydb.reader import CityDB

REPO = Path(__file__).resolve().parents[2]
NOON = datetime(2024, 5, 1, 3, 0, tzinfo=timezone.utc)
DUSK = datetime(2024, 5, 1, 10, 10, tzinfo=timezone.utc)


def tiny(out: Path, **changes) -> GenerateSettings:
    settings = GenerateSettings(
        out=out,
        sim=SimSettings("town", {"seed": 1, "blocks": [1, 1]}),
        references=ReferenceSettings(spacing_m=40.0, size=64, times=(NOON,)),
        clips=ClipSettings(
            count=4,
            num_frames=9,
            fps=10.0,
            width=64,
            height=64,
            times=(DUSK,),
            kinds=("vehicle", "pedestrian", "free"),
        ),  # fmt: skip
        cell_m=50.0,
        test_fraction=0.3,
        progress=False,
    )
    return dataclasses.replace(settings, **changes)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    settings = tiny(tmp_path_factory.mktemp("gen"))
    return settings, generate(settings)


def test_citydb_has_eight_views_per_reference(run):
    settings, summary = run
    assert summary.references == summary.references_rendered > 0
    with CityDB.open(settings.out / "citydb") as db:
        assert db.num_panoramas == summary.references
        assert db.views_per_panorama == 8
        headings = [db.pose(v).heading_deg for v in range(8)]
        steps = (np.diff(headings) % 360.0).round(6)
        np.testing.assert_allclose(steps, 45.0)
        assert abs(db.pose(0).position[2] - 2.5) < 1e-6
        view = db.load_view(3)
        assert view.image.shape == (64, 64, 3) and view.depth.max() > 0


def test_clip_store_reads_back_the_planned_poses(run):
    settings, _ = run
    store = ClipStore(settings.out / "clips")
    index = store.index().to_pylist()
    assert [r["clip_id"] for r in index] == [f"clip-{i:05d}" for i in range(4)]
    with CityDB.open(settings.out / "citydb") as db:
        frame = db.frame
    from carla_tools.backends import make_simulator

    with make_simulator("town", seed=1, blocks=(1, 1)) as sim:
        assert sim.frame == frame
        plan = make_plan(settings, sim.road_network())
    for task, row in zip(plan.clips, index, strict=True):
        clip = store.read_clip(row["clip_id"])
        assert clip.rgb.shape == (9, 64, 64, 3) and clip.rgb.dtype == np.uint8
        assert clip.depth.shape == (9, 64, 64) and clip.depth.min() >= 0
        assert clip.dynamic.shape == (9, 64, 64) and clip.dynamic.dtype == bool
        np.testing.assert_allclose(clip.trajectory.positions, task.trajectory.positions)
        np.testing.assert_allclose(clip.trajectory.matrices, task.trajectory.matrices, atol=1e-9)
        np.testing.assert_allclose(clip.trajectory.timestamps, np.arange(9) / 10.0)
        assert (clip.times[1] - clip.times[0]).total_seconds() == pytest.approx(0.1)
        assert row["kind"] == task.kind and row["num_frames"] == 9
        assert row["caption"].startswith(("a car", "a pedestrian", "a camera"))


def test_rerun_skips_finished_work_and_redoes_partial_clips(run):
    settings, summary = run
    frames = settings.out / "clips" / "clips" / "clip-00001" / "frames.npz"
    before = frames.stat().st_mtime_ns
    again = generate(settings)
    assert again.references_rendered == 0 and again.clips_rendered == 0 and again.renders == 0
    assert frames.stat().st_mtime_ns == before
    # an interrupted run: one clip never finished, one left a partial temp folder
    clips = settings.out / "clips" / "clips"
    os.rename(clips / "clip-00002", clips / ".tmp-clip-00002-999")
    redo = generate(settings)
    assert redo.clips_rendered == 1 and redo.references_rendered == 0
    assert not list(clips.glob(".tmp-*"))
    assert ClipStore(settings.out / "clips").has_clip("clip-00002")


def test_split_keeps_test_areas_out_of_training_references(run):
    settings, _ = run
    split_info = json.loads((settings.out / "split.json").read_text())
    refs = pq.read_table(settings.out / "references" / "part-0000-of-0001.parquet").to_pylist()
    index = ClipStore(settings.out / "clips").index().to_pylist()
    assert {r["split"] for r in refs} == {"train", "test"}
    with CityDB.open(settings.out / "citydb") as db:
        traversals = set(db.traversal_ids)
        excluded = set(split_traversals(db.traversal_ids, "test"))
    for ref in refs:
        assert split_info["cells"][ref["cell"]] == ref["split"]
        assert ref["traversal_id"].endswith(ref["split"])
        # a training consumer's exclusion removes exactly the test-area references
        assert (ref["traversal_id"] in excluded) == (ref["split"] == "test")
    for clip in index:
        assert clip["traversal_id"] not in traversals  # clips never serve as references
        assert clip["start_time"] != refs[0]["capture_time"]  # cross-temporal
        area = AreaSplit(settings.cell_m, settings.seed, settings.test_fraction)
        forced = {tuple(int(v) for v in c[1:].split("_")) for c in split_info["forced_test"]}
        area = dataclasses.replace(area, forced_test=frozenset(forced))
        assert {area.split_of_cell(_cell(c)) for c in clip["cells"]} == {clip["split"]}


def _cell(name: str) -> tuple[int, int]:
    ix, iy = name[1:].split("_")
    return int(ix), int(iy)


def test_shards_partition_the_plan_and_merge(tmp_path):
    layout = generate_layout(1, LayoutParams(blocks=(1, 1)))
    from types import SimpleNamespace

    network = SimpleNamespace(lanes=layout.lanes, intersections=layout.intersections)
    whole = make_plan(tiny(tmp_path), network)
    parts = [make_plan(tiny(tmp_path, shard=i, num_shards=2), network) for i in range(2)]
    ids = sorted(t.panorama_id for p in parts for t in p.references)
    assert ids == sorted(t.panorama_id for t in whole.references)
    assert sorted(t.clip_id for p in parts for t in p.clips) == [t.clip_id for t in whole.clips]
    small = dict(
        references=ReferenceSettings(spacing_m=80.0, size=32, times=(NOON,)),
        clips=ClipSettings(count=2, num_frames=3, width=32, height=32, times=(DUSK,)),
    )
    for i in range(2):
        generate(tiny(tmp_path, shard=i, num_shards=2, **small))
    assert merge_shards(tmp_path, progress=False) > 0
    with CityDB.open(tmp_path / "citydb") as db:
        total = sum(
            CityDB.open(p).num_panoramas for p in (tmp_path / "citydb-shards").glob("shard-*")
        )
        assert db.num_panoramas == total
    assert len(ClipStore(tmp_path / "clips").index()) == 2


def test_cli_runs_with_overrides_and_worker_processes(tmp_path):
    out = tmp_path / "cli"
    cmd = [
        sys.executable, "-m", "carla_tools.generate", "preset=tiny", f"out={out}",
        "workers=1", "clips.count=1", "references.spacing_m=80", "references.size=32",
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "not available" not in result.stderr
    with CityDB.open(out / "citydb") as db:
        assert db.num_panoramas > 0 and db.views_per_panorama == 8
    assert ClipStore(out / "clips").clip_ids() == ["clip-00000"]


def test_contact_sheet_shows_references_and_clips(run):
    from carla_tools.contact_sheet import contact_sheet

    sheet = contact_sheet(run[0].out, references=1, clips=2, size=32, columns=4)
    # a label strip (22 px) and a row of tiles per reference and per clip
    assert sheet.shape == (3 * (22 + 32), 4 * 32, 3) and sheet.dtype == np.uint8


def test_caption_reads_from_settings():
    text = caption("vehicle", "fog", 2.0, 19.5, np.array([0.0, 10.0, 50.0, 90.0]))
    assert (
        text
        == "a car drives along a city street at dusk in thick fog, heading north, turning right"
    )


def test_camera_inside_an_actor_box_is_detected():
    from carla_tools.generate.clips import _inside_actor

    # a car at (10, 0) heading north (yaw 90 deg), scale 1: 4.5 m long along y, 1.8 m wide
    car = np.zeros((1, 11), np.float32)
    car[0, :4] = [10.0, 0.0, 0.0, np.pi / 2]
    car[0, 10] = 1.0
    rows = {"car": car}
    assert _inside_actor(rows, np.array([10.0, 2.0, 1.6]))  # in the car, 2 m ahead of its centre
    assert not _inside_actor(rows, np.array([12.0, 0.0, 1.6]))  # 2 m to its side: clear
    assert not _inside_actor(rows, np.array([10.0, 0.0, 3.0]))  # above its roof
