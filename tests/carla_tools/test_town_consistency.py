"""Multi-view consistency of the procedural town: its renders agree through forward splatting.

The world model is trained to warp a reference view into a target view with the reference's depth
(``geometry.forward_splat``); that only teaches geometry if the renderer's colours and depths are
consistent across views, i.e. shading of the static town does not depend on the viewpoint.
"""

from __future__ import annotations

import numpy as np
import pytest

from carla_tools.town.town import DEFAULT_TIME, ProceduralTown
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose
from cityenv.geometry.splat import forward_splat, unproject

MIN_PSNR_DB = 30.0
MIN_COMPARED_FRACTION = 0.4
SUPERSAMPLE = 2
"""Render and warp at this multiple of the compared resolution, then average the blocks.

A nearest-pixel splat moves every sample by up to half a pixel, which alone costs about 28.7 dB on
this town at 1x even for a pure 2-degree rotation (no parallax, nothing view-dependent): the
error sits on every anti-aliased edge (lane markings, window frames). Warping at 2x and comparing
2x2 block means keeps that quantisation below the compared pixel, so what is left measures the
renderer: view-dependent shading, depth errors, or pixels that move wrongly.
"""


@pytest.fixture(scope="module")
def empty_town():
    with ProceduralTown(seed=3, blocks=(2, 2), vehicle_density=0, pedestrian_density=0) as town:
        town.set_time(DEFAULT_TIME)
        town.set_weather("clear")
        yield town


def _lane_poses(town: ProceduralTown, back: float, yaw_deg: float) -> tuple[Pose, Pose]:
    """Eye-height pose A on a lane and pose B ``back`` metres behind it, turned by ``yaw_deg``.

    B behind A sees A's content smaller, so A's pixels cover B's without splatting cracks.
    """
    lane = next(lane for lane in town.road_network().lanes if lane.entry >= 0 and lane.exit >= 0)
    i = len(lane.waypoints) // 2
    d = lane.waypoints[i + 1] - lane.waypoints[i]
    d /= np.linalg.norm(d)
    heading = float(np.degrees(np.arctan2(d[0], d[1])))
    a = Pose.from_heading(lane.waypoints[i] + [0.0, 0.0, 1.6], heading, pitch_deg=-5.0)
    b = Pose.from_heading(a.position - back * d, heading + yaw_deg, pitch_deg=-4.0)
    return a, b


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10.0 * np.log10(255.0**2 / max(mse, 1e-12)))


def _block_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Means over ``k x k`` pixel blocks of ``(H, W, ...)``."""
    h, w = x.shape[:2]
    return x.reshape(h // k, k, w // k, k, *x.shape[2:]).mean(axis=(1, 3))


def test_two_views_agree_through_forward_splat(empty_town):
    k = SUPERSAMPLE
    camera = PinholeCamera.from_fov(192 * k, 144 * k, 90.0)
    pose_a, pose_b = _lane_poses(empty_town, back=1.0, yaw_deg=3.0)
    rgb_a, depth_a, dyn_a = empty_town.render(camera, pose_a)
    rgb_b, depth_b, dyn_b = empty_town.render(camera, pose_b)
    assert not dyn_a.any() and not dyn_b.any()  # an empty town: every pixel is static
    # Warp A's colours and its world points into B; a warped point must be the surface B sees
    # (its z in B matches B's depth), else it is background leaking through a gap or occluded.
    points = unproject(depth_a, camera, pose_a)  # (H, W, 3) world
    image = np.concatenate([rgb_a.astype(np.float32), points.astype(np.float32)], axis=-1)
    warped, valid = forward_splat(image, depth_a, camera, pose_a, camera, pose_b)
    z_b = (warped[..., 3:] - pose_b.position) @ pose_b.rotation_matrix[:, 2]
    same_surface = np.abs(z_b - depth_b) < 0.02 * depth_b + 0.02
    seen = valid & (depth_b > 0)
    # depths agree across views: nearly every warped point is B's surface (the rest disoccluded)
    assert same_surface[seen].mean() > 0.9
    compared = seen & same_surface & ~dyn_b
    blocks = _block_mean(compared, k) == 1.0  # blocks compared in every pixel
    fraction = blocks.mean()
    psnr = _psnr(_block_mean(warped[..., :3], k)[blocks], _block_mean(rgb_b, k)[blocks])
    assert fraction > MIN_COMPARED_FRACTION, f"only {fraction:.0%} of B was compared"
    assert psnr >= MIN_PSNR_DB, f"PSNR {psnr:.1f} dB over {fraction:.0%} of the image"
