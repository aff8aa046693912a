"""Ingestion of equirectangular panoramas listed in a CSV, and the command line."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone

import cv2
import numpy as np
import pytest

from cityenv.citydb.__main__ import main
from cityenv.citydb.ingest import ingest_panoramas
from cityenv.citydb.reader import CityDB
from cityenv.errors import IngestError
from cityenv.geometry.geodesy import LocalFrame
from cityenv.geometry.pose import Pose

WIDTH, HEIGHT = 128, 64  # equirectangular panorama
RANGE_M = 10.0
ROWS = [  # lat, lon, height, heading, capture_time, traversal
    (37.5665, 126.9780, 30.0, 0.0, "2024-05-01T10:00:00Z", "drive-1"),
    (37.5666, 126.9781, 31.0, 90.0, "1714557600", "drive-1"),
    (37.5670, 126.9779, 29.5, 200.0, "2024-05-01T12:00:00+02:00", "drive-2"),
]


def _panorama() -> np.ndarray:
    """RGB ``(H, W, 3)``: red = 2 * column (so azimuth can be read back), green = 4 * row."""
    cols = np.arange(WIDTH, dtype=np.uint8) * 2
    rows = np.arange(HEIGHT, dtype=np.uint8) * 4
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[..., 0] = cols[None, :]
    image[..., 1] = rows[:, None]
    image[..., 2] = 100
    return image


def _write_dataset(folder, rows=ROWS, depth_kinds=("png", "npy", "column"), header=None):
    """Panorama images plus depth beside them (png/npy) or named in a depth column."""
    folder.mkdir(parents=True, exist_ok=True)
    header = header or ["image", "lat", "lon", "height", "heading", "capture_time", "traversal"]
    lines = []
    for i, (row, kind) in enumerate(zip(rows, depth_kinds, strict=True)):
        name = f"pano_{i}.png"
        cv2.imwrite(str(folder / name), cv2.cvtColor(_panorama(), cv2.COLOR_RGB2BGR))
        range_mm = np.full((HEIGHT // 2, WIDTH // 2), RANGE_M * 1000, np.uint16)
        depth_cell = ""
        if kind == "png":
            cv2.imwrite(str(folder / f"pano_{i}_depth.png"), range_mm)
        elif kind == "npy":
            np.save(folder / f"pano_{i}_depth.npy", np.full((HEIGHT, WIDTH), RANGE_M, np.float32))
        elif kind == "column":
            cv2.imwrite(str(folder / f"range_{i}.png"), range_mm)
            depth_cell = f"range_{i}.png"
        lines.append([name, *row, depth_cell])
    with open(folder / "panoramas.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*header, "depth"])
        writer.writerows(lines)
    return folder / "panoramas.csv"


def test_ingest_makes_eight_posed_views_per_panorama(tmp_path):
    csv_path = _write_dataset(tmp_path / "data")
    stats = ingest_panoramas(
        csv_path, tmp_path / "db", city="seoul", size=(16, 16), progress=False, commit_every=2
    )
    assert (stats.rows, stats.added, stats.skipped, stats.views) == (3, 3, 0, 24)
    db = CityDB.open(tmp_path / "db")
    assert db.city == "seoul" and len(db) == 24 and db.num_panoramas == 3
    assert len(db.manifest.parts) == 1  # two commits, compacted at the end
    assert db.frame == LocalFrame(*ROWS[0][:3])  # the anchor defaults to the first panorama
    np.testing.assert_allclose(db.panorama_positions[0], 0.0, atol=1e-6)
    rays = db.camera(0).pixel_rays()
    expected_depth = RANGE_M / np.linalg.norm(rays, axis=-1)  # range -> z-depth
    for p, (lat, lon, height, heading, _, traversal) in enumerate(ROWS):
        enu = db.frame.geodetic_to_enu(lat, lon, height)
        for k in range(8):
            view = db.load_view(8 * p + k)
            assert view.pose.allclose(Pose.from_heading(enu, heading + 45.0 * k), atol=1e-6)
            assert view.metadata.traversal_id == traversal and view.metadata.view_index == k
            assert view.metadata.panorama_id == f"pano_{p}.png"
            # the view's centre looks at azimuth 45k: column (45k / 360 + 0.5) * W of the panorama
            column = ((45.0 * k / 360.0 + 0.5) * WIDTH) % WIDTH
            assert abs(int(view.image[8, 8, 0]) - 2 * column) <= 3
            np.testing.assert_allclose(view.depth, expected_depth, atol=0.006)
    times = [db.metadata(8 * p).capture_time for p in range(3)]
    assert times == [datetime(2024, 5, 1, h, tzinfo=timezone.utc) for h in (10, 10, 10)]


def test_ingest_resumes_and_skips_committed_panoramas(tmp_path):
    csv_path = _write_dataset(tmp_path / "data")
    ingest_panoramas(csv_path, tmp_path / "db", city="c", size=(8, 8), progress=False)
    again = ingest_panoramas(csv_path, tmp_path / "db", size=(8, 8), progress=False)
    assert (again.added, again.skipped, again.views) == (0, 3, 0)
    assert len(CityDB.open(tmp_path / "db")) == 24


def _rewrite_cell(csv_path, row, column, value):
    with open(csv_path, newline="") as f:
        table = list(csv.reader(f))
    table[row][table[0].index(column)] = value
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows(table)


@pytest.mark.parametrize(
    ("row", "column", "value", "message"),
    [
        (2, "lat", "north-ish", r"CSV row 2, column 'lat': expected a number in \[-90.0, 90.0\]"),
        (3, "capture_time", "yesterday", r"CSV row 3, column 'capture_time': expected an ISO"),
        (1, "traversal", "", r"CSV row 1, column 'traversal': expected a non-empty"),
        (1, "image", "missing.png", r"CSV row 1, column 'image': expected a readable"),
        (3, "depth", "nothing.npy", r"CSV row 3, column 'depth': expected a float .npy"),
    ],
)
def test_malformed_rows_name_row_and_column(tmp_path, row, column, value, message):
    csv_path = _write_dataset(tmp_path / "data")
    _rewrite_cell(csv_path, row, column, value)
    with pytest.raises(IngestError, match=message):
        ingest_panoramas(csv_path, tmp_path / "db", city="c", size=(8, 8), progress=False)


def test_missing_column_and_missing_or_bad_depth(tmp_path):
    header = ["image", "lat", "lon", "height", "bearing", "capture_time", "traversal"]
    csv_path = _write_dataset(tmp_path / "a", header=header)
    with pytest.raises(IngestError, match=r"missing \['heading'\]"):
        ingest_panoramas(csv_path, tmp_path / "db_a", city="c", progress=False)
    csv_path = _write_dataset(tmp_path / "b", rows=ROWS[:1], depth_kinds=["none"])
    with pytest.raises(IngestError, match=r"CSV row 1, column 'depth': .*pano_0_depth.png/.npy"):
        ingest_panoramas(csv_path, tmp_path / "db_b", city="c", progress=False)
    csv_path = _write_dataset(tmp_path / "c", rows=ROWS[:1], depth_kinds=["none"])
    cv2.imwrite(str(tmp_path / "c" / "pano_0_depth.png"), np.zeros((4, 8), np.uint8))
    with pytest.raises(IngestError, match=r"column 'depth': expected a 16-bit single-channel"):
        ingest_panoramas(csv_path, tmp_path / "db_c", city="c", progress=False)


def test_duplicate_panorama_ids(tmp_path):
    csv_path = _write_dataset(tmp_path / "data")
    _rewrite_cell(csv_path, 3, "image", "pano_0.png")
    with pytest.raises(IngestError, match=r"CSV row 3, column 'panorama_id'.*row 1"):
        ingest_panoramas(csv_path, tmp_path / "db", city="c", progress=False)


def test_command_line_ingest_and_info(tmp_path, capsys):
    csv_path = _write_dataset(tmp_path / "data")
    db = str(tmp_path / "db")
    argv = ["ingest", str(csv_path), db, "--city", "cli", "--size", "8", "8", "--no-progress"]
    assert main(argv) == 0
    assert "3 panoramas added (24 views)" in capsys.readouterr().out
    assert main(["info", db]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["city"], info["views"], info["panoramas"], info["traversals"]) == ("cli", 24, 3, 2)
    assert main(["compact", db]) == 0
    assert "1 parts -> 1 parts" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "nothing")]) == 2
    assert "expected a CityDB folder" in capsys.readouterr().err
