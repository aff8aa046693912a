"""Write/read round trips, appends, codecs and bad input of the CityDB storage format."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from cityenv.citydb import format as fmt
from cityenv.citydb.reader import CityDB
from cityenv.citydb.retrieval import Retriever
from cityenv.citydb.writer import CityDBWriter
from cityenv.errors import (
    CityDBError,
    CityDBFormatError,
    CorruptImageError,
    InvalidDepthError,
    InvalidPoseError,
    ManifestNotFoundError,
    ShapeMismatchError,
    UnsafePathError,
    ViewNotFoundError,
)
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)  # as in conftest


def _write_views(tools, path, frame, camera, rng, image_format="png"):
    """Two panoramas through add_panorama plus one single view; returns what was written."""
    written = {}
    with CityDBWriter(path, city="seoul", frame=frame, image_format=image_format) as writer:
        for p in range(2):
            pairs = [tools.random_view(rng, camera) for _ in range(8)]
            poses = [
                Pose.from_heading([10.0 * p, 5.0, 2.5], 45.0 * k, pitch_deg=3.0) for k in range(8)
            ]
            ids = writer.add_panorama(
                panorama_id=f"pano-{p}",
                images=[a for a, _ in pairs],
                depths=[d for _, d in pairs],
                cameras=camera,
                poses=poses,
                traversal_id=f"drive-{p}",
                capture_time=T0 + timedelta(minutes=p, microseconds=7),
                source="unit",
            )
            for k, i in enumerate(ids):
                written[i] = (pairs[k][0], pairs[k][1], poses[k], f"pano-{p}", k, f"drive-{p}")
        image, depth = tools.random_view(rng, camera)
        pose = Pose([1.0, 2.0, 3.0], [0.9, 0.1, -0.2, 0.3])
        i = writer.add_view(
            image=image,
            depth=depth,
            camera=camera,
            pose=pose,
            panorama_id="solo",
            traversal_id="walk",
            capture_time=T0,
            source="unit",
            view_index=0,
        )
        written[i] = (image, depth, pose, "solo", 0, "walk")
    return written


def test_round_trip_png_is_exact(tools, tmp_path, frame, camera):
    rng = np.random.default_rng(0)
    written = _write_views(tools, tmp_path / "db", frame, camera, rng)
    db = CityDB.open(tmp_path / "db")
    assert len(db) == 17 and db.num_panoramas == 3 and db.city == "seoul" and db.frame == frame
    for view_id, (image, depth, pose, pano, k, trav) in written.items():
        view = db.load_view(view_id)
        np.testing.assert_array_equal(view.image, image)
        assert view.image.dtype == np.uint8 and view.depth.dtype == np.float32
        step = db.depth_scale_m
        assert np.all(np.abs(view.depth - depth) <= step / 2 + 1e-4)
        np.testing.assert_array_equal(view.depth == 0, depth == 0)
        np.testing.assert_array_equal(view.pose.position, pose.position)
        np.testing.assert_array_equal(view.pose.rotation.components, pose.rotation.components)
        assert view.camera == camera
        meta = view.metadata
        assert (meta.panorama_id, meta.view_index, meta.traversal_id, meta.source) == (
            pano,
            k,
            trav,
            "unit",
        )
        lat, lon, height = frame.enu_to_geodetic(pose.position)
        assert (meta.lat, meta.lon, meta.height) == pytest.approx((lat, lon, height), abs=1e-9)
    meta = db.load_view(8).metadata
    assert meta.capture_time == T0 + timedelta(minutes=1, microseconds=7)
    assert meta.capture_time.tzinfo is not None


def test_jpeg_option_is_close(tmp_path, frame, camera):
    rng = np.random.default_rng(1)
    smooth = PinholeCamera.from_fov(32, 24, 90.0)
    image = np.broadcast_to(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (24, 32, 3))
    with CityDBWriter(tmp_path / "db", city="c", frame=frame, image_format="jpeg") as writer:
        writer.add_view(
            image=np.ascontiguousarray(image),
            depth=None,
            camera=smooth,
            pose=Pose.identity(),
            panorama_id="p",
            traversal_id="t",
            capture_time=T0,
        )
    db = CityDB.open(tmp_path / "db")
    view = db.load_view(0)
    assert np.abs(view.image.astype(int) - image).mean() < 3.0
    assert db.manifest.image_format == "jpeg"  # a new database keeps the first writer's choice
    np.testing.assert_array_equal(view.depth, np.zeros((24, 32), np.float32))
    del rng


def test_depth_codec_range_and_zero():
    depth = np.array([[0.0, 0.004, 0.006, 1.234], [650.0, 655.35, 655.4, 1000.0]], np.float32)
    out = fmt.decode_depth(fmt.encode_depth(depth, 0.01), 0.01, "test")
    np.testing.assert_allclose(out[0], [0.0, 0.01, 0.01, 1.23], atol=1e-5)
    np.testing.assert_allclose(out[1], [650.0, 655.35, 0.0, 0.0], atol=1e-3)


def test_append_second_session_leaves_first_part_untouched(tools, tmp_path, frame, camera):
    rng = np.random.default_rng(2)
    path = tmp_path / "db"
    with CityDBWriter(path, city="c", frame=frame) as writer:
        for p in range(3):
            tools.add_random_panorama(writer, rng, camera, f"a{p}", np.array([p, 0.0, 0.0]))
    first = path / "views" / "part-00000.parquet"
    before = (first.read_bytes(), first.stat().st_mtime_ns)
    shard = path / "blobs" / "shard-00000.bin"
    shard_before = shard.read_bytes()
    with CityDBWriter(path) as writer:
        assert writer.has_panorama("a1") and not writer.has_panorama("b0")
        assert writer.num_panoramas == 3
        tools.add_random_panorama(writer, rng, camera, "b0", np.array([0.0, 9.0, 0.0]))
        assert tools.add_random_panorama(writer, rng, camera, "a2", np.zeros(3)) == []  # committed
    assert (first.read_bytes(), first.stat().st_mtime_ns) == before
    assert shard.read_bytes()[: len(shard_before)] == shard_before
    db = CityDB.open(path)
    assert len(db) == 32 and db.num_panoramas == 4 and len(db.manifest.parts) == 2
    assert db.metadata(24).panorama_id == "b0"
    np.testing.assert_array_equal(db.panorama_positions[3], [0.0, 9.0, 0.0])


def test_commit_every_and_uncommitted_tail_is_ignored_then_cleaned(tools, tmp_path, frame, camera):
    rng = np.random.default_rng(3)
    path = tmp_path / "db"
    writer = CityDBWriter(path, city="c", frame=frame, commit_every=2)
    for p in range(3):
        tools.add_random_panorama(writer, rng, camera, f"p{p}", np.array([p, 0.0, 0.0]))
    writer._shard_file.flush()  # the third panorama's blobs are on disk but not committed
    db = CityDB.open(path)
    assert db.num_panoramas == 2 and len(db) == 16
    committed = db.manifest.shards[0].size
    assert (path / "blobs" / "shard-00000.bin").stat().st_size > committed
    (path / "views" / "part-00001.parquet").write_bytes(b"stale part of a dead writer")
    writer._shard_file.close()
    writer._shard_file = None
    writer._release_lock()
    writer._closed = True  # simulate a crash: nothing else is committed
    with CityDBWriter(path) as again:
        assert (path / "blobs" / "shard-00000.bin").stat().st_size == committed
        assert not (path / "views" / "part-00001.parquet").exists()
        tools.add_random_panorama(again, rng, camera, "p2", np.array([2.0, 0.0, 0.0]))
    db = CityDB.open(path)
    assert db.num_panoramas == 3
    assert db.load_view(23).metadata.panorama_id == "p2"


def test_single_views_of_interleaved_panoramas(tools, tmp_path, frame, camera):
    rng = np.random.default_rng(4)
    with CityDBWriter(tmp_path / "db", city="c", frame=frame) as writer:
        for i, pano in enumerate(["x", "y", "x", "z", "y", "x"]):
            image, depth = tools.random_view(rng, camera)
            writer.add_view(
                image=image,
                depth=depth,
                camera=camera,
                pose=Pose([i, 0.0, 0.0]),
                panorama_id=pano,
                traversal_id="t",
                capture_time=T0,
                view_index=i,
            )
    with CityDBWriter(tmp_path / "db") as writer:  # a second part whose views share positions
        tools.add_random_panorama(writer, rng, camera, "w", np.array([7.0, 8.0, 9.0]))
    db = CityDB.open(tmp_path / "db")
    assert [p.views_at_panorama for p in db.manifest.parts] == [False, True]
    assert db.num_panoramas == 4 and db.views_per_panorama is None
    views, owner = db.panorama_views(np.array([1, 0, 2]))
    np.testing.assert_array_equal(views, [1, 4, 0, 2, 5, 3])
    np.testing.assert_array_equal(owner, [0, 0, 1, 1, 1, 2])
    np.testing.assert_array_equal(db.positions[:6, 0], np.arange(6))
    np.testing.assert_array_equal(
        db.view_positions(np.array([13, 2, 6])), [[7, 8, 9], [2, 0, 0], [7, 8, 9]]
    )
    assert db.pose(4).allclose(Pose([4.0, 0.0, 0.0]))


def test_load_depth_resampled_and_index_accessors(tools, tmp_path, frame, camera):
    rng = np.random.default_rng(5)
    with CityDBWriter(tmp_path / "db", city="c", frame=frame) as writer:
        tools.add_random_panorama(writer, rng, camera, "p", np.array([1.0, 2.0, 3.0]))
    db = CityDB.open(tmp_path / "db")
    full = db.load_depth(3)
    small = db.load_depth(3, size=(8, 6))
    assert small.shape == (6, 8)
    np.testing.assert_array_equal(small, full[1::2, 1::2])  # the pixel under each new centre
    assert db.views_per_panorama == 8
    assert db.pose(3).allclose(Pose.from_heading([1.0, 2.0, 3.0], 135.0), atol=1e-6)
    np.testing.assert_allclose(db.view_forwards[2], [1.0, 0.0, 0.0], atol=1e-6)  # heading 90
    assert db.info()["panoramas"] == 1
    with pytest.raises(ViewNotFoundError, match=r"view id must be in \[0, 8\).*got 8"):
        db.load_view(8)


def test_empty_database_opens(tmp_path, frame, camera):
    CityDBWriter(tmp_path / "db", city="c", frame=frame).close()
    db = CityDB.open(tmp_path / "db")
    assert len(db) == 0 and db.num_panoramas == 0 and db.positions.shape == (0, 3)
    assert db.info()["capture_time_range"] is None
    result = Retriever(db).retrieve([Pose.identity()], camera)
    assert result.empty and result.sink is None and result.candidates_considered == 0


# --- bad input ------------------------------------------------------------------------------
def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestNotFoundError, match=r"expected a CityDB folder .*ingest"):
        CityDB.open(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        CityDB.open(tmp_path / "nope")


def _tamper(path, edit):
    manifest = json.loads((path / fmt.MANIFEST_NAME).read_text())
    edit(manifest)
    (path / fmt.MANIFEST_NAME).write_text(json.dumps(manifest))


def test_manifest_naming_files_outside_the_folder(tools, tmp_path, frame, camera):
    path = tmp_path / "db"
    with CityDBWriter(path, city="c", frame=frame) as writer:
        tools.add_random_panorama(writer, np.random.default_rng(6), camera, "p", np.zeros(3))
    _tamper(path, lambda m: m["parts"][0].update(views="../../etc/passwd"))
    with pytest.raises(UnsafePathError, match=r"must stay inside the database folder.*passwd"):
        CityDB.open(path)


def test_symlinked_shard_leaving_the_folder(tools, tmp_path, frame, camera):
    path = tmp_path / "db"
    with CityDBWriter(path, city="c", frame=frame) as writer:
        tools.add_random_panorama(writer, np.random.default_rng(6), camera, "p", np.zeros(3))
    outside = tmp_path / "outside.bin"
    shard = path / "blobs" / "shard-00000.bin"
    outside.write_bytes(shard.read_bytes())
    shard.unlink()
    os.symlink(outside, shard)
    with pytest.raises(UnsafePathError, match=r"shard path must stay inside"):
        CityDB.open(path)


def test_bad_manifest_version_and_json(tmp_path, frame):
    path = tmp_path / "db"
    CityDBWriter(path, city="c", frame=frame).close()
    _tamper(path, lambda m: m.update(format_version=99))
    with pytest.raises(CityDBFormatError, match=r"format_version 99.*reads version 1"):
        CityDB.open(path)
    (path / fmt.MANIFEST_NAME).write_text("{not json")
    with pytest.raises(CityDBFormatError, match="must be a JSON manifest"):
        CityDB.open(path)


def test_corrupt_image_names_view_and_shard(tools, tmp_path, frame, camera):
    path = tmp_path / "db"
    with CityDBWriter(path, city="c", frame=frame) as writer:
        tools.add_random_panorama(writer, np.random.default_rng(7), camera, "p", np.zeros(3))
    db = CityDB.open(path)
    offset = db._locator(2)[1]
    with open(path / "blobs" / "shard-00000.bin", "r+b") as f:
        f.seek(offset)
        f.write(b"\x00" * 16)  # wipe the PNG signature and header
    db = CityDB.open(path)
    with pytest.raises(CorruptImageError, match=r"view 2 image \(shard 0 'blobs/shard-00000.bin'"):
        db.load_view(2)
    db.load_view(3)  # the neighbours are intact


def test_negative_depth_to_writer(tools, tmp_path, frame, camera):
    image, depth = tools.random_view(np.random.default_rng(8), camera)
    depth[0, 0] = -1.0
    with CityDBWriter(tmp_path / "db", city="c", frame=frame) as writer:
        with pytest.raises(InvalidDepthError, match=r"depth must be >= 0.*got a minimum of -1"):
            writer.add_view(
                image=image,
                depth=depth,
                camera=camera,
                pose=Pose.identity(),
                panorama_id="p",
                traversal_id="t",
                capture_time=T0,
            )
        depth[0, 0] = np.nan
        with pytest.raises(InvalidDepthError, match="NaN/inf"):
            writer.add_view(
                image=image,
                depth=depth,
                camera=camera,
                pose=Pose.identity(),
                panorama_id="p",
                traversal_id="t",
                capture_time=T0,
            )
        assert writer.num_views == 0


def test_image_shape_vs_camera(tmp_path, frame, camera):
    image = np.zeros((10, 16, 3), np.uint8)
    with CityDBWriter(tmp_path / "db", city="c", frame=frame) as writer:
        with pytest.raises(ShapeMismatchError, match=r"image must have shape.*\(12, 16"):
            writer.add_view(
                image=image,
                depth=None,
                camera=camera,
                pose=Pose.identity(),
                panorama_id="p",
                traversal_id="t",
                capture_time=T0,
            )
        with pytest.raises(ShapeMismatchError, match=r"as many depths, cameras and poses"):
            writer.add_panorama(
                panorama_id="q",
                images=[np.zeros((12, 16, 3), np.uint8)] * 2,
                depths=[None],
                cameras=camera,
                poses=[Pose.identity()] * 2,
                traversal_id="t",
                capture_time=T0,
            )


def test_nan_pose(tmp_path, frame, camera):
    with pytest.raises(InvalidPoseError, match="must be finite"):
        Pose([0.0, np.nan, 0.0])
    matrix = np.eye(4)
    matrix[0, 3] = np.nan
    with (
        CityDBWriter(tmp_path / "db", city="c", frame=frame) as writer,
        pytest.raises(InvalidPoseError, match="finite"),
    ):
        writer.add_view(
            image=np.zeros((12, 16, 3), np.uint8),
            depth=None,
            camera=camera,
            pose=matrix,
            panorama_id="p",
            traversal_id="t",
            capture_time=T0,
        )


def test_writer_guards(tmp_path, frame):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    with pytest.raises(CityDBError, match=r"expected an empty folder or a CityDB.*notes.txt"):
        CityDBWriter(tmp_path / "foreign", city="c", frame=frame)
    with pytest.raises(CityDBError, match="needs city= and frame="):
        CityDBWriter(tmp_path / "new")
    with (
        CityDBWriter(tmp_path / "db", city="c", frame=frame),
        pytest.raises(CityDBError, match="only writer"),
    ):
        CityDBWriter(tmp_path / "db")
    with pytest.raises(CityDBFormatError, match="city 'other' vs 'c'"):
        CityDBWriter(tmp_path / "db", city="other")


def test_naive_and_offset_times_are_utc(tmp_path, frame, camera):
    with CityDBWriter(tmp_path / "db", city="c", frame=frame) as writer:
        for i, stamp in enumerate(
            [
                datetime(2024, 5, 1, 12),
                datetime(2024, 5, 1, 14, tzinfo=timezone(timedelta(hours=2))),
            ]
        ):
            writer.add_view(
                image=np.zeros((12, 16, 3), np.uint8),
                depth=None,
                camera=camera,
                pose=Pose.identity(),
                panorama_id=f"p{i}",
                traversal_id="t",
                capture_time=stamp,
            )
    db = CityDB.open(tmp_path / "db")
    assert db.metadata(0).capture_time == db.metadata(1).capture_time == T0


def test_compact_merges_parts_and_appends_continue(tools, tmp_path, frame, camera):
    rng = np.random.default_rng(9)
    path = tmp_path / "db"
    with CityDBWriter(path, city="c", frame=frame, commit_every=1) as writer:
        for p in range(5):
            tools.add_random_panorama(writer, rng, camera, f"p{p}", np.array([p, 0.0, 0.0]))
    before = CityDB.open(path)
    images = [before.load_image(v) for v in range(len(before))]
    assert len(before.manifest.parts) == 5
    with CityDBWriter(path) as writer:
        assert writer.compact(max_views_per_part=24) == 2  # parts of 3 + 2 panoramas
        tools.add_random_panorama(writer, rng, camera, "p5", np.array([5.0, 0.0, 0.0]))
    db = CityDB.open(path)
    assert [p.num_views for p in db.manifest.parts] == [24, 16, 8]
    assert sorted(f.name for f in (path / "views").iterdir()) == [
        "part-00005.parquet",
        "part-00006.parquet",
        "part-00007.parquet",
    ]
    assert [db.load_image(v).tobytes() for v in range(40)] == [im.tobytes() for im in images]
    assert db.metadata(40).panorama_id == "p5" and db.metadata(17).panorama_id == "p2"
    assert db.metadata(16).panorama_id == "p2"  # view 17's row group, kept in the LRU cache
    assert (db._row_groups.hits, db._row_groups.misses) == (1, 2)
    np.testing.assert_array_equal(db.panorama_positions[:, 0], np.arange(6))
