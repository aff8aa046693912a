"""Pose refinement by structure from motion (pycolmap, CPU, offline), aligned to GPS.

One traversal's undistorted pinhole images go through COLMAP's SIFT extraction, exhaustive
matching and incremental mapping with the intrinsics held fixed (one thread: deterministic). The
reconstruction (arbitrary scale and frame) is then aligned to the photos' GPS positions in the
city's ENU frame by a similarity transform: cameras level on average, heading, scale and shift
fitted to the horizontal fixes (:func:`align_upright`). The RMS distance between aligned camera
centres and GPS fixes is reported as the alignment residual; the aligned sparse points give each
registered view sparse metric depth, which the ``"sfm"`` depth source densifies.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose

__all__ = ["SfMResult", "SparseDepth", "align_similarity", "align_upright", "reconstruct"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SparseDepth:
    """Sparse metric depth of one view.

    Attributes:
        uv: Pixel coordinates ``(M, 2)`` (column, row; pixel centres at +0.5).
        z: Metric z-depth ``(M,)`` in metres.
    """

    uv: np.ndarray
    z: np.ndarray


@dataclass(frozen=True)
class SfMResult:
    """An aligned reconstruction of one traversal.

    Attributes:
        poses: Camera-to-world ENU pose per input image, ``None`` where not registered.
        sparse: Sparse depth per input image, ``None`` where not registered.
        residual_rms_m: RMS distance between aligned camera centres and GPS positions, metres.
        residual_max_m: Largest such distance, metres.
        scale: Metres per reconstruction unit.
        registered: Number of registered images.
        points: Number of triangulated points.
    """

    poses: list[Pose | None]
    sparse: list[SparseDepth | None]
    residual_rms_m: float
    residual_max_m: float
    scale: float
    registered: int
    points: int


def align_similarity(
    source: np.ndarray, target: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """The similarity ``target ~ s * R @ source + t`` by least squares (Umeyama 1991).

    Args:
        source: Points ``(N, 3)``, N >= 3.
        target: Corresponding points ``(N, 3)``.

    Returns:
        ``(s, R (3, 3), t (3,))``.
    """
    mu_s, mu_t = source.mean(0), target.mean(0)
    a, b = source - mu_s, target - mu_t
    u, sigma, vt = np.linalg.svd(b.T @ a / len(a))
    d = np.eye(3)
    d[2, 2] = np.sign(np.linalg.det(u @ vt)) or 1.0
    rotation = u @ d @ vt
    scale = float(np.trace(np.diag(sigma) @ d) / (a**2).sum(1).mean())
    return scale, rotation, mu_t - scale * rotation @ mu_s


def align_upright(
    centres: np.ndarray, downs: np.ndarray, target: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """The similarity ``target ~ s * R @ centres + t`` for cameras held upright on average.

    Street photos are taken with the camera roughly level, so the mean camera "down" axis fixes
    the vertical; what remains (heading, scale, horizontal shift) is fitted to the horizontal GPS
    positions and the vertical shift to the mean height. GPS heights are several times noisier
    than horizontal fixes, and a nearly straight track leaves the roll about it free, so a full
    3-D fit would tilt the whole reconstruction.

    Args:
        centres: Camera centres ``(N, 3)`` in reconstruction coordinates, N >= 2.
        downs: Camera y axes ``(N, 3)`` (image "down") in reconstruction coordinates.
        target: GPS positions ``(N, 3)`` in ENU metres.

    Returns:
        ``(s, R (3, 3), t (3,))``.
    """
    down = downs.mean(0)
    down /= np.linalg.norm(down)
    axis = np.cross(down, [0.0, 0.0, -1.0])
    angle = np.arctan2(np.linalg.norm(axis), down @ [0.0, 0.0, -1.0])
    level, _ = cv2.Rodrigues(axis / (np.linalg.norm(axis) or 1.0) * angle)
    flat = centres @ level.T
    a = flat[:, :2] - flat[:, :2].mean(0)
    b = target[:, :2] - target[:, :2].mean(0)
    u, sigma, vt = np.linalg.svd(b.T @ a / len(a))
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    yaw = u @ d @ vt
    scale = float(np.trace(np.diag(sigma) @ d) / (a**2).sum(1).mean())
    rotation = np.eye(3)
    rotation[:2, :2] = yaw
    rotation = rotation @ level
    shift = target.mean(0) - scale * rotation @ centres.mean(0)
    return scale, rotation, shift


def _run_colmap(images: Sequence[np.ndarray], camera: PinholeCamera, work: Path):
    """COLMAP's sparse reconstruction of ``images`` (RGB ``(H, W, 3)``); the largest model."""
    # cv2 is imported (module top) before pycolmap on purpose: in the other order the two
    # bundled zlib builds clash and cv2's PNG encoder aborts the process (a double free).
    import pycolmap

    folder = work / "images"
    folder.mkdir()
    for k, image in enumerate(images):
        cv2.imwrite(str(folder / f"{k:05d}.png"), image[..., ::-1])  # OpenCV writes BGR
    database = work / "database.db"
    reader = pycolmap.ImageReaderOptions(
        camera_model="PINHOLE",
        camera_params=",".join(str(v) for v in (camera.fx, camera.fy, camera.cx, camera.cy)),
    )
    # one thread throughout: COLMAP's results then depend only on the images and the seed
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = 1
    pycolmap.extract_features(
        database,
        folder,
        camera_mode=pycolmap.CameraMode.SINGLE,
        reader_options=reader,
        extraction_options=extraction,
        device=pycolmap.Device.cpu,
    )
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = 1
    pycolmap.match_exhaustive(database, matching_options=matching, device=pycolmap.Device.cpu)
    options = pycolmap.IncrementalPipelineOptions(
        ba_refine_focal_length=False,
        ba_refine_principal_point=False,
        ba_refine_extra_params=False,
        num_threads=1,
        random_seed=0,
        multiple_models=False,
        min_num_matches=10,
    )
    # street sequences move forward with small baselines: relax the initial-pair thresholds
    options.mapper.init_min_num_inliers = 20
    options.mapper.init_min_tri_angle = 4.0
    options.mapper.abs_pose_min_num_inliers = 10
    models = pycolmap.incremental_mapping(database, folder, work / "sparse", options=options)
    if not models:
        return None
    return max(models.values(), key=lambda r: r.num_reg_images())


def reconstruct(
    images: Sequence[np.ndarray],
    camera: PinholeCamera,
    gps_enu: np.ndarray,
    *,
    min_registered: int = 3,
    upright: bool = True,
) -> SfMResult | None:
    """Reconstruct one traversal and align it to its GPS positions.

    Args:
        images: Undistorted RGB images, each ``(H, W, 3)`` uint8, of one camera.
        camera: Their pinhole intrinsics (held fixed).
        gps_enu: GPS camera positions ``(N, 3)`` in the city's ENU frame, metres.
        min_registered: Fewest registered images for an alignment.
        upright: Align with :func:`align_upright` (cameras level on average: street photos)
            rather than a free 3-D similarity (:func:`align_similarity`).

    Returns:
        The aligned result (check :attr:`SfMResult.residual_rms_m` before trusting it: a
        reconstruction broken by repeated texture aligns badly), or ``None`` when COLMAP
        registers fewer than ``min_registered`` images (too little texture or overlap).
    """
    with tempfile.TemporaryDirectory(prefix="cityenv-sfm-") as tmp:
        model = _run_colmap(images, camera, Path(tmp))
    if model is None or model.num_reg_images() < min_registered:
        return None
    found: dict[int, object] = {}
    for image in model.images.values():
        if image.has_pose:
            found[int(Path(image.name).stem)] = image
    keys = sorted(found)
    centres = np.array([found[k].projection_center() for k in keys])
    cam_rot = {k: found[k].cam_from_world().rotation.matrix() for k in keys}
    gps = np.asarray(gps_enu, float)[keys]
    if upright:
        downs = np.array([cam_rot[k][1] for k in keys])  # camera y axes in model coordinates
        scale, rotation, shift = align_upright(centres, downs, gps)
    else:
        scale, rotation, shift = align_similarity(centres, gps)
    aligned = scale * centres @ rotation.T + shift
    errors = np.linalg.norm(aligned - gps, axis=1)
    poses: list[Pose | None] = [None] * len(images)
    sparse: list[SparseDepth | None] = [None] * len(images)
    for k, centre in zip(keys, aligned, strict=True):
        poses[k] = Pose.from_rt(rotation @ cam_rot[k].T, centre)
        sparse[k] = _sparse_depth(model, found[k], scale)
    return SfMResult(
        poses=poses,
        sparse=sparse,
        residual_rms_m=float(np.sqrt((errors**2).mean())),
        residual_max_m=float(errors.max()),
        scale=scale,
        registered=len(keys),
        points=int(model.num_points3D()),
    )


def _sparse_depth(model, image, scale: float) -> SparseDepth:
    """Pixels and metric z-depth of the points an image observes."""
    uv, xyz = [], []
    for point in image.points2D:
        if point.has_point3D():
            uv.append(point.xy)
            xyz.append(model.points3D[point.point3D_id].xyz)
    if not uv:
        return SparseDepth(np.zeros((0, 2)), np.zeros(0))
    world_to_cam = image.cam_from_world().matrix()
    z = (np.asarray(xyz) @ world_to_cam[:, :3].T + world_to_cam[:, 3])[:, 2] * scale
    keep = z > 0
    return SparseDepth(np.asarray(uv, dtype=np.float64)[keep], z[keep])
