"""The log_* functions: real town renders logged to an .rrd and read back with RrdReader."""

from __future__ import annotations

import numpy as np
import pytest
import rerun as rr
from scipy.spatial.transform import Rotation

from cityenv.errors import ShapeMismatchError
from cityenv.geometry import LocalFrame, Pose, unproject
from cityenv.viz import default_blueprint, log
from cityenv.viz.log import _strided

FRAME = LocalFrame(37.5665, 126.9780, 30.0)


def test_quaternion_heading_90_is_xyzw():
    # heading 90 looks east: camera x (right) = south, y (down) = -up, z (forward) = east, so
    # R = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]: w = 1/2, x = (R21 - R12)/4w ... by hand
    pose = Pose.from_heading((1.0, 2.0, 3.0), 90.0)
    q = log.quaternion_xyzw(pose)
    expected = np.array([-0.5, 0.5, -0.5, 0.5])
    assert np.allclose(q, expected) or np.allclose(q, -expected)
    # scipy reads (x, y, z, w), as Rerun does
    R = Rotation.from_quat(q).as_matrix()
    assert np.allclose(R, [[0, 0, 1], [-1, 0, 0], [0, -1, 0]], atol=1e-12)


def test_quaternion_identity():
    assert np.allclose(log.quaternion_xyzw(Pose.identity()), [0, 0, 0, 1])


def test_strided_depth_matches_full_unprojection(town, lane, camera):
    pose = Pose.from_heading(lane[3], 30.0)
    depth = town.render(camera, pose).depth
    full = unproject(depth, camera, pose)
    for stride in (1, 3, 4):
        sub, sub_camera, offset = _strided(depth, camera, stride)
        assert np.allclose(unproject(sub, sub_camera, pose), full[offset::stride, offset::stride])


def _log_steps(rec, make_chunk, camera, refs_per_step, frame_offset=0):
    """Log one step per entry of ``refs_per_step`` the way RerunRecorder does; frames logged."""
    log.log_world(rec)
    log.log_calibration(rec, camera)
    slots, frame, path = [], frame_offset, []
    for step, num_refs in enumerate(refs_per_step, start=1):
        chunk = make_chunk(step, length=3, num_refs=num_refs)
        log.set_time(rec, step=step)
        out = chunk.output
        for i, pose in enumerate(chunk.trajectory):
            log.set_time(rec, frame=frame, sim_time=chunk.trajectory.timestamps[i])
            frame += 1
            log.log_pose(rec, pose)
            log.log_image(rec, out.frames[i], jpeg_quality=None if step % 2 else 80)
            warp = out.warps[i] if out.warps is not None else None
            mask = out.masks[i] if out.masks is not None else None
            log.log_warp(rec, warp, mask)
            path.append(pose.position)
        log.log_path(rec, np.stack(path))
        geo = log.lat_lon(FRAME, np.stack(path))
        log.log_geo_points(rec, geo[-1:])
        log.log_geo_line(rec, geo)
        slots = log.log_references(rec, out.references.views, slots)
        views = out.references.views
        log.log_reference_depth(rec, views[0] if views else None, stride=2)
        log.log_scalars(rec, {"reward": 0.1 * step, "progress_m": step, "skipped": None})
    return frame - frame_offset


@pytest.fixture
def logged(tmp_path, make_chunk, read_rrd, camera):
    path = tmp_path / "steps.rrd"
    rec = rr.RecordingStream("cityenv_test_viz")
    rec.save(path, default_blueprint=default_blueprint(2))
    frames = _log_steps(rec, make_chunk, camera, refs_per_step=[2, 1, 0])
    rec.flush()
    rec.disconnect()
    return read_rrd(path), frames, make_chunk


def test_entities_and_frame_counts(logged):
    rrd, frames, _ = logged
    assert frames == 9
    expected = {
        "/world",
        "/world/ego/camera",
        "/world/ego/trajectory",
        "/world/references/0",
        "/world/references/1",
        "/world/references/depth_points",
        "/warp/image",
        "/warp/mask",
        "/map/ego",
        "/map/trajectory",
        "/scalars/reward",
        "/scalars/progress_m",
    }
    assert expected <= rrd.entities
    assert "/scalars/skipped" not in rrd.entities
    # steps 1 and 3 raw, step 2 JPEG
    assert rrd.rows("/world/ego/camera", "Image:buffer") == 6
    assert rrd.rows("/world/ego/camera", "EncodedImage:blob") == 3
    assert rrd.rows("/world/ego/camera", "Transform3D:translation") == 9
    assert rrd.static[("/world/ego/camera", "Pinhole:image_from_camera")] == 1
    assert rrd.static[("/world", "ViewCoordinates:xyz")] == 1
    # warps exist for steps 1 and 2 only (step 3 has no references)
    assert rrd.rows("/warp/image", "Image:buffer") == 6
    assert rrd.rows("/warp/mask", "SegmentationImage:buffer") == 6
    assert rrd.rows("/scalars/reward", "Scalars:scalars") == 3
    assert rrd.num_blueprints == 1


def test_poses_read_back_in_xyzw(logged):
    rrd, _, make_chunk = logged
    quats = rrd.column("/world/ego/camera", "Transform3D:quaternion")
    translations = rrd.column("/world/ego/camera", "Transform3D:translation")
    first = make_chunk(1, length=3, num_refs=0).trajectory[0]
    assert np.allclose(quats[0][0], log.quaternion_xyzw(first), atol=1e-6)
    assert np.allclose(translations[0][0], first.position, atol=1e-4)


def test_reference_slots_are_cleared(logged):
    rrd, _, _ = logged
    # step 1 fills slots 0 and 1, step 2 refills 0 and clears 1, step 3 clears 0
    assert rrd.rows("/world/references/0", "Image:buffer") == 2
    assert rrd.rows("/world/references/1", "Image:buffer") == 1
    assert rrd.rows("/world/references/1", "Clear:is_recursive") == 1
    assert rrd.rows("/world/references/0", "Clear:is_recursive") == 1
    assert rrd.rows("/world/references/0", "Pinhole:image_from_camera") == 2
    # depth points for steps 1-2, cleared at step 3
    assert rrd.rows("/world/references/depth_points", "Points3D:positions") == 2
    assert rrd.rows("/world/references/depth_points", "Clear:is_recursive") == 1


def test_unchanged_references_are_not_logged_again(make_chunk):
    rec = rr.RecordingStream("cityenv_test_viz", default_enabled=False)
    views = make_chunk(1, length=1, num_refs=2).output.references.views
    ids = log.log_references(rec, views)
    assert ids == [v.view_id for v in views]
    assert log.log_references(rec, views, ids) == ids


def test_depth_points_are_subsampled_world_points(make_chunk, tmp_path, read_rrd):
    view = make_chunk(1, length=1, num_refs=1).output.references.views[0]
    path = tmp_path / "depth.rrd"
    rec = rr.RecordingStream("cityenv_test_viz")
    rec.save(path)
    n = log.log_reference_depth(rec, view, stride=4, max_depth=1e9)
    rec.flush()
    rec.disconnect()
    assert n == np.count_nonzero(view.depth[2::4, 2::4])
    points = np.asarray(read_rrd(path).column("/" + log.DEPTH_POINTS, "Points3D:positions")[0])
    assert points.shape == (n, 3)
    # every point lies in front of the reference camera
    cam = (points - view.pose.position) @ view.pose.rotation_matrix
    assert np.all(cam[:, 2] > 0)


def test_path_is_decimated_with_last_point_kept():
    points = np.arange(30000, dtype=np.float64).reshape(-1, 3)
    kept = log.decimate(points, 2048)
    assert len(kept) <= 2049
    assert np.array_equal(kept[-1], points[-1])
    assert log.decimate(points[:5], 2048) is not None and len(log.decimate(points[:5], 2048)) == 5


def test_image_shape_is_checked():
    rec = rr.RecordingStream("cityenv_test_viz", default_enabled=False)
    with pytest.raises(ShapeMismatchError, match=r"must have shape \(H, W, 3\), got \(4, 4\)"):
        log.log_image(rec, np.zeros((4, 4), np.uint8))


def test_lat_lon_round_trips_the_anchor():
    assert np.allclose(log.lat_lon(FRAME, np.zeros(3)), [[FRAME.lat, FRAME.lon]])


@pytest.mark.parametrize("num_references", [0, 5])
def test_default_blueprint_builds(num_references, tmp_path, read_rrd):
    path = tmp_path / "bp.rrd"
    rec = rr.RecordingStream("cityenv_test_viz")
    rec.save(path, default_blueprint=default_blueprint(num_references))
    rec.flush()
    rec.disconnect()
    assert read_rrd(path).num_blueprints == 1


def test_slots_are_stable_while_views_stay():
    assert log.assign_slots([1, 2, 3], []) == [1, 2, 3]
    # reordered: every view keeps its slot
    assert log.assign_slots([3, 1, 2], [1, 2, 3]) == [1, 2, 3]
    # 2 left, 4 came: 4 takes the freed slot
    assert log.assign_slots([4, 1, 3], [1, 2, 3]) == [1, 4, 3]
    # fewer views: trailing empty slots dropped, inner ones kept empty
    assert log.assign_slots([3], [1, 2, 3]) == [None, None, 3]
    assert log.assign_slots([1], [1, 2, 3]) == [1]
    assert log.assign_slots([], [1, 2]) == []
