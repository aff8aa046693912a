"""Bad values that used to crash or slip through: a huge locator length under ``verify --full``,
out-of-range Mapillary times and coordinates, a latitude of 200, truncated JPEGs, impossible view
options, and a first photo run that fails with an untyped error while writing.

Every case is real: a generated town database damaged on disk, real image files cut short, the
command line in a subprocess (with a real file-size limit for the failed write).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cityenv.citydb import format as fmt
from cityenv.citydb.ingest import ingest_panoramas
from cityenv.citydb.integrity import verify
from cityenv.citydb.photos import ingest_photos
from cityenv.citydb.reader import CityDB
from cityenv.errors import CityDBError, CorruptSourceImageError, IngestError
from cityenv.geometry.geodesy import LocalFrame

pytestmark = pytest.mark.filterwarnings("ignore::cityenv.errors.DepthlessViewWarning")

TINY_TOWN = {"blocks": (1, 1), "size": 64, "spacing_m": 10.0, "progress": False}
FRAME = LocalFrame(37.5665, 126.978, 40.0)
T0 = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)


def _cli(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cityenv.citydb", *map(str, args), "--no-progress"],
        capture_output=True, text=True, timeout=300, **kwargs,
    )  # fmt: skip


# --- verify --full and a locator the fast check rejects ------------------------------------------
@pytest.fixture(scope="module")
def town_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny town's CityDB (built in a temporary ``CITYENV_CACHE``; never modified)."""
    from cityenv.envs.town import build_town_db

    patch = pytest.MonkeyPatch()
    patch.setenv("CITYENV_CACHE", str(tmp_path_factory.mktemp("cityenv-cache")))
    patch.delenv("CITYENV_DATA", raising=False)
    yield build_town_db(**TINY_TOWN)
    patch.undo()


def test_full_verify_lists_but_never_reads_a_locator_of_16_terabytes(town_db, tmp_path):
    db = Path(shutil.copytree(town_db, tmp_path / "db"))
    part = db / "views" / "part-00000.parquet"
    table = pq.read_table(part)
    lengths = table.column("image_length").to_numpy().copy()
    lengths[5] = 1 << 44  # a high bit flipped in the length column: 16 TiB
    index = table.schema.get_field_index("image_length")
    table = table.set_column(index, "image_length", [lengths])
    pq.write_table(table, part, **fmt.parquet_write_options(table.schema))

    done = _cli("verify", db, "--full")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stderr
    assert "DAMAGED view 5 image: its locator (shard 0, bytes" in done.stdout
    assert "note: --full did not read 1 blobs whose locators lie outside" in done.stdout
    assert "view 5 image" in done.stdout.split("--full did not read")[1]
    report = verify(db, full=True, progress=False)
    assert report.blobs == 2 * len(CityDB.open(town_db)) - 1  # every other blob was read
    assert report.damaged_views() == [5]  # no intact neighbour blamed for "sharing" its bytes


@pytest.mark.parametrize("workers", ["-3", "0"])
def test_verify_refuses_a_worker_count_below_one_naming_the_option(tmp_path, workers):
    done = _cli("verify", tmp_path / "db", "--workers", workers)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(
        f"error: workers (--workers) must be a positive integer, got {workers}"
    )
    with pytest.raises(CityDBError, match=r"workers \(--workers\) must be a positive integer"):
        verify(tmp_path / "db", workers=int(workers), progress=False)


# --- Mapillary and CSV values out of range: per-photo skips ----------------------------------
def _mapillary(folder: Path, bad: dict[str, object]) -> Path:
    """Three good photos walking east (one sequence) and photo ``bad`` with ``bad`` fields."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    entries = []
    for i, image_id in enumerate(["a0", "a1", "a2", "bad"]):
        lat, lon, _ = FRAME.enu_to_geodetic(np.array([3.0 * i, 0.0, 0.0]))
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
            folder / f"{image_id}.jpg"
        )
        entries.append({
            "id": image_id, "sequence": "S", "compass_angle": 90.0, "camera_parameters": [0.8],
            "captured_at": int((T0 + timedelta(seconds=i)).timestamp() * 1000),
            "geometry": {"type": "Point", "coordinates": [float(lon), float(lat)]},
        })  # fmt: skip
    entries[-1].update(bad)
    (folder / "images.json").write_text(json.dumps(entries))
    return folder / "images.json"


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"captured_at": 1e20}, r"image bad: captured_at 1e\+20 is not a Unix time in "
         r"milliseconds between the years 1 and 9999"),
        ({"captured_at": -1e15}, r"image bad: captured_at -1000000000000000.0 is not a Unix time"),
        ({"geometry": {"coordinates": 5}}, r"image bad: geometry.coordinates must be a \[lon, "
         r"lat\] list, got 5"),
        ({"geometry": {"coordinates": [127.0, 200.0]}}, r"image bad: lat 200.0 / lon 127.0 "
         r"outside \[-90, 90\] / \[-180, 360\] degrees"),
    ],
    ids=["captured-at-1e20", "captured-at-minus-1e15", "coordinates-5", "lat-200"],
)  # fmt: skip
def test_a_mapillary_photo_with_an_impossible_value_is_skipped_with_its_reason(
    tmp_path, bad, reason
):
    source = _mapillary(tmp_path / "mly", bad)
    report = ingest_photos(source, tmp_path / "db", city="c", frame=FRAME, progress=False)
    assert report.added == 3 and [s.image for s in report.skipped] == [
        str(tmp_path / "mly" / "bad.jpg")
    ]
    assert re.search(reason, report.skipped[0].reason), report.skipped[0].reason
    assert f"skipped {tmp_path / 'mly' / 'bad.jpg'}: image bad:" in report.summary()


def test_the_command_line_skips_bad_mapillary_values_without_a_traceback(tmp_path):
    source = _mapillary(tmp_path / "mly", {"captured_at": 1e20})
    done = _cli("ingest-photos", source, tmp_path / "db", "--city", "c")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "4 photos: 3 views written" in done.stdout
    assert "image bad: captured_at 1e+20 is not a Unix time" in done.stdout


def test_a_photo_csv_row_with_latitude_200_is_skipped_naming_the_photo(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "p").mkdir()
    lines = ["image,lat,lon,height,heading,fx,capture_time,sequence"]
    for i, lat in enumerate([37.5665, 37.5666, 200.0]):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
            tmp_path / "p" / f"x{i}.png"
        )
        lines.append(f"x{i}.png,{lat},126.978,40,0,50,2024-05-01T10:00:0{i}Z,run")
    (tmp_path / "p" / "poses.csv").write_text("\n".join(lines))
    report = ingest_photos(tmp_path / "p" / "poses.csv", tmp_path / "db", city="c", progress=False)
    assert report.added == 2
    assert [(s.image, s.reason.split(" (")[0]) for s in report.skipped] == [
        (
            str(tmp_path / "p" / "x2.png"),
            "image x2.png: lat 200.0 / lon 126.978 outside [-90, 90] / [-180, 360] degrees",
        )
    ]


# --- truncated JPEGs --------------------------------------------------------------------------
def _jpeg_panorama(folder: Path, cut: int = 0) -> Path:
    """A 128x64 JPEG panorama with its range map and CSV; ``cut`` bytes removed from its end."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    cv2.imwrite(str(folder / "p.jpg"), rng.integers(0, 255, (64, 128, 3), dtype=np.uint8))
    if cut:
        data = (folder / "p.jpg").read_bytes()
        (folder / "p.jpg").write_bytes(data[: len(data) - cut])
    np.save(folder / "p.npy", np.full((64, 128), 10.0, np.float32))
    (folder / "panoramas.csv").write_text(
        "image,lat,lon,height,heading,capture_time,traversal,depth\n"
        "p.jpg,37.5,127.0,30,0,2024-05-01T10:00:00Z,drive,p.npy\n"
    )
    return folder / "panoramas.csv"


@pytest.mark.parametrize("cut", [2, 2000])
def test_a_truncated_jpeg_panorama_is_refused_and_nothing_is_written(tmp_path, cut):
    done = _cli("ingest", _jpeg_panorama(tmp_path / "cut", cut), tmp_path / "db", "--city", "c",
                "--size", "16", "16")  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(
        "error: CSV row 1, column 'image': expected a complete PNG/JPEG panorama, got "
    )
    assert "as a truncated JPEG" in done.stderr and not (tmp_path / "db").exists()
    intact = _jpeg_panorama(tmp_path / "intact")
    ingest_panoramas(intact, tmp_path / "db", city="c", size=(16, 16), progress=False)
    with pytest.raises(CorruptSourceImageError, match=r"p\.jpg as a truncated JPEG \(\d+ bytes"):
        ingest_panoramas(tmp_path / "cut" / "panoramas.csv", tmp_path / "db", progress=False)
    assert len(CityDB.open(tmp_path / "db")) == 8  # the intact panorama only


def test_a_truncated_jpeg_photo_is_skipped_with_the_reason(tmp_path):
    source = _mapillary(tmp_path / "mly", {})
    data = (tmp_path / "mly" / "bad.jpg").read_bytes()
    (tmp_path / "mly" / "bad.jpg").write_bytes(data[:-300])
    report = ingest_photos(source, tmp_path / "db", city="c", frame=FRAME, progress=False)
    assert report.added == 3 and [s.image for s in report.skipped] == [
        str(tmp_path / "mly" / "bad.jpg")
    ]
    assert report.skipped[0].reason.startswith("the image is a truncated JPEG (")


# --- view options are checked before the CSV --------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--size", "0", "0"], r"size \(--size W H\) must be two positive integers .* "
         r"got \(0, 0\)"),
        (["--fov", "0"], r"fov_deg \(--fov\) must be a horizontal field of view in \(0, 180\) "
         r"degrees, got 0\.0"),
        (["--fov", "180"], r"fov_deg \(--fov\) .* got 180\.0"),
    ],
    ids=["size-0-0", "fov-0", "fov-180"],
)  # fmt: skip
def test_impossible_view_options_name_the_option_not_a_csv_row(tmp_path, flags, message):
    csv_path = _jpeg_panorama(tmp_path / "data")
    done = _cli("ingest", csv_path, tmp_path / "db", "--city", "c", *flags)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "CSV row" not in done.stderr and not (tmp_path / "db").exists()
    with pytest.raises(IngestError, match=message):
        ingest_panoramas(
            csv_path,
            tmp_path / "db",
            city="c",
            size=tuple(int(v) for v in flags[1:]) if flags[0] == "--size" else (16, 16),
            fov_deg=float(flags[1]) if flags[0] == "--fov" else 90.0,
            progress=False,
        )


# --- a first photo run that fails while writing ----------------------------------------------
def _small_file_limit() -> None:
    """In the child: files may grow to 100 kB, and a write past that fails with EFBIG."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def test_a_first_photo_run_failing_with_an_os_error_leaves_no_folder(tmp_path):
    folder = tmp_path / "mly"
    source = _mapillary(folder, {})
    rng = np.random.default_rng(3)
    for image_id in ("a0", "a1", "a2", "bad"):  # noise of 256x192: about 150 kB a view as PNG
        Image.fromarray(rng.integers(0, 256, (192, 256, 3), dtype=np.uint8)).save(
            folder / f"{image_id}.jpg", quality=95
        )
    done = _cli(
        "ingest-photos", source, tmp_path / "db", "--city", "c",
        preexec_fn=_small_file_limit, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    assert done.returncode == 1 and "OSError: [Errno 27] File too large" in done.stderr
    assert not (tmp_path / "db").exists()  # the half-written first run was removed
