"""The panorama path refuses what it cannot ingest, and a refused run writes nothing."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from cityenv.citydb.ingest import ingest_panoramas
from cityenv.citydb.reader import CityDB
from cityenv.errors import IngestError, PanoramaShapeError

HEADER = "image,lat,lon,height,heading,capture_time,traversal,depth"


def _dataset(folder, sizes=((128, 64),), depth_sizes=None, encoding="utf-8", name="é"):
    """Panoramas of the given ``(w, h)`` with ``.npy`` range maps; the CSV in ``encoding``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = [HEADER]
    for i, (w, h) in enumerate(sizes):
        dw, dh = (depth_sizes or sizes)[i]
        cv2.imwrite(str(folder / f"p{i}.png"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        np.save(folder / f"p{i}.npy", np.full((dh, dw), 10.0, np.float32))
        lines.append(f"p{i}.png,37.5,127.0{i},30,0,2024-05-01T10:00:00Z,{name}-drive,p{i}.npy")
    (folder / "panoramas.csv").write_bytes("\n".join(lines).encode(encoding))
    return folder / "panoramas.csv"


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "cityenv.citydb", "ingest", *map(str, args), "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("sizes", "depth_sizes", "message"),
    [
        ([(128, 64), (64, 48)], None, r"row 2, column 'image': expected an equirectangular "
         r"panorama of aspect 2:1 .* got p1\.png of 64x48 \(1\.33:1\); a perspective photo is not "
         r"a panorama: ingest photos with `python -m cityenv.citydb ingest-photos`"),
        ([(128, 64)], [(64, 48)], r"row 1, column 'depth': expected an equirectangular range map "
         r"of the panorama's 2:1 aspect .* got p0\.npy of shape \(48, 64\)"),
    ],
)  # fmt: skip
def test_a_non_panorama_is_refused_naming_its_shape_and_nothing_is_left(
    tmp_path, sizes, depth_sizes, message
):
    csv_path = _dataset(tmp_path / "data", sizes, depth_sizes)
    with pytest.raises(PanoramaShapeError, match=message):
        ingest_panoramas(csv_path, tmp_path / "db", city="c", size=(16, 16), progress=False)
    assert not (tmp_path / "db").exists()  # no empty database folder after a refused first run


def test_a_refused_run_on_an_existing_database_loses_and_adds_nothing(tmp_path):
    good = _dataset(tmp_path / "good")
    ingest_panoramas(good, tmp_path / "db", city="c", size=(16, 16), progress=False)
    bad = _dataset(tmp_path / "bad", [(128, 64), (100, 64)])
    with pytest.raises(PanoramaShapeError, match=r"100x64"):
        ingest_panoramas(bad, tmp_path / "db", size=(16, 16), progress=False)
    assert len(CityDB.open(tmp_path / "db")) == 8  # the good panorama, not p0 of the bad CSV


def test_a_refused_first_run_empties_but_keeps_the_users_folder(tmp_path):
    (tmp_path / "db").mkdir()
    csv_path = _dataset(tmp_path / "data", [(128, 64), (128, 64)])
    (tmp_path / "data" / "p1.png").write_bytes(b"not a png")
    with pytest.raises(IngestError, match=r"row 2, column 'image': expected a readable"):
        ingest_panoramas(csv_path, tmp_path / "db", city="c", size=(16, 16), progress=False)
    assert (tmp_path / "db").is_dir() and list((tmp_path / "db").iterdir()) == []


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path):
    csv_path = _dataset(tmp_path / "data", encoding="utf-8-sig")
    stats = ingest_panoramas(csv_path, tmp_path / "db", city="c", size=(16, 16), progress=False)
    assert stats.added == 1
    assert CityDB.open(tmp_path / "db").metadata(0).traversal_id == "é-drive"


def test_a_latin1_csv_is_a_typed_error_saying_how_to_convert_it(tmp_path):
    csv_path = _dataset(tmp_path / "data", encoding="latin-1")
    with pytest.raises(IngestError, match=r"expected a UTF-8 CSV .*\(b'\\xe9', e\.g\. Latin-1\).*"
                       r"iconv -f latin1 -t utf-8 panoramas\.csv"):  # fmt: skip
        ingest_panoramas(csv_path, tmp_path / "db", city="c", progress=False)
    assert not (tmp_path / "db").exists()


def test_the_command_line_refuses_bad_arguments_without_a_traceback(tmp_path):
    csv_path = _dataset(tmp_path / "data")
    (tmp_path / "file").write_text("x")
    for args, message in [
        ((csv_path, tmp_path / "db", "--city", "c", "--views", "0"),
         "error: num_views (--views) must be a positive integer, got 0"),
        ((csv_path, tmp_path / "file", "--city", "c"),
         "error: expected a database folder at"),
    ]:  # fmt: skip
        done = _run(*args)
        assert done.returncode == 2 and done.stderr.startswith(message), done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "db").exists()
    done = _run(csv_path, tmp_path / "db", "--city", "c", "--size", "16", "16")
    assert done.returncode == 0, done.stderr
    assert "1 rows: 1 panoramas added (8 views) from 1 traversals" in done.stdout
    assert "0 skipped as already present" in done.stdout
