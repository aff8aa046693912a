"""Nothing lost: a folder that lost its manifest is refused, ``repair`` rebuilds it from the parts.

Issue 15 part 1: with ``manifest.json`` missing, re-ingesting used to delete every part and
rewrite the shard (48 views became 32). These tests build real databases, damage them on disk
and run the real command line in subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from cityenv.citydb import format as fmt
from cityenv.citydb.integrity import repair, verify
from cityenv.citydb.reader import CityDB
from cityenv.citydb.retrieval import Retriever
from cityenv.citydb.writer import CityDBWriter
from cityenv.errors import CityDBError, ManifestLostError, ManifestNotFoundError
from cityenv.geometry.pose import Pose

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m cityenv.citydb ARGS`` in a subprocess (this checkout first on the path)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "cityenv.citydb", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def file_hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (lock file aside), by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != fmt.LOCK_NAME
    }


@pytest.fixture
def db48(tools, tmp_path, frame, camera) -> Path:
    """6 panoramas of 8 views (48 views) in 3 commits, one shard."""
    path = tmp_path / "db"
    rng = np.random.default_rng(48)
    with CityDBWriter(path, city="c", frame=frame, commit_every=2) as writer:
        for p in range(6):
            tools.add_random_panorama(writer, rng, camera, f"p{p}", np.array([5.0 * p, 0, 2.0]))
    return path


def test_lost_manifest_is_refused_and_repaired_with_nothing_lost(tools, db48, camera):
    before = CityDB.open(db48)
    images = [before.load_image(i) for i in range(len(before))]
    depths = [before.load_depth(i) for i in range(len(before))]
    assert len(before) == 48 and len(before.manifest.parts) == 3
    (db48 / fmt.MANIFEST_NAME).unlink()
    files = file_hashes(db48)

    with pytest.raises(
        ManifestLostError, match=r"3 view parts, 3 panorama parts, 1 shard .*repair"
    ):
        CityDBWriter(db48, city="c", frame=tools.FRAME)
    with pytest.raises(
        ManifestNotFoundError, match=r"the manifest was lost.*cityenv.citydb repair"
    ):
        CityDB.open(db48)
    assert file_hashes(db48) == files  # the refused writer touched nothing

    done = cli("repair", str(db48), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "3 parts, 48 views, 6 panoramas, 1 shards" in done.stdout

    db = CityDB.open(db48)
    assert len(db) == 48 and db.num_panoramas == 6
    for i in range(48):
        np.testing.assert_array_equal(db.load_image(i), images[i])
        np.testing.assert_array_equal(db.load_depth(i), depths[i])
    result = Retriever(db).retrieve([Pose.from_heading([10.0, -3.0, 2.0], 0.0)], camera)
    assert result.references and not len(db.damaged)
    assert verify(db48, full=True, progress=False).ok

    rng = np.random.default_rng(1)
    with CityDBWriter(db48) as writer:  # writing goes on after the repair
        tools.add_random_panorama(writer, rng, camera, "p6", np.array([40.0, 0, 2.0]))
    assert len(CityDB.open(db48)) == 56


def test_ingest_into_a_folder_that_lost_its_manifest_deletes_nothing(tmp_path, db48):
    (db48 / fmt.MANIFEST_NAME).unlink()
    files = file_hashes(db48)
    csv = tmp_path / "panoramas.csv"
    panorama = np.full((32, 64, 3), 90, np.uint8)
    cv2.imwrite(str(tmp_path / "pano.png"), panorama)
    np.save(tmp_path / "pano_depth.npy", np.full((32, 64), 10.0, np.float32))
    csv.write_text(  # a valid row: the refusal comes from the folder, not from the input
        "image,lat,lon,height,heading,capture_time,traversal\n"
        "pano.png,37.5665,126.978,30,0,2024-05-01T10:00:00Z,drive-9\n"
    )
    done = cli("ingest", str(csv), str(db48), "--city", "c", "--no-progress")
    assert done.returncode == 2
    assert "manifest was lost" in done.stderr and "repair" in done.stderr
    assert file_hashes(db48) == files


def test_repair_prefers_a_compacted_part_over_the_parts_it_replaced(tmp_path, db48):
    saved = tmp_path / "saved"
    for sub in (fmt.VIEWS_DIR, fmt.PANORAMAS_DIR):
        shutil.copytree(db48 / sub, saved / sub)
    with CityDBWriter(db48) as writer:
        assert writer.compact() == 1  # part-00003 replaces parts 0..2 (deleted afterwards)
    for sub in (fmt.VIEWS_DIR, fmt.PANORAMAS_DIR):  # a crash before the deletes, then a lost
        shutil.copytree(saved / sub, db48 / sub, dirs_exist_ok=True)  # manifest
    (db48 / fmt.MANIFEST_NAME).unlink()
    report = repair(db48, progress=False)
    assert (report.parts, report.views) == (1, 48)
    assert len(report.left_out) == 3 and all("do not continue" in r for r in report.left_out)
    assert (db48 / "views" / "part-00000.parquet").exists()  # left out, not deleted
    db = CityDB.open(db48)
    assert [p.views for p in db.manifest.parts] == ["views/part-00003.parquet"]
    assert len(db) == 48 and db.load_view(47).image.shape == (12, 16, 3)


def test_repair_keeps_an_existing_manifest_and_asks_for_unrecorded_settings(tmp_path, db48):
    for part in (db48 / fmt.VIEWS_DIR).glob("*.parquet"):  # parts as written before settings
        table = pq.read_table(part)  # were recorded in them
        pq.write_table(table.replace_schema_metadata(), part)
    with pytest.raises(CityDBError, match=r"needs city, anchor, depth_scale_m from you"):
        repair(db48, progress=False)
    done = cli("repair", str(db48), "--no-progress")
    assert done.returncode == 2 and "--city NAME --anchor LAT LON HEIGHT" in done.stderr
    old = (db48 / fmt.MANIFEST_NAME).read_text()
    done = cli(
        "repair", str(db48), "--city", "c", "--anchor", "37.5665", "126.978", "30",
        "--depth-scale", "0.01", "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    backups = list(db48.glob("manifest.json.before-repair-*"))
    assert len(backups) == 1 and backups[0].read_text() == old
    db = CityDB.open(db48)
    assert (db.city, len(db), db.depth_scale_m) == ("c", 48, 0.01)
    assert db.manifest.cameras == json.loads(old)["cameras"]  # rebuilt from the view rows


def test_repair_refuses_when_a_shard_is_missing(db48):
    (db48 / fmt.MANIFEST_NAME).unlink()
    (db48 / "blobs" / "shard-00000.bin").unlink()
    done = cli("repair", str(db48), "--no-progress")
    assert done.returncode == 2
    assert "point into blobs/shard-00000.bin" in done.stderr and "no such file" in done.stderr
    assert not (db48 / fmt.MANIFEST_NAME).exists()


def test_writer_moves_uncommitted_leftovers_aside_instead_of_deleting(
    tools, tmp_path, frame, camera
):
    path = tmp_path / "db"
    rng = np.random.default_rng(3)
    with CityDBWriter(path, city="c", frame=frame) as writer:
        tools.add_random_panorama(writer, rng, camera, "p0", np.zeros(3))
    first_commit = (path / fmt.MANIFEST_NAME).read_bytes()
    committed = (path / "blobs" / "shard-00000.bin").stat().st_size
    with CityDBWriter(path) as writer:
        tools.add_random_panorama(writer, rng, camera, "p1", np.array([5.0, 0, 0]))
    second = {
        "views/part-00001.parquet": (path / "views" / "part-00001.parquet").read_bytes(),
        "shard": (path / "blobs" / "shard-00000.bin").read_bytes(),
    }
    (path / fmt.MANIFEST_NAME).write_bytes(first_commit)  # an older manifest put back

    with CityDBWriter(path) as writer:
        assert writer.num_views == 8
    lost = next((path / fmt.LOST_DIR).iterdir())
    assert (lost / "views" / "part-00001.parquet").read_bytes() == second[
        "views/part-00001.parquet"
    ]
    tail = lost / "blobs" / f"shard-00000.bin.tail-from-{committed}"
    assert tail.read_bytes() == second["shard"][committed:]
    assert len(CityDB.open(path)) == 8
