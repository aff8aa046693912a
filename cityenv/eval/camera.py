"""Camera-following accuracy: RotErr and TransErr of a generated video against its trajectory.

SWM (``shared/seeds/000_33bddbe65604842d.txt``, Sec. 4, "Metrics") names the metric and no more:
"Camera-following accuracy: Rotation Error (RotErr) and Translation Error (TransErr)". The paper
gives no formula, no estimator and no alignment, so this module implements the definition the
camera-control literature uses for these two names (CameraCtrl, He et al. 2024; CamI2V), with
the choices the issue asks for, stated here once:

1. **Poses from the frames.** Camera poses of the generated window are estimated by structure
   from motion with pycolmap (SIFT features, exhaustive matching for short windows and
   sequential matching for long ones, incremental mapping restarted with a few seeds and the
   model of lowest reprojection error kept), on CPU, with the clip's known intrinsics held
   fixed (a PINHOLE camera; only poses and points are optimised). Pixels given as ``ignore``
   (moving objects) give no features.
2. **First frame at identity.** Both trajectories, the estimate and the ground truth, are
   expressed relative to their first frame: ``P_i' = P_0^-1 P_i`` (camera-to-world matrices), so
   frame 0 is the identity and SfM's arbitrary world frame drops out. If SfM did not register
   frame 0, the first registered frame is the anchor for both.
3. **Translation normalised.** SfM's scale is arbitrary, so each trajectory's relative camera
   centres are divided by their own extent, the largest distance of a camera from the anchor:
   after it, the farthest camera is 1 unit from the first in both trajectories.
4. **Errors per frame.** ``rot_i = arccos((trace(R_gt,i^T R_est,i) - 1) / 2)`` in radians (the
   geodesic angle between the two relative rotations) and ``trans_i = ||t_gt,i - t_est,i||_2``
   in the normalised unit of step 3.
5. **Aggregation.** RotErr and TransErr are the **means** of ``rot_i`` and ``trans_i`` over the
   registered frames after the anchor (the anchor's errors are 0 by construction).
   CameraCtrl's sum over frames is ``mean * (n - 1)``; the per-frame values are kept
   (:attr:`CameraErrors.rot_per_frame`) for either.

When SfM fails (fewer registered frames than :attr:`SfMSettings.min_registered_fraction` of the
window, or a ground truth that does not move, so step 3 has no scale), both errors are ``None``
with the reason and the number of registered frames: never a made-up number. Running the same
estimator on the ground-truth frames (:func:`camera_errors` with the ground-truth video) gives
the estimator's own floor, the error a perfect generator would get.

Example:
    >>> result = camera_errors(generated_frames, trajectory, camera)
    >>> result.rot_err, result.trans_err, result.registered, result.reason
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cityenv.errors import ConfigError, ShapeMismatchError, unknown_name
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Trajectory

__all__ = [
    "CameraErrors",
    "PoseEstimate",
    "SfMSettings",
    "camera_errors",
    "errors_from_poses",
    "estimate_poses",
    "normalise_translations",
    "relative_to_first",
    "rotation_angles",
]

MATCHERS = ("auto", "exhaustive", "sequential")
"""Pairing strategies of :attr:`SfMSettings.matcher`."""


@dataclass(frozen=True)
class SfMSettings:
    """How poses are estimated from frames (pycolmap structure from motion, CPU only).

    The defaults are tuned for small frames (64-256 px) and short windows (8-24 frames): the
    initial pair and registration thresholds are lowered from COLMAP's (made for megapixel
    photos, where a 100-inlier initial pair is easy) so that a 128 px frame with about a hundred
    SIFT keypoints can still start a model.

    Attributes:
        matcher: ``"exhaustive"`` (all pairs), ``"sequential"`` (each frame with the next
            ``overlap``) or ``"auto"`` (exhaustive up to ``exhaustive_max_frames``).
        exhaustive_max_frames: Longest window matched exhaustively under ``"auto"``.
        overlap: Neighbours each frame is matched with under sequential matching.
        max_features: SIFT keypoints kept per frame.
        num_threads: Threads of every pycolmap stage (1 keeps evaluation workers from
            oversubscribing the machine).
        seed: Seed of COLMAP's RANSAC and mapper, for repeatable estimates.
        init_min_num_inliers: Inliers the initial image pair needs (COLMAP: 100).
        init_min_tri_angle_deg: Triangulation angle the initial pair needs (COLMAP: 16).
        min_tri_angle_deg: Smallest triangulation angle of a kept 3D point (COLMAP: 1.5); a
            small frame's pixel is wide, so its points are seen under small angles.
        abs_pose_min_num_inliers: Inliers a frame needs to register (COLMAP: 30).
        min_num_matches: Matches a pair needs to enter the correspondence graph (COLMAP: 15).
        min_registered_fraction: Fewer registered frames than this fraction of the window
            (and fewer than 3) make the result ``None``.
        restarts: Incremental mappings run from the same matches with seeds ``seed``,
            ``seed + 1``, ...; the model with the most registered frames, then the lowest mean
            reprojection error, is kept. On small frames one mapping in three or so settles in
            a worse minimum (2-4 degrees instead of 0.5 on the town) and its reprojection
            error gives it away; a mapping costs a fraction of the extraction and matching.
    """

    matcher: str = "auto"
    exhaustive_max_frames: int = 32
    overlap: int = 8
    max_features: int = 2048
    num_threads: int = 1
    seed: int = 0
    init_min_num_inliers: int = 30
    init_min_tri_angle_deg: float = 1.0
    min_tri_angle_deg: float = 0.5
    abs_pose_min_num_inliers: int = 15
    min_num_matches: int = 15
    min_registered_fraction: float = 0.8
    restarts: int = 3

    def __post_init__(self) -> None:
        if self.matcher not in MATCHERS:
            raise unknown_name("matcher", self.matcher, MATCHERS, error=ConfigError)
        for name in (
            "exhaustive_max_frames",
            "overlap",
            "max_features",
            "num_threads",
            "init_min_num_inliers",
            "abs_pose_min_num_inliers",
            "min_num_matches",
            "restarts",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"SfMSettings.{name} must be an integer >= 1, got {value!r}.")
        for name in ("init_min_tri_angle_deg", "min_tri_angle_deg"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"SfMSettings.{name} must be degrees > 0, got {value!r}.")
        if not 0.0 < self.min_registered_fraction <= 1.0:
            raise ConfigError(
                "SfMSettings.min_registered_fraction must be in (0, 1], got "
                f"{self.min_registered_fraction!r}."
            )

    def uses_exhaustive(self, num_frames: int) -> bool:
        """Whether a window of ``num_frames`` is matched exhaustively."""
        if self.matcher == "auto":
            return num_frames <= self.exhaustive_max_frames
        return self.matcher == "exhaustive"


@dataclass(frozen=True)
class PoseEstimate:
    """Camera poses that SfM recovered from a window of frames.

    Attributes:
        matrices: Camera-to-world ``(T, 4, 4)`` float64 in SfM's arbitrary world frame and
            scale (OpenCV camera axes); NaN for unregistered frames.
        registered: ``(T,)`` bool, true where SfM registered the frame.
        num_points: 3D points of the reconstruction.
        reprojection_error: Mean reprojection error of the kept model, pixels (NaN if none).
        seconds: Wall time of feature extraction, matching and mapping, by stage.
    """

    matrices: np.ndarray
    registered: np.ndarray
    num_points: int
    reprojection_error: float
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def num_registered(self) -> int:
        """Number of registered frames."""
        return int(self.registered.sum())


@dataclass(frozen=True)
class CameraErrors:
    """RotErr / TransErr of one window (see the module docstring for the definition).

    Attributes:
        rot_err: Mean geodesic rotation error after the anchor, radians; ``None`` on failure.
        trans_err: Mean translation error after the anchor, in units of the trajectory's
            extent (step 3); ``None`` on failure.
        registered: Frames SfM registered.
        frames: Frames in the window ``T``.
        reason: Why the errors are ``None``; ``""`` when they are numbers.
        rot_per_frame: ``(T,)`` radians, NaN where not registered (0 at the anchor).
        trans_per_frame: ``(T,)`` normalised units, NaN where not registered.
        seconds: Wall time by stage (``extract``, ``match``, ``map``).
    """

    rot_err: float | None
    trans_err: float | None
    registered: int
    frames: int
    reason: str = ""
    rot_per_frame: np.ndarray | None = None
    trans_per_frame: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether both errors are numbers."""
        return self.rot_err is not None and self.trans_err is not None

    @property
    def rot_err_deg(self) -> float | None:
        """RotErr in degrees (``None`` on failure)."""
        return None if self.rot_err is None else math.degrees(self.rot_err)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready numbers (per-frame arrays as lists, NaN as ``None``)."""

        def listed(a: np.ndarray | None) -> list[float | None] | None:
            return None if a is None else [None if np.isnan(v) else float(v) for v in a]

        return {
            "rot_err": self.rot_err,
            "trans_err": self.trans_err,
            "registered": self.registered,
            "frames": self.frames,
            "reason": self.reason,
            "rot_per_frame": listed(self.rot_per_frame),
            "trans_per_frame": listed(self.trans_per_frame),
            "seconds": dict(self.seconds),
        }


# --- the pure math -------------------------------------------------------------------------
def relative_to_first(matrices: np.ndarray) -> np.ndarray:
    """Poses relative to the first: ``P_0^-1 P_i``, so frame 0 becomes the identity.

    Args:
        matrices: Camera-to-world ``(N, 4, 4)``, rigid, ``N >= 1``.

    Returns:
        ``(N, 4, 4)`` float64: pose ``i`` in the first camera's frame (OpenCV axes).
    """
    m = np.asarray(matrices, dtype=np.float64)
    r0, t0 = m[0, :3, :3], m[0, :3, 3]
    out = np.tile(np.eye(4), (len(m), 1, 1))
    out[:, :3, :3] = r0.T @ m[:, :3, :3]  # a rigid inverse: R^T, -R^T t
    out[:, :3, 3] = (m[:, :3, 3] - t0) @ r0
    return out


def normalise_translations(translations: np.ndarray, eps: float = 1e-9) -> np.ndarray | None:
    """Camera centres divided by their extent (the largest distance from the anchor).

    Args:
        translations: ``(N, 3)`` camera centres relative to the anchor (row 0 is the origin).
        eps: Extents at or below this count as "does not move".

    Returns:
        ``(N, 3)`` with the farthest centre at distance 1, or ``None`` when every centre is
        within ``eps`` of the anchor (a rotation in place has no scale to normalise by).
    """
    t = np.asarray(translations, dtype=np.float64)
    extent = float(np.linalg.norm(t, axis=1).max()) if len(t) else 0.0
    if not np.isfinite(extent) or extent <= eps:
        return None
    return t / extent


def rotation_angles(rotations_a: np.ndarray, rotations_b: np.ndarray) -> np.ndarray:
    """Geodesic angle between rotation pairs: ``arccos((trace(A^T B) - 1) / 2)``.

    Args:
        rotations_a: ``(N, 3, 3)`` rotation matrices.
        rotations_b: ``(N, 3, 3)`` rotation matrices.

    Returns:
        ``(N,)`` radians in ``[0, pi]``.
    """
    a = np.asarray(rotations_a, dtype=np.float64)
    b = np.asarray(rotations_b, dtype=np.float64)
    trace = np.einsum("nji,nji->n", a, b)  # trace(A^T B) without forming the product
    return np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0))


def errors_from_poses(
    estimated: np.ndarray,
    ground_truth: np.ndarray,
    registered: np.ndarray | None = None,
    *,
    min_registered: int = 2,
) -> CameraErrors:
    """RotErr / TransErr of estimated poses against ground-truth poses (steps 2-5 above).

    Args:
        estimated: Camera-to-world ``(T, 4, 4)`` in any world frame and scale; rows of
            unregistered frames are ignored (may be NaN).
        ground_truth: Camera-to-world ``(T, 4, 4)`` of the same frames.
        registered: ``(T,)`` bool, the frames ``estimated`` holds; ``None`` = all.
        min_registered: Fewest registered frames that give numbers (at least 2).

    Returns:
        The errors, or ``None`` errors with the reason.

    Raises:
        ShapeMismatchError: If the arrays disagree in shape.
    """
    est = np.asarray(estimated, dtype=np.float64)
    gt = np.asarray(ground_truth, dtype=np.float64)
    if est.ndim != 3 or est.shape[1:] != (4, 4) or gt.shape != est.shape:
        raise ShapeMismatchError(
            "estimated and ground_truth must both be (T, 4, 4) camera-to-world matrices, got "
            f"{est.shape} and {gt.shape}."
        )
    count = len(gt)
    reg = np.ones(count, bool) if registered is None else np.asarray(registered, bool)
    if reg.shape != (count,):
        raise ShapeMismatchError(f"registered must have shape ({count},), got {reg.shape}.")
    n = int(reg.sum())
    if n < max(2, min_registered):
        return CameraErrors(
            None,
            None,
            n,
            count,
            f"SfM registered {n} of {count} frames; at least {max(2, min_registered)} needed",
        )
    idx = np.flatnonzero(reg)
    rel_est, rel_gt = relative_to_first(est[idx]), relative_to_first(gt[idx])
    t_gt = normalise_translations(rel_gt[:, :3, 3])
    t_est = normalise_translations(rel_est[:, :3, 3])
    if t_gt is None:
        return CameraErrors(
            None, None, n, count, "the ground-truth cameras do not move: no scale to normalise by"
        )
    if t_est is None:
        t_est = np.zeros_like(t_gt)  # SfM put every camera at the anchor: all translation missed
    rot = np.full(count, np.nan)
    trans = np.full(count, np.nan)
    rot[idx] = rotation_angles(rel_gt[:, :3, :3], rel_est[:, :3, :3])
    trans[idx] = np.linalg.norm(t_gt - t_est, axis=1)
    after = idx[1:]  # the anchor's errors are 0 by construction
    return CameraErrors(
        float(rot[after].mean()),
        float(trans[after].mean()),
        n,
        count,
        rot_per_frame=rot,
        trans_per_frame=trans,
    )


# --- structure from motion -----------------------------------------------------------------
def estimate_poses(
    frames: np.ndarray,
    camera: PinholeCamera,
    settings: SfMSettings | None = None,
    *,
    ignore: np.ndarray | None = None,
) -> PoseEstimate:
    """Camera poses of a window of frames by structure from motion (pycolmap, CPU).

    The frames are written as PNGs to a temporary folder (COLMAP reads images from files),
    SIFT features extracted with the known intrinsics, pairs matched and verified, and
    :attr:`SfMSettings.restarts` incremental reconstructions run with the intrinsics fixed;
    the one with the most registered frames, then the lowest reprojection error, is kept.

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB.
        camera: Intrinsics of every frame (``W x H`` must match the frames).
        settings: Estimator settings; ``None`` = :class:`SfMSettings` defaults.
        ignore: ``(T, H, W)`` bool, true where no feature may be taken (moving vehicles and
            pedestrians: SfM assumes a static scene); ``None`` = use every pixel.

    Returns:
        The poses (NaN where not registered) and stage timings.

    Raises:
        ShapeMismatchError: If the frames are not ``(T, H, W, 3)`` uint8 of the camera's size,
            or ``ignore`` is not ``(T, H, W)``.
    """
    import pycolmap  # imported here: only camera metrics need COLMAP

    settings = settings or SfMSettings()
    frames = _check_frames(frames, camera)
    ignore = _check_ignore(ignore, frames)
    # COLMAP logs every stage at INFO and a failed mapping at ERROR; the result says both
    level, pycolmap.logging.minloglevel = pycolmap.logging.minloglevel, 3
    try:
        return _estimate(pycolmap, frames, camera, settings, ignore)
    finally:
        pycolmap.logging.minloglevel = level


def _estimate(
    pycolmap: Any,
    frames: np.ndarray,
    camera: PinholeCamera,
    settings: SfMSettings,
    ignore: np.ndarray | None,
) -> PoseEstimate:
    """:func:`estimate_poses` once its inputs are checked."""
    pycolmap.set_random_seed(settings.seed)  # RANSAC of the two-view verification
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cityenv-sfm-") as tmp:
        root = Path(tmp)
        names = _write_frames(frames, root / "images")
        masks = _write_masks(ignore, names, root / "masks") if ignore is not None else None
        database = root / "database.db"
        t0 = time.perf_counter()
        _extract(pycolmap, database, root / "images", names, camera, settings, masks)
        seconds["extract"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _match(pycolmap, database, len(names), settings)
        seconds["match"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        models = [
            _map(pycolmap, database, root, settings, settings.seed + k)
            for k in range(settings.restarts)
        ]
        seconds["map"] = time.perf_counter() - t0
    return _best(models, names, seconds)


def camera_errors(
    frames: np.ndarray,
    trajectory: Trajectory,
    camera: PinholeCamera,
    settings: SfMSettings | None = None,
    *,
    ignore: np.ndarray | None = None,
) -> CameraErrors:
    """RotErr / TransErr of a video against the trajectory it should follow.

    Args:
        frames: ``(T, H, W, 3)`` uint8, the generated window (or the ground truth's, for the
            estimator's floor).
        trajectory: The ``T`` ground-truth camera-to-world poses of the frames.
        camera: The frames' intrinsics.
        settings: Estimator settings; ``None`` = :class:`SfMSettings` defaults.
        ignore: ``(T, H, W)`` bool, pixels SfM must not use (dynamic objects; for the
            ground truth's floor its dynamic masks); ``None`` = every pixel.

    Returns:
        The errors with registered-frame count and timings; ``None`` errors with the reason
        when SfM registers too few frames.

    Raises:
        ShapeMismatchError: If the frames are malformed or their count differs from the
            trajectory's.
    """
    settings = settings or SfMSettings()
    if len(frames) != len(trajectory):
        raise ShapeMismatchError(
            f"frames and trajectory must have the same length, got {len(frames)} frames and "
            f"{len(trajectory)} poses; pass the trajectory of exactly these frames."
        )
    estimate = estimate_poses(frames, camera, settings, ignore=ignore)
    needed = max(3, math.ceil(settings.min_registered_fraction * len(frames)))
    errors = errors_from_poses(
        estimate.matrices, trajectory.matrices, estimate.registered, min_registered=needed
    )
    return CameraErrors(
        errors.rot_err,
        errors.trans_err,
        errors.registered,
        errors.frames,
        errors.reason,
        errors.rot_per_frame,
        errors.trans_per_frame,
        estimate.seconds,
    )


def _check_frames(frames: np.ndarray, camera: PinholeCamera) -> np.ndarray:
    a = np.asarray(frames)
    expected = (camera.height, camera.width, 3)
    if a.ndim != 4 or a.shape[1:] != expected or a.dtype != np.uint8 or len(a) < 2:
        raise ShapeMismatchError(
            f"frames must be uint8 (T, {camera.height}, {camera.width}, 3) with T >= 2 (the "
            f"camera's size), got {a.dtype} {a.shape}; convert the video to uint8 RGB at the "
            "camera's resolution."
        )
    return a


def _check_ignore(ignore: np.ndarray | None, frames: np.ndarray) -> np.ndarray | None:
    if ignore is None:
        return None
    a = np.asarray(ignore)
    if a.shape != frames.shape[:3]:
        raise ShapeMismatchError(
            f"ignore must be a (T, H, W) = {frames.shape[:3]} mask, got shape {a.shape}."
        )
    return a.astype(bool)


def _write_masks(ignore: np.ndarray, names: list[str], folder: Path) -> Path:
    """COLMAP masks: ``<image name>.png``, 0 where no feature may be taken, 255 elsewhere."""
    import imageio.v3 as iio

    folder.mkdir(parents=True)
    for name, mask in zip(names, ignore, strict=True):
        iio.imwrite(folder / f"{name}.png", np.where(mask, 0, 255).astype(np.uint8))
    return folder


def _write_frames(frames: np.ndarray, folder: Path) -> list[str]:
    """Write frames as lossless PNGs named in frame order; returns the names."""
    import imageio.v3 as iio

    folder.mkdir(parents=True)
    names = [f"{i:06d}.png" for i in range(len(frames))]
    for name, frame in zip(names, frames, strict=True):
        iio.imwrite(folder / name, frame)
    return names


def _extract(
    pycolmap: Any,
    database: Path,
    images: Path,
    names: list[str],
    camera: PinholeCamera,
    settings: SfMSettings,
    masks: Path | None,
) -> None:
    """SIFT features of every frame, one shared PINHOLE camera with the known intrinsics."""
    reader = pycolmap.ImageReaderOptions()
    if masks is not None:
        reader.mask_path = str(masks)
    reader.camera_model = "PINHOLE"
    # COLMAP and cityenv agree on pixel centres at +0.5, so cx, cy carry over unchanged
    reader.camera_params = f"{camera.fx},{camera.fy},{camera.cx},{camera.cy}"
    options = pycolmap.FeatureExtractionOptions()
    options.num_threads = settings.num_threads
    options.use_gpu = False
    options.sift.max_num_features = settings.max_features
    pycolmap.extract_features(
        database,
        images,
        image_names=names,
        camera_mode=pycolmap.CameraMode.SINGLE,
        reader_options=reader,
        extraction_options=options,
        device=pycolmap.Device.cpu,
    )


def _match(pycolmap: Any, database: Path, num_frames: int, settings: SfMSettings) -> None:
    """Match and geometrically verify frame pairs (all pairs, or sequential neighbours)."""
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = settings.num_threads
    matching.use_gpu = False
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = settings.seed
    verification.min_num_inliers = settings.min_num_matches
    common = dict(
        matching_options=matching, verification_options=verification, device=pycolmap.Device.cpu
    )
    if settings.uses_exhaustive(num_frames):
        pycolmap.match_exhaustive(database, **common)
        return
    pairing = pycolmap.SequentialPairingOptions()
    pairing.overlap = settings.overlap
    pairing.quadratic_overlap = False
    pairing.num_threads = settings.num_threads
    pycolmap.match_sequential(database, pairing_options=pairing, **common)


def _map(pycolmap: Any, database: Path, root: Path, settings: SfMSettings, seed: int) -> Any | None:
    """Incremental mapping with the intrinsics held fixed; the largest model or ``None``."""
    pycolmap.set_random_seed(seed)
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = settings.num_threads
    options.random_seed = seed
    options.multiple_models = False  # one window, one model: the largest is all we score
    options.min_model_size = 3
    options.min_num_matches = settings.min_num_matches
    options.extract_colors = False
    options.ba_refine_focal_length = False  # the clip's camera is known
    options.ba_refine_principal_point = False
    options.ba_refine_extra_params = False
    mapper = options.mapper
    mapper.abs_pose_refine_focal_length = False
    mapper.abs_pose_refine_extra_params = False
    mapper.init_min_num_inliers = settings.init_min_num_inliers
    mapper.init_min_tri_angle = settings.init_min_tri_angle_deg
    mapper.abs_pose_min_num_inliers = settings.abs_pose_min_num_inliers
    mapper.filter_min_tri_angle = settings.min_tri_angle_deg
    options.triangulation.min_angle = settings.min_tri_angle_deg
    out = root / f"sparse-{seed}"
    out.mkdir()
    models = pycolmap.incremental_mapping(database, root / "images", out, options)
    return max(models.values(), key=lambda m: m.num_reg_images(), default=None)


def _best(models: list[Any], names: list[str], seconds: dict[str, float]) -> PoseEstimate:
    """The poses of the model with the most registered frames, then the lowest reprojection
    error (a criterion that needs no ground truth, so generated videos get it too)."""
    found = [m for m in models if m is not None]
    if not found:
        count = len(names)
        return PoseEstimate(
            np.full((count, 4, 4), np.nan), np.zeros(count, bool), 0, math.nan, seconds
        )
    model = min(found, key=lambda m: (-m.num_reg_images(), m.compute_mean_reprojection_error()))
    return _poses_of(model, names, seconds)


def _poses_of(model: Any, names: list[str], seconds: dict[str, float]) -> PoseEstimate:
    """Camera-to-world matrices of a model's registered frames, in frame order."""
    count = len(names)
    matrices = np.full((count, 4, 4), np.nan)
    registered = np.zeros(count, bool)
    order = {name: i for i, name in enumerate(names)}
    for image in model.images.values():
        if not image.has_pose:
            continue
        # COLMAP stores world-to-camera (OpenCV axes); cityenv poses are camera-to-world
        world_from_cam = image.cam_from_world().inverse().matrix()
        i = order[image.name]
        matrices[i] = np.vstack([world_from_cam, [0.0, 0.0, 0.0, 1.0]])
        registered[i] = True
    error = float(model.compute_mean_reprojection_error())
    return PoseEstimate(matrices, registered, int(model.num_points3D()), error, seconds)
