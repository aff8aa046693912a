"""A writer killed with SIGKILL mid-append leaves a readable database that a rerun completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from cityenv.citydb.reader import CityDB

# Runs both in a child process (killed) and in this process (the resumed run). Each panorama's
# pixels come from its own seed, so a resumed run writes exactly what the first would have.
WRITER_SOURCE = r"""
import time
from datetime import datetime, timezone

import numpy as np

from cityenv.citydb.writer import CityDBWriter
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.geodesy import LocalFrame
from cityenv.geometry.pose import Pose

CAMERA = PinholeCamera.from_fov(8, 6, 90.0)
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def panorama(p):
    rng = np.random.default_rng(p)
    images = [rng.integers(0, 256, (6, 8, 3), dtype=np.uint8) for _ in range(8)]
    depths = [rng.uniform(1.0, 50.0, (6, 8)).astype(np.float32) for _ in range(8)]
    poses = [Pose.from_heading([p * 10.0, 0.0, 2.0], 45.0 * k) for k in range(8)]
    return images, depths, poses


def run(path, total, pause):
    with CityDBWriter(path, city="crash", frame=LocalFrame(37.5, 127.0), commit_every=5) as w:
        for p in range(total):
            images, depths, poses = panorama(p)
            w.add_panorama(
                panorama_id=f"p{p:04d}", images=images, depths=depths, cameras=CAMERA,
                poses=poses, traversal_id="t", capture_time=T0,
            )
            time.sleep(pause)
"""
TOTAL = 60


def _committed_parts(path) -> int:
    try:
        return len(json.loads((path / "manifest.json").read_text())["parts"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def test_killed_writer_leaves_committed_state_and_rerun_resumes(tmp_path):
    path = tmp_path / "db"
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER_SOURCE + f"\nrun({str(path)!r}, {TOTAL}, 0.01)\n"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60.0
        while _committed_parts(path) < 2:
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "the writer never committed"
            time.sleep(0.005)
        time.sleep(0.013)  # land somewhere inside the next panoramas
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL

    db = CityDB.open(path)
    count = db.num_panoramas
    assert 10 <= count < TOTAL and count % 5 == 0  # only whole commits are visible
    assert len(db) == 8 * count
    namespace: dict = {}
    exec(WRITER_SOURCE, namespace)  # noqa: S102 - the test's own source, shared with the child
    images, depths, _ = namespace["panorama"](count - 1)
    last = db.load_view(len(db) - 1)
    np.testing.assert_array_equal(last.image, images[7])
    assert np.abs(last.depth - depths[7]).max() <= 0.005 + 1e-4

    namespace["run"](str(path), TOTAL, 0.0)  # the rerun skips what is committed
    db = CityDB.open(path)
    assert db.num_panoramas == TOTAL and len(db) == 8 * TOTAL
    ids = db.panoramas.column("panorama_id").to_pylist()
    assert ids == [f"p{p:04d}" for p in range(TOTAL)]
    for p in (0, count - 1, count, TOTAL - 1):
        images, _, poses = namespace["panorama"](p)
        view = db.load_view(8 * p + 3)
        np.testing.assert_array_equal(view.image, images[3])
        assert view.pose.allclose(poses[3])
