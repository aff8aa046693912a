"""CityDBWriter.append_views: index rows from typed arrays, read back, and their validation."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from cityenv.citydb.format import ViewRecords, to_utc_micros
from cityenv.citydb.reader import CityDB
from cityenv.citydb.writer import CityDBWriter
from cityenv.errors import CityDBError, CityDBFormatError, InvalidPoseError, ShapeMismatchError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose, heading_quaternions

CAMERA = PinholeCamera.from_fov(64, 48, 90.0)
WIDE = PinholeCamera.from_fov(64, 48, 120.0)


def _records(**overrides) -> ViewRecords:
    """Two panoramas (views 0, 2 of p-a; view 1 of p-b), headings 0, 90, 180."""
    t0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    fields = {
        "panorama_ids": ["p-a", "p-b"],
        "traversal_ids": ["drive-1", "drive-2"],
        "capture_times": [t0, t0 + timedelta(hours=3)],
        "panorama_positions": [[0.0, 0.0, 2.5], [10.0, 5.0, 2.0]],
        "view_panorama": np.array([0, 1, 0]),
        "wxyz": heading_quaternions([0.0, 90.0, 180.0]),
        "cameras": CAMERA,
        "source": "import:test",
    }
    fields.update(overrides)
    return ViewRecords(**fields)


def test_append_views_round_trips_through_the_reader(tools, tmp_path):
    with CityDBWriter(tmp_path / "db", city="c", frame=tools.FRAME) as writer:
        ids = writer.append_views(_records())
    assert ids == range(0, 3)
    db = CityDB.open(tmp_path / "db")
    assert (len(db), db.num_panoramas, db.manifest.parts[0].views_at_panorama) == (3, 2, True)
    np.testing.assert_array_equal(db.positions, [[0, 0, 2.5], [10, 5, 2], [0, 0, 2.5]])
    np.testing.assert_array_equal(db.view_panorama, [0, 1, 0])
    assert db.traversal_ids == ["drive-1", "drive-2"]
    for view_id, heading in enumerate([0.0, 90.0, 180.0]):
        expected = Pose.from_heading(db.positions[view_id], heading)
        assert db.pose(view_id).allclose(expected, atol=1e-6)  # float32 in-memory index
        assert db.camera(view_id) == CAMERA
    meta = db.metadata(2)
    assert (meta.panorama_id, meta.view_index, meta.traversal_id) == ("p-a", 1, "drive-1")
    assert meta.capture_time == datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    assert meta.source == "import:test"
    lat, lon, height = tools.FRAME.enu_to_geodetic([0.0, 0.0, 2.5])
    assert (meta.lat, meta.lon, meta.height) == pytest.approx((lat, lon, height), abs=1e-12)
    assert db.metadata(1).capture_time - meta.capture_time == timedelta(hours=3)
    np.testing.assert_array_equal(db.load_depth(1), np.zeros((48, 64)))  # index only: no depth


def test_append_views_continues_after_added_panoramas(tools, tmp_path, camera):
    rng = np.random.default_rng(0)
    with CityDBWriter(tmp_path / "db", city="c", frame=tools.FRAME) as writer:
        tools.add_random_panorama(writer, rng, camera, "first", np.zeros(3))  # 8 pending views
        ids = writer.append_views(
            _records(cameras=[CAMERA, WIDE], view_camera=[1, 0, 1], view_index=[5, 0, 6])
        )
        assert ids == range(8, 11) and writer.num_panoramas == 3
    db = CityDB.open(tmp_path / "db")
    assert db.camera(8) == WIDE and db.camera(9) == CAMERA and db.camera(0) == camera
    assert [db.metadata(v).view_index for v in (8, 9, 10)] == [5, 0, 6]
    assert db.metadata(9).panorama_index == 2
    assert db.load_image(3).shape == (12, 16, 3)  # the earlier views keep their blobs


def test_view_positions_apart_from_the_panorama(tools, tmp_path):
    own = np.array([[0.5, 0.0, 2.5], [10.0, 5.0, 2.0], [-0.5, 0.0, 2.5]])
    with CityDBWriter(tmp_path / "db", city="c", frame=tools.FRAME) as writer:
        writer.append_views(_records(view_positions=own))
    db = CityDB.open(tmp_path / "db")
    assert not db.manifest.parts[0].views_at_panorama
    np.testing.assert_array_equal(db.view_positions(np.arange(3)), own)
    np.testing.assert_array_equal(db.panorama_positions[0], [0.0, 0.0, 2.5])


def test_capture_times_as_micros_datetime64_and_datetimes_agree():
    t0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    micros = np.array([to_utc_micros(t0), to_utc_micros(t0) + 1])
    as64 = np.array(["2024-05-01T12:00:00", "2024-05-01T12:00:00.000001"], "datetime64[us]")
    for times in (micros, as64, [t0, t0 + timedelta(microseconds=1)]):
        np.testing.assert_array_equal(_records(capture_times=times).capture_times, micros)


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        (
            {"panorama_ids": ["p-a", "p-b", "p-c"]},
            ShapeMismatchError,
            r"panorama_ids must have length 2 \(one per panorama\), got 3",
        ),
        ({"traversal_ids": "drive-1"}, CityDBFormatError, "got the single string 'drive-1'"),
        (
            {"panorama_positions": [[0.0, 0.0], [1.0, 1.0]]},
            ShapeMismatchError,
            r"panorama_positions must have shape \(P, 3\), got shape \(2, 2\)",
        ),
        (
            {"wxyz": np.ones((3, 3))},
            ShapeMismatchError,
            r"wxyz must have shape \(3, 4\), got shape \(3, 3\)",
        ),
        (
            {"wxyz": heading_quaternions([0.0, 1.0, 2.0]) * 2.0},
            InvalidPoseError,
            r"unit quaternions .* got norms in \[2, 2\]; normalise them",
        ),
        (
            {"panorama_positions": [[0.0, 0.0, np.nan], [1.0, 1.0, 1.0]]},
            InvalidPoseError,
            "panorama_positions must be finite",
        ),
        (
            {"view_panorama": np.array([0.0, 1.0, 0.0])},
            CityDBFormatError,
            r"view_panorama must be an integer array of shape \(3,\), got dtype float64",
        ),
        (
            {"view_panorama": np.array([0, 2, 0])},
            CityDBFormatError,
            r"view_panorama must lie in \[0, 2\), got values in \[0, 2\]",
        ),
        (
            {"view_panorama": np.zeros((3, 1), int)},
            ShapeMismatchError,
            r"view_panorama must have shape \(V,\).*got shape \(3, 1\)",
        ),
        (
            {"view_camera": [0, 1, 0]},
            CityDBFormatError,
            r"view_camera must lie in \[0, 1\), got values in \[0, 1\]",
        ),
        (
            {"view_positions": np.zeros((2, 3))},
            ShapeMismatchError,
            r"view_positions must have shape \(3, 3\), got shape \(2, 3\)",
        ),
        (
            {"capture_times": [1.5, 2.5]},
            CityDBFormatError,
            "capture_times must be datetimes, numpy datetime64 or int64 microseconds",
        ),
        (
            {"capture_times": np.zeros(3, np.int64)},
            ShapeMismatchError,
            r"capture_times must have shape \(2,\)",
        ),
        ({"cameras": [(64, 48)]}, CityDBFormatError, "cameras must be a PinholeCamera"),
    ],
)
def test_view_records_say_what_was_expected_and_what_came(overrides, error, match):
    with pytest.raises(error, match=match):
        _records(**overrides)


def test_unknown_image_format_suggests_the_close_one(tools, tmp_path):
    with pytest.raises(
        CityDBError, match=r"image_format must be one of \['jpeg', 'png'\], got 'jpg'\. Did you"
    ):
        CityDBWriter(tmp_path / "db", city="c", frame=tools.FRAME, image_format="jpg")
