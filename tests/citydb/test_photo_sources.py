"""Photo sources (Mapillary JSON, photo CSV, EXIF folder), headings, heights, and bad input.

Small noise images keep these fast; the town and SfM tests are in ``test_photo_ingest.py``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from PIL import ExifTags, Image

from cityenv.citydb.photos import (
    GeoidModel,
    choose_headings,
    ingest_photos,
    motion_headings,
)
from cityenv.citydb.reader import CityDB
from cityenv.errors import IngestError, PhotoSourceError
from cityenv.geometry.geodesy import LocalFrame
from cityenv.geometry.pose import Pose

pytestmark = pytest.mark.filterwarnings("ignore::cityenv.errors.DepthlessViewWarning")

FRAME = LocalFrame(37.5665, 126.978, 40.0)
T0 = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)


def _noise(rng: np.random.Generator, w: int = 64, h: int = 48) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _photo(path, rng, *, enu=None, when=T0, f35=28, w=64, h=48, gps=True, compass=None):
    """A JPEG with EXIF GPS (at ENU ``enu`` of FRAME), time and 35 mm focal length."""
    exif = Image.Exif()
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    if f35 is not None:
        sub[ExifTags.Base.FocalLengthIn35mmFilm] = f35
    sub[ExifTags.Base.DateTimeOriginal] = when.strftime("%Y:%m:%d %H:%M:%S")
    sub[ExifTags.Base.OffsetTimeOriginal] = "+00:00"
    if gps:
        lat, lon, height = FRAME.enu_to_geodetic(np.asarray(enu if enu is not None else [0, 0, 0]))
        g = exif.get_ifd(ExifTags.IFD.GPSInfo)
        g[1], g[2] = "N", (float(lat), 0.0, 0.0)
        g[3], g[4] = "E", (float(lon), 0.0, 0.0)
        g[5], g[6] = b"\x00", float(height)
        if compass is not None:
            g[16], g[17] = "T", float(compass)
    _noise(rng, w, h).save(path, exif=exif)
    return path


def _walk(folder, rng, n=4, start=0, **kwargs):
    """``n`` photos walking east 3 m apart, 2 s apart."""
    folder.mkdir(exist_ok=True)
    return [
        _photo(
            folder / f"walk_{start + i:02d}.jpg",
            rng,
            enu=[3.0 * i, 0, 0],
            when=T0 + timedelta(seconds=2 * i),
            **kwargs,
        )  # fmt: skip
        for i in range(n)
    ]


# --- headings and heights -------------------------------------------------------------------
def test_motion_headings_survive_jitter_and_stops():
    rng = np.random.default_rng(0)
    t = np.arange(30.0)
    x = np.concatenate(
        [np.zeros(5), np.arange(10.0) * 1.5, np.full(5, 13.5), 13.5 + np.arange(10.0) * 1.5]
    )
    enu = np.stack([x, np.zeros(30)], 1) + rng.normal(0, 0.5, (30, 2))  # east, jitter 0.5 m
    headings = motion_headings(enu, t)
    assert np.all(np.abs((headings - 90 + 180) % 360 - 180) < 12), headings
    assert np.isnan(motion_headings(enu[:1], t[:1])).all()  # one photo: no motion
    assert np.isnan(motion_headings(rng.normal(0, 0.5, (6, 2)), t[:6])).all()  # never moves


@pytest.mark.parametrize(
    ("compass", "kinds", "source", "expected"),
    [
        ([92, 88, 91], ["true"] * 3, "compass", [92, 88, 91]),  # agrees: trusted
        ([150, 149, 151], ["magnetic"] * 3, "motion", [90, 90, 90]),  # 60 deg off: not trusted
        ([150, 149, 151], ["computed"] * 3, "compass", [150, 149, 151]),  # SfM-refined: trusted
        ([np.nan] * 3, [""] * 3, "motion", [90, 90, 90]),
    ],
)
def test_the_compass_is_used_only_when_trustworthy(compass, kinds, source, expected):
    choice = choose_headings(np.array(compass, float), kinds, np.full(3, 90.0))
    assert choice.source == source
    np.testing.assert_allclose(choice.headings, expected)


def test_a_device_compass_is_used_when_there_is_no_motion():
    choice = choose_headings(np.array([42.0]), ["magnetic"], np.array([np.nan]))
    assert choice.source == "compass" and choice.headings[0] == 42.0


def test_heights_above_sea_level_say_which_geoid_was_assumed():
    lat, lon, alt = np.array([37.5]), np.array([127.0]), np.array([30.0])
    h, note = GeoidModel(25.0).to_ellipsoidal(lat, lon, alt)
    assert h[0] == 55.0 and "undulation of 25.0 m" in note
    h, note = GeoidModel().to_ellipsoidal(lat, lon, alt)
    if "no geoid grid" in note:  # what this machine has: say that altitude = ellipsoidal height
        assert h[0] == 30.0 and "assumed 0 m" in note
    else:  # a grid is installed: the undulation near Seoul is about +25 m
        assert "geoid (pyproj)" in note and 45.0 < h[0] < 65.0


# --- the three sources ----------------------------------------------------------------------
def _mapillary(folder, rng):
    """Mapillary image-API entries: two sequences on two days, and entries that must be skipped."""
    folder.mkdir()
    entries = []

    def entry(image_id, sequence, enu, when, **fields):
        lat, lon, _ = FRAME.enu_to_geodetic(np.asarray(enu, float))
        _noise(rng, 80, 60).save(folder / f"{image_id}.jpg")
        entries.append({
            "id": image_id, "sequence": sequence, "captured_at": int(when.timestamp() * 1000),
            "geometry": {"type": "Point", "coordinates": [float(lon) + 1e-4, float(lat)]},
            "computed_geometry": {"type": "Point", "coordinates": [float(lon), float(lat)]},
            "altitude": 10.0, "width": 80, "height": 60, "make": "Acme", "model": "Cam",
            "camera_type": "perspective", "camera_parameters": [0.75, -0.05, 0.01], **fields,
        })  # fmt: skip

    for i in range(4):  # day 1: SfM-refined compass angles looking north-east
        entry(
            f"a{i}",
            "SEQ_A",
            [3 * i, 0, 0],
            T0 + timedelta(seconds=i),
            computed_compass_angle=45.0 + i,
        )
    for i in range(3):  # day 2, the other way: a device compass only, which agrees with motion
        entry(
            f"b{i}",
            "SEQ_B",
            [9 - 4 * i, 1, 0],
            T0 + timedelta(days=1, seconds=i),
            compass_angle=268.0,
        )
    entry("c0", "SEQ_C", [5, 5, 0], T0)  # a sequence of one photo without compass: no heading
    entry("d0", "SEQ_D", [6, 6, 0], T0, compass_angle=10.0)  # one photo with a compass: kept
    entry("p0", "SEQ_E", [7, 7, 0], T0, camera_type="spherical")  # a panorama: use `ingest`
    entry("w0", "SEQ_F", [8, 8, 0], T0, compass_angle=1.0, width=1024, height=768)  # resized
    entries.append({"id": "gone", "sequence": "SEQ_G", "captured_at": 0})  # no file
    (folder / "images.json").write_text(json.dumps({"data": entries}))
    return folder / "images.json"


def test_mapillary_metadata_makes_one_traversal_per_sequence(tmp_path):
    source = _mapillary(tmp_path / "mly", np.random.default_rng(0))
    report = ingest_photos(source, tmp_path / "db", city="c", frame=FRAME, progress=False)
    assert report.traversals == {"seq:SEQ_A": 4, "seq:SEQ_B": 3, "seq:SEQ_D": 1}
    reasons = {s.image.split("/")[-1]: s.reason for s in report.skipped}
    assert "sequence of one photo without a compass" in reasons["c0.jpg"]
    assert "'spherical' is not a perspective photo" in reasons["p0.jpg"]
    assert "describes a 1024x768 image but the file is 80x60" in reasons["w0.jpg"]
    assert "no local file for image gone" in reasons["gone"]
    db = CityDB.open(tmp_path / "db")
    by_id = {db.metadata(i).panorama_id: i for i in range(len(db))}
    a1 = db.load_view(by_id["a1"])
    assert a1.pose.heading_deg == pytest.approx(46.0) and a1.camera.fx == pytest.approx(60.0)
    np.testing.assert_allclose(a1.pose.position[:2], [3, 0], atol=0.01)  # computed_geometry
    assert a1.metadata.capture_time == T0 + timedelta(seconds=1)  # captured_at in ms
    assert db.load_view(by_id["b1"]).pose.heading_deg == pytest.approx(268.0)
    assert db.load_view(by_id["d0"]).pose.heading_deg == pytest.approx(10.0)
    # two traversals on two days: the cross-temporal filter can pair them
    assert db.metadata(by_id["a0"]).traversal_id != db.metadata(by_id["b0"]).traversal_id
    assert "converted" in report.summary() or "assumed" in report.summary()


def test_a_photo_csv_gives_explicit_poses_and_intrinsics(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "p").mkdir()
    for i in range(2):
        _noise(rng).save(tmp_path / "p" / f"x{i}.png")  # no EXIF at all
    lat, lon, h = (float(v) for v in FRAME.enu_to_geodetic(np.array([10.0, 20.0, 1.5])))
    rows = [
        "image,lat,lon,height,heading,pitch,fx,cy,capture_time,sequence",
        f"x0.png,{lat!r},{lon!r},{h!r},30,-5,50,20,2024-05-01T10:00:00Z,run",
        f"x1.png,{lat!r},{lon!r},{h!r},40,0,50,20,2024-05-01T10:00:01Z,run",
    ]
    (tmp_path / "p" / "poses.csv").write_text("\n".join(rows))
    report = ingest_photos(tmp_path / "p" / "poses.csv", tmp_path / "db", city="c", frame=FRAME,
                           progress=False)  # fmt: skip
    assert report.added == 2 and report.headings["seq:run"].startswith("headings from compass")
    view = CityDB.open(tmp_path / "db").load_view(0)
    assert view.pose.allclose(Pose.from_heading([10.0, 20.0, 1.5], 30.0, -5.0), atol=1e-6)
    assert (view.camera.fx, view.camera.fy, view.camera.cx, view.camera.cy) == (50, 50, 32, 20)


def test_mixed_resolutions_get_their_own_intrinsics(tmp_path):
    rng = np.random.default_rng(2)
    _walk(tmp_path / "f", rng, n=2)
    _walk(tmp_path / "f", rng, n=2, start=2, w=128, h=96)
    report = ingest_photos(tmp_path / "f", tmp_path / "db", city="c", frame=FRAME, progress=False)
    db = CityDB.open(tmp_path / "db")
    assert report.added == 4 and sorted(c.width for c in db.cameras) == [64, 128]
    fx = {c.width: c.fx for c in db.cameras}  # 28 mm equivalent: fx scales with the diagonal
    assert fx[128] == pytest.approx(2 * fx[64]) and fx[64] == pytest.approx(
        28 * 80 / math.hypot(36, 24)
    )


# --- bad input ------------------------------------------------------------------------------
def test_bad_photos_are_skipped_with_reasons_and_the_rest_ingested(tmp_path, capsys):
    rng = np.random.default_rng(3)
    folder = tmp_path / "f"
    _walk(folder, rng, n=3)
    _photo(folder / "no_gps.jpg", rng, gps=False)
    _photo(folder / "focal_zero.jpg", rng, enu=[1, 1, 0], f35=0)
    _photo(folder / "no_focal.jpg", rng, enu=[1, 1, 0], f35=None)
    data = bytearray((folder / "walk_00.jpg").read_bytes())
    at = data.find(b"Exif\x00\x00") + 6
    data[at : at + 40] = b"\xff" * 40  # the TIFF header and first IFD of the EXIF block
    (folder / "corrupt_exif.jpg").write_bytes(bytes(data))
    (folder / "not_an_image.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    report = ingest_photos(folder, tmp_path / "db", city="c", frame=FRAME, progress=False)
    reasons = {s.image.split("/")[-1]: s.reason for s in report.skipped}
    assert report.added == 3 and len(reasons) == 5, reasons
    assert reasons["no_gps.jpg"].startswith("no GPS position")
    assert "FocalLengthIn35mmFilm = 0.0 cannot be right" in reasons["focal_zero.jpg"]
    assert reasons["no_focal.jpg"].startswith("no focal length")
    assert reasons["corrupt_exif.jpg"].startswith("corrupt EXIF block")
    assert "not a readable image" in reasons["not_an_image.jpg"]
    summary = report.summary()
    assert all(f"skipped {folder / name}" in summary for name in reasons)


def test_nothing_usable_writes_nothing(tmp_path):
    rng = np.random.default_rng(4)
    _photo((tmp_path / "f").mkdir() or tmp_path / "f" / "a.jpg", rng, gps=False)
    with pytest.raises(IngestError, match=r"(?s)got none of 1; nothing was written.*no GPS"):
        ingest_photos(tmp_path / "f", tmp_path / "db", city="c", progress=False)
    assert not (tmp_path / "db").exists()
    (tmp_path / "empty").mkdir()  # a folder the user made stays, and stays empty
    with pytest.raises(IngestError):
        ingest_photos(tmp_path / "f", tmp_path / "empty", city="c", progress=False)
    assert list((tmp_path / "empty").iterdir()) == []


def test_a_one_photo_sequence_without_compass_is_skipped_with_one_that_has_it_kept(tmp_path):
    rng = np.random.default_rng(5)
    _photo((tmp_path / "f").mkdir() or tmp_path / "f" / "alone.jpg", rng)
    with pytest.raises(IngestError, match=r"sequence of one photo without a compass"):
        ingest_photos(tmp_path / "f", tmp_path / "db", city="c", progress=False)
    _photo(tmp_path / "f" / "alone.jpg", rng, compass=123.0)
    report = ingest_photos(tmp_path / "f", tmp_path / "db", city="c", progress=False)
    assert report.added == 1
    assert CityDB.open(tmp_path / "db").pose(0).heading_deg == pytest.approx(123.0)


def test_a_csv_naming_missing_files_skips_them(tmp_path):
    rng = np.random.default_rng(6)
    _walk(tmp_path / "f", rng, n=3)
    lines = (
        ["image,sequence"]
        + [f"walk_{i:02d}.jpg,s" for i in range(3)]
        + ["gone.jpg,s", "walk_00.jpg,s"]
    )
    lines.append("walk_01.jpg,s,")  # a trailing empty cell is fine
    (tmp_path / "f" / "list.csv").write_text("\n".join(lines))
    (tmp_path / "f" / "bad.csv").write_text("image,lat\nwalk_00.jpg,north\n")
    report = ingest_photos(tmp_path / "f" / "list.csv", tmp_path / "db", city="c", progress=False)
    reasons = [s.reason for s in report.skipped]
    assert report.added == 3 and any("names a file that does not exist" in r for r in reasons)
    assert sum("repeats" in r for r in reasons) == 2
    with pytest.raises(IngestError, match=r"column 'lat': 'north' is not a number"):
        ingest_photos(tmp_path / "f" / "bad.csv", tmp_path / "db2", city="c", progress=False)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda p: (p.write_bytes("image\nPhoto_é.jpg\n".encode("latin-1")), p)[1],
         PhotoSourceError,
         r"expected a UTF-8 CSV .* offset 12 \(b'\\xe9', e\.g\. Latin-1\); re-save it as UTF-8"),
        (lambda p: (p.with_suffix(".json").write_text("{not json"), p.with_suffix(".json"))[1],
         PhotoSourceError, r"expected UTF-8 JSON"),
        (lambda p: (p.with_suffix(".json").write_text('{"data": 3}'), p.with_suffix(".json"))[1],
         PhotoSourceError, r"expected a list of image objects"),
        (lambda p: (p.with_suffix(".txt").write_text("x"), p.with_suffix(".txt"))[1],
         PhotoSourceError, r"expected a folder of photos, a \.csv or a Mapillary \.json"),
        (lambda p: p.parent / "missing.csv",
         PhotoSourceError, r"expected a photo CSV .* no such file"),
        (lambda p: (p.parent / "empty").mkdir() or p.parent / "empty",
         PhotoSourceError, r"expected photos .* got none"),
        (lambda p: (p.write_text("name,lat\nx.jpg,1\n"), p)[1],
         PhotoSourceError, r"expected an 'image' column"),
    ],
)  # fmt: skip
def test_unreadable_sources_are_typed_errors(tmp_path, make, error, message):
    source = make(tmp_path / "photos.csv")
    with pytest.raises(error, match=message):
        ingest_photos(source, tmp_path / "db", city="c", progress=False)
    assert not (tmp_path / "db").exists()


def test_a_database_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "db").write_text("not a folder")
    with pytest.raises(IngestError, match=r"expected a database folder at .*db, got a file"):
        ingest_photos(tmp_path, tmp_path / "db", city="c")


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "cityenv.citydb", "ingest-photos", *map(str, args), "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_command_line_prints_the_summary_or_the_error(tmp_path):
    rng = np.random.default_rng(7)
    _walk(tmp_path / "f", rng, n=3)
    _photo(tmp_path / "f" / "no_gps.jpg", rng, gps=False)
    done = _cli(tmp_path / "f", tmp_path / "db", "--city", "c")
    assert done.returncode == 0, done.stderr
    assert "4 photos: 3 views written" in done.stdout and "skipped" in done.stdout
    assert "DepthlessViewWarning" in done.stderr  # no depth: said once, with what it means
    (tmp_path / "file").write_text("x")
    refused = _cli(tmp_path / "f", tmp_path / "file", "--city", "c")
    assert refused.returncode == 2 and refused.stderr.startswith(
        "error: expected a database folder"
    )
    assert "Traceback" not in refused.stderr


def test_exif_orientation_turns_the_pixels_upright(tmp_path):
    rng = np.random.default_rng(8)
    paths = _walk(tmp_path / "f", rng, n=3, w=64, h=48)
    for path in paths:  # stored landscape, shown portrait: Orientation 6 = turn 90 deg clockwise
        with Image.open(path) as im:
            exif = im.getexif()
            pixels = np.asarray(im)
        exif[ExifTags.Base.Orientation] = 6
        Image.fromarray(pixels).save(path, exif=exif)
    ingest_photos(tmp_path / "f", tmp_path / "db", city="c", frame=FRAME, progress=False)
    db = CityDB.open(tmp_path / "db")
    view = db.load_view(0)
    assert view.image.shape == (64, 48, 3) and view.camera.cx == 24.0
    with Image.open(paths[0]) as im:
        upright = np.rot90(np.asarray(im), k=-1)  # what a viewer shows
    assert np.abs(view.image.astype(int) - upright).mean() < 1.0


class _ConstantDepth:
    """A third-party depth source: every pixel at ``metres`` (or a wrong shape, to be refused)."""

    needs_sfm = False

    def __init__(self, metres: float = 7.0, shape: tuple[int, int] | None = None) -> None:
        self.metres, self.shape = metres, shape

    def __call__(self, views):
        return [np.full(self.shape or v.camera.shape, self.metres, np.float32) for v in views]


def test_a_registered_depth_source_plugs_in_and_its_output_is_checked(tmp_path):
    from cityenv.citydb.photos import DEPTH_SOURCES
    from cityenv.errors import DepthModelError

    DEPTH_SOURCES.register("constant-test", _ConstantDepth, replace=True)
    try:
        _walk(tmp_path / "f", np.random.default_rng(9), n=3)
        report = ingest_photos(tmp_path / "f", tmp_path / "db", city="c", frame=FRAME,
                               depth="constant-test", depth_options={"metres": 7.0},
                               progress=False)  # fmt: skip
        assert report.without_depth == 0
        np.testing.assert_allclose(CityDB.open(tmp_path / "db").load_view(0).depth, 7.0)
        with pytest.raises(DepthModelError, match=r"must return .* shape \(48, 64\) .* got shape "
                           r"\(4, 4\); fix the source \(nothing was written\)"):  # fmt: skip
            ingest_photos(tmp_path / "f", tmp_path / "db2", city="c", progress=False,
                          depth=_ConstantDepth(shape=(4, 4)))  # fmt: skip
        assert not (tmp_path / "db2").exists()
        with pytest.raises(DepthModelError, match=r"takes other options, got \['colour'\]"):
            ingest_photos(tmp_path / "f", tmp_path / "db2", depth="constant-test",
                          depth_options={"colour": 1})  # fmt: skip
    finally:
        DEPTH_SOURCES.unregister("constant-test")
