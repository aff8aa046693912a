"""WarpWorldModel against real renders of the procedural town (references and ground truth)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from carla_tools.town import ProceduralTown
from cityenv.errors import CityEnvError, ShapeMismatchError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose, Trajectory
from cityenv.geometry.splat import forward_splat
from cityenv.worldmodel import WarpWorldModel
from cityenv.worldmodel.base import ChunkReferences
from cityenv.worldmodel.referencing import ReferenceView
from cityenv.worldmodel.warp import push_pull_fill

CAMERA = PinholeCamera.from_fov(128, 128, 90.0)


@pytest.fixture(scope="module")
def town():
    with ProceduralTown(seed=0, blocks=(2, 2), vehicle_density=0, pedestrian_density=0) as t:
        yield t


@pytest.fixture(scope="module")
def street(town) -> Pose:
    """A camera 1.6 m above a lane, looking along it."""
    lane = next(la for la in town.road_network().lanes if la.entry >= 0 and la.exit >= 0)
    a, b = lane.waypoints[4], lane.waypoints[5]
    heading = float(np.degrees(np.arctan2(b[0] - a[0], b[1] - a[1])))
    return Pose.from_heading(a + [0.0, 0.0, 1.6], heading)


def view(town, pose: Pose, view_id: int, camera: PinholeCamera = CAMERA) -> ReferenceView:
    rgb, depth, _ = town.render(camera, pose)
    return ReferenceView(view_id, rgb, depth, camera, pose, "t0")


def ahead(pose: Pose, metres: float, turn_deg: float = 0.0) -> Pose:
    return Pose.from_heading(pose.position + metres * pose.forward, pose.heading_deg + turn_deg)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def started(references: ChunkReferences, pose: Pose, **kwargs) -> WarpWorldModel:
    model = WarpWorldModel(**kwargs)
    first = ChunkReferences(references.views, references.per_frame[:1], references.sink)
    model.reset(pose=pose, camera=CAMERA, references=first)
    return model


def chunk(town, street: Pose, length: int = 4) -> tuple[Trajectory, ChunkReferences]:
    """A straight chunk ahead of two references 10 m apart (the second also the sink)."""
    refs = [view(town, street, 0), view(town, ahead(street, 10.0), 1)]
    poses = [ahead(street, 0.8 * (i + 1)) for i in range(length)]
    per_frame = np.zeros(length, np.int64)
    return Trajectory.from_poses(poses, fps=10.0), ChunkReferences(refs, per_frame, refs[1])


def test_frame_at_reference_pose_reproduces_it(town, street):
    ref = view(town, street, 7)
    model = WarpWorldModel()
    frame = model.reset(pose=street, camera=CAMERA, references=ChunkReferences([ref], [0]))
    solid = ref.depth > 0
    np.testing.assert_array_equal(frame[solid], ref.image[solid])
    assert psnr(frame, ref.image) > 40.0  # the sky is splatted at infinity: the same pixels
    assert model.reset_info["references_used"] == 1


def test_two_metres_ahead_beats_the_unwarped_reference(town, street):
    ref = view(town, street, 0)
    target = ahead(street, 2.0)
    truth = town.render(CAMERA, target).rgb
    model = started(ChunkReferences([ref], np.zeros(1, np.int64)), street)
    out = model.generate(Trajectory.from_poses([target]), ChunkReferences([ref], [0]))
    warped, unwarped = psnr(out.frames[0], truth), psnr(ref.image, truth)
    assert warped > 20.0
    assert warped > unwarped + 1.0, (warped, unwarped)


def test_holes_are_filled_from_the_next_reference(town, street):
    # the target turns 60 degrees: half of it lies outside the nearest reference
    target = ahead(street, 1.0, turn_deg=60.0)
    big = PinholeCamera.from_fov(256, 256, 90.0)  # references at another size than the frames
    nearest = view(town, street, 0, big)
    side = view(town, Pose.from_heading(street.position, street.heading_deg + 90.0), 1, big)
    refs = ChunkReferences([nearest, side], [0])
    truth = town.render(CAMERA, target).rgb
    traj = Trajectory.from_poses([target])
    alone = started(refs, street, max_extra_references=0).generate(traj, refs)
    helped = started(refs, street, max_extra_references=1).generate(traj, refs)
    assert helped.info["extra_splats"] == 1 and helped.info["references_used"] == 2
    assert helped.info["reference_fill_fraction"] > 0.2
    assert psnr(helped.frames[0], truth) > psnr(alone.frames[0], truth) + 3.0
    np.testing.assert_array_equal(helped.warps, alone.warps)  # warps: the nearest one only
    np.testing.assert_array_equal(helped.masks, alone.masks)
    # pixels the nearest reference missed come from the side view's splat, unchanged
    small = side.camera.rescaled(128, 128)
    image = cv2.resize(side.image, (128, 128), interpolation=cv2.INTER_AREA)
    depth = cv2.resize(side.depth, (128, 128), interpolation=cv2.INTER_NEAREST)
    second, hit = forward_splat(image, depth, small, side.pose, CAMERA, target)
    taken = hit & ~alone.masks[0]
    assert taken.mean() > 0.2
    np.testing.assert_array_equal(helped.frames[0][taken], second[taken])


def test_sink_alone_serves_every_frame(town, street):
    traj, refs = chunk(town, street)
    sink_only = ChunkReferences([], np.full(len(traj), -1), refs.views[0])
    out = started(sink_only, street).generate(traj, sink_only)
    assert out.info["references_used"] == 1 and out.info["neutral_frames"] == 0
    assert out.masks.mean() > 0.5


def test_no_references_still_makes_frames(street):
    model = WarpWorldModel()
    first = model.reset(pose=street, camera=CAMERA, references=ChunkReferences.none(1))
    assert first.shape == (128, 128, 3) and first.dtype == np.uint8
    assert model.reset_info["references_used"] == 0 and model.reset_info["neutral_frames"] == 1
    traj = Trajectory.from_poses([ahead(street, 1.0), ahead(street, 2.0, 30.0)])
    out = model.generate(traj, ChunkReferences.none(2))
    assert out.frames.shape == (2, 128, 128, 3)
    assert out.info["references_used"] == 0 and out.info["neutral_frames"] == 2
    assert not out.masks.any()
    sky, ground = out.frames[0, 0].astype(int), out.frames[0, -1].astype(int)
    assert sky[:, 2].mean() > ground[:, 2].mean() + 20  # blue-grey sky over grey ground


def test_outputs_have_documented_shapes_and_types(town, street):
    traj, refs = chunk(town, street, length=3)
    out = started(refs, street).generate(traj, refs)
    assert out.frames.shape == out.warps.shape == (3, 128, 128, 3)
    assert out.frames.dtype == out.warps.dtype == np.uint8
    assert out.masks.shape == (3, 128, 128) and out.masks.dtype == bool
    assert out.references is refs
    json.dumps(out.info)  # JSON-serialisable
    for key in ("splat_s", "fill_s", "hole_fraction", "inpaint_fraction", "references_used"):
        assert key in out.info
    # the warp is the frame wherever it landed
    np.testing.assert_array_equal(out.frames[out.masks], out.warps[out.masks])


def test_deterministic(town, street):
    traj, refs = chunk(town, street)
    one = started(refs, street).generate(traj, refs)
    two = started(refs, street).generate(traj, refs)
    again = started(refs, street)
    again.generate(traj, refs)
    three = again.generate(traj, refs)  # a second call reuses buffers and caches
    for other in (two, three):
        assert one.frames.tobytes() == other.frames.tobytes()
        assert one.warps.tobytes() == other.warps.tobytes()
        assert one.masks.tobytes() == other.masks.tobytes()


def test_prompt_is_ignored_and_says_so(town, street):
    traj, refs = chunk(town, street)
    plain = started(refs, street).generate(traj, refs)
    model = WarpWorldModel()
    model.reset(pose=street, camera=CAMERA, references=refs, prompt="golden sunset")
    model.set_prompt("heavy snow at night")
    prompted = model.generate(traj, refs)
    np.testing.assert_array_equal(plain.frames, prompted.frames)
    assert model.prompt == "heavy snow at night" and prompted.info["prompt_used"] is False
    assert "prompt is ignored" in " ".join(WarpWorldModel.__doc__.split())


def test_start_image_is_the_first_frame(street):
    model = WarpWorldModel()
    image = np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)
    first = model.reset(
        pose=street, camera=CAMERA, references=ChunkReferences.none(1), start_image=image
    )
    assert first.shape == (128, 128, 3) and model.reset_info["source"] == "start_image"
    with pytest.raises(ShapeMismatchError, match=r"start_image must be an RGB uint8"):
        model.reset(
            pose=street,
            camera=CAMERA,
            references=ChunkReferences.none(1),
            start_image=np.zeros((8, 8)),
        )


def test_errors_say_what_was_expected(street):
    traj = Trajectory.from_poses([street, ahead(street, 1.0)])
    with pytest.raises(CityEnvError, match=r"call reset\(.*\) first"):
        WarpWorldModel().generate(traj, ChunkReferences.none(2))
    model = WarpWorldModel()
    model.reset(pose=street, camera=CAMERA, references=ChunkReferences.none(1))
    with pytest.raises(ShapeMismatchError, match=r"one reference index per pose \(2\), got 3"):
        model.generate(traj, ChunkReferences.none(3))


def test_push_pull_keeps_valid_pixels_and_fills_holes_smoothly():
    rng = np.random.default_rng(0)
    frames = np.zeros((2, 32, 48, 3), np.uint8)
    frames[0] = (40, 120, 200)  # a flat colour with holes stays flat
    frames[1] = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    valid = rng.random((2, 32, 48)) > 0.6
    valid[0, :, 20:] = False  # a large hole too
    frames[~valid] = 0
    kept = frames[valid].copy()
    push_pull_fill(frames, valid)
    np.testing.assert_array_equal(frames[valid], kept)
    assert np.abs(frames[0].astype(int) - (40, 120, 200)).max() <= 1
