"""Camera-following accuracy: RotErr and TransErr of a generated video against its trajectory.

SWM (``shared/seeds/000_33bddbe65604842d.txt``, Sec. 4, "Metrics") names the metric and no more:
"Camera-following accuracy: Rotation Error (RotErr) and Translation Error (TransErr)". The paper
gives no formula, no estimator and no alignment, so this module implements the definition the
camera-control literature uses for these two names (CameraCtrl, He et al. 2024; CamI2V), with
the choices the issue asks for, stated here once:

1. **Poses from the frames**, by one of two estimators (:attr:`SfMSettings.method`; every row
   and the floor of one run use the same, and their numbers are not compared across methods):

   - ``"sfm"``: structure from motion with pycolmap (SIFT features, exhaustive matching for
     short windows and sequential matching for long ones, incremental mapping restarted with a
     few seeds and the model of lowest reprojection error kept), on CPU, with the clip's known
     intrinsics held fixed (a PINHOLE camera; only poses and points are optimised).
   - ``"two_view"`` (:func:`estimate_poses_two_view`): SIFT on frames enlarged twice (a 128 px
     town frame has ~100 keypoints at its own size, 400-700 at twice it), each frame matched
     with the next three, an essential matrix per pair with the known intrinsics (OpenCV,
     RANSAC), the pairs' rotations robustly averaged (so one ambiguous pair does not tilt the
     rest), and the frames chained. Incremental SfM registers few of Town-Bench's 128 px
     frames (flat shading, night and fog, the warp's holes); pairs of neighbours it can still
     relate. **Scale**: a pair gives its translation's direction only. Each chain step gets
     one unit of length per frame it spans, so the estimated path is the chain of directions
     walked at a constant speed, or 0 when the step shows no parallax (its matches, with the
     rotation removed, move less than :attr:`SfMSettings.min_parallax_px`: a camera that did
     not move). No ground-truth length enters the estimate (that would hand a bad generator
     the right speed for free); the same rule is applied to generated frames, the warp's and
     the ground truth. What it cannot see: speed changes within a window (a generator that
     slows down scores as one that does not), and a step's direction is up to the estimator's
     noise. Town-Bench's cars keep a constant speed in a window and pedestrians one within ~10 %;
     free cameras vary by up to ~50 %, which the floor on their ground truth includes.

   Pixels given as ``ignore`` (moving objects) give no features to either.
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

6. **Segments** (optional, :attr:`SfMSettings.segment_frames`): a long window can be cut into
   segments that share their end frames (49 frames in 13s: the start frame and each 12-frame
   chunk); each is estimated and scored by steps 1-5 from its own anchor and scale, and the
   window's RotErr / TransErr are the means over the scored segments' frames
   (:attr:`CameraErrors.segments_scored` of :attr:`CameraErrors.segments`). Errors grow with
   the distance from the anchor, so segmented and whole-window numbers are not comparable;
   and a window's unscored segments are left out, so compare rows by the fraction scored too.

When the estimator fails (fewer registered frames than
:attr:`SfMSettings.min_registered_fraction` of the window or segment, or a ground truth that
does not move, so step 3 has no scale), both errors are ``None`` with the reason and the number
of registered frames: never a made-up number. Running the same
estimator on the ground-truth frames (:func:`camera_errors` with the ground-truth video) gives
the estimator's own floor, the error a perfect generator would get.

Example:
    >>> result = camera_errors(generated_frames, trajectory, camera)
    >>> result.rot_err, result.trans_err, result.registered, result.reason
    >>> settings = SfMSettings(method="two_view", segment_frames=13)  # python -m cityenv.eval's
    >>> camera_errors(generated_frames, trajectory, camera, settings).method
    'two_view'
"""

from __future__ import annotations

import dataclasses
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
    "estimate_poses_two_view",
    "normalise_translations",
    "relative_to_first",
    "rotation_angles",
    "segment_bounds",
]

MATCHERS = ("auto", "exhaustive", "sequential")
"""Pairing strategies of :attr:`SfMSettings.matcher`."""

METHODS = ("sfm", "two_view")
"""Pose estimators of :attr:`SfMSettings.method` (see the module docstring)."""


@dataclass(frozen=True)
class SfMSettings:
    """How poses are estimated from frames (pycolmap structure from motion, or two-view
    geometry with OpenCV; CPU only).

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
        method: ``"sfm"`` (incremental structure from motion, pycolmap) or ``"two_view"``
            (relative poses of frame pairs, robustly averaged and chained; OpenCV). Compare
            numbers of one method only: every row and the floor of a run use the same.
        upsample: ``"two_view"`` only: frames (and masks, intrinsics) are enlarged this many
            times before SIFT. A 128 px town frame gives about 100 keypoints and 20 matches
            per neighbour pair at its own size, 400-700 and 60-120 at twice it.
        peak_threshold: ``"two_view"`` only: SIFT's contrast threshold in COLMAP's units
            (COLMAP: 0.02 / 3; OpenCV's ``contrastThreshold`` is 6 times it).
        span: ``"two_view"`` only: each frame is paired with the next ``span`` frames; the
            extra pairs let the rotation averaging outvote one ambiguous pair.
        min_parallax_px: ``"two_view"`` only: a pair whose matches move less than this (median,
            pixels of the original frame, after removing the rotation) has no measurable
            translation and counts as a step of length 0.
        segment_frames: ``None``: the window is scored as one trajectory. Else it is cut into
            segments of this many frames, each starting on the last frame of the one before
            (:func:`segment_bounds`); each is estimated and scored on its own (its own anchor
            and scale) and RotErr / TransErr are the means over the scored segments' frames.
            Numbers with and without segments are not comparable (errors grow with the
            distance from the anchor).
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
    method: str = "sfm"
    upsample: int = 2
    peak_threshold: float = 0.01 / 6
    span: int = 3
    min_parallax_px: float = 0.5
    segment_frames: int | None = None

    def __post_init__(self) -> None:
        if self.matcher not in MATCHERS:
            raise unknown_name("matcher", self.matcher, MATCHERS, error=ConfigError)
        if self.method not in METHODS:
            raise unknown_name("method", self.method, METHODS, error=ConfigError)
        for name in (
            "exhaustive_max_frames",
            "overlap",
            "max_features",
            "num_threads",
            "init_min_num_inliers",
            "abs_pose_min_num_inliers",
            "min_num_matches",
            "restarts",
            "upsample",
            "span",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"SfMSettings.{name} must be an integer >= 1, got {value!r}.")
        for name in ("init_min_tri_angle_deg", "min_tri_angle_deg", "peak_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"SfMSettings.{name} must be a number > 0, got {value!r}.")
        if self.segment_frames is not None and (
            isinstance(self.segment_frames, bool)
            or not isinstance(self.segment_frames, int)
            or self.segment_frames < 3
        ):
            raise ConfigError(
                "SfMSettings.segment_frames must be null or an integer >= 3, got "
                f"{self.segment_frames!r}."
            )
        value = self.min_parallax_px
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"SfMSettings.min_parallax_px must be pixels >= 0, got {value!r}.")
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
        method: The estimator that gave the poses (:data:`METHODS`).
        segments: Segments the window was scored in (:attr:`SfMSettings.segment_frames`).
        segments_scored: Segments with numbers (``None``: the window is one segment, and
            :attr:`ok` says whether it was scored).
    """

    rot_err: float | None
    trans_err: float | None
    registered: int
    frames: int
    reason: str = ""
    rot_per_frame: np.ndarray | None = None
    trans_per_frame: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    method: str = "sfm"
    segments: int = 1
    segments_scored: int | None = None

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
            "method": self.method,
            "segments": self.segments,
            "segments_scored": self.segments_scored,
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
    method: str = "sfm",
) -> CameraErrors:
    """RotErr / TransErr of estimated poses against ground-truth poses (steps 2-5 above).

    Args:
        estimated: Camera-to-world ``(T, 4, 4)`` in any world frame and scale; rows of
            unregistered frames are ignored (may be NaN).
        ground_truth: Camera-to-world ``(T, 4, 4)`` of the same frames.
        registered: ``(T,)`` bool, the frames ``estimated`` holds; ``None`` = all.
        min_registered: Fewest registered frames that give numbers (at least 2).
        method: The estimator of ``estimated`` (:data:`METHODS`), named in the result.

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
    who = "SfM" if method == "sfm" else "the two-view chain"
    if n < max(2, min_registered):
        return CameraErrors(
            None,
            None,
            n,
            count,
            f"{who} registered {n} of {count} frames; at least {max(2, min_registered)} needed",
            method=method,
        )
    idx = np.flatnonzero(reg)
    rel_est, rel_gt = relative_to_first(est[idx]), relative_to_first(gt[idx])
    t_gt = normalise_translations(rel_gt[:, :3, 3])
    t_est = normalise_translations(rel_est[:, :3, 3])
    if t_gt is None:
        return CameraErrors(
            None,
            None,
            n,
            count,
            "the ground-truth cameras do not move: no scale to normalise by",
            method=method,
        )
    if t_est is None:
        t_est = np.zeros_like(t_gt)  # every camera at the anchor: all translation missed
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
        method=method,
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
    count = len(frames)
    parts = [
        _segment_errors(frames[a:b], trajectory.matrices[a:b], camera, settings,
                        None if ignore is None else ignore[a:b])
        for a, b in segment_bounds(count, settings.segment_frames)
    ]  # fmt: skip
    if len(parts) == 1:
        return parts[0]
    return _pooled(parts, segment_bounds(count, settings.segment_frames), count, settings.method)


def segment_bounds(count: int, segment_frames: int | None) -> list[tuple[int, int]]:
    """``[start, stop)`` of the segments a window of ``count`` frames is scored in: the whole
    window, or runs of ``segment_frames`` frames where each starts on the last frame of the one
    before (a 49-frame window in 13s: 0-12, 12-24, 24-36, 36-48); a last run shorter than 3
    frames joins the one before."""
    if segment_frames is None or segment_frames >= count:
        return [(0, count)]
    bounds, start = [], 0
    while start < count - 1:
        stop = min(count, start + segment_frames)
        if count - stop < 2:
            stop = count
        bounds.append((start, stop))
        start = stop - 1
    return bounds


def _segment_errors(
    frames: np.ndarray,
    matrices: np.ndarray,
    camera: PinholeCamera,
    settings: SfMSettings,
    ignore: np.ndarray | None,
) -> CameraErrors:
    """Poses estimated on one segment, scored against its ground truth."""
    if settings.method == "two_view":
        estimate = estimate_poses_two_view(frames, camera, settings, ignore=ignore)
    else:
        estimate = estimate_poses(frames, camera, settings, ignore=ignore)
    needed = max(3, math.ceil(settings.min_registered_fraction * len(frames)))
    errors = errors_from_poses(
        estimate.matrices,
        matrices,
        estimate.registered,
        min_registered=needed,
        method=settings.method,
    )
    return dataclasses.replace(errors, seconds=estimate.seconds)


def _pooled(
    parts: list[CameraErrors], bounds: list[tuple[int, int]], count: int, method: str
) -> CameraErrors:
    """One window's errors from its segments': per-frame values of the scored segments (each
    frame scored where it is not the anchor), means over them; ``None`` if none scored."""
    rot, trans = np.full(count, np.nan), np.full(count, np.nan)
    registered = np.zeros(count, bool)
    seconds: dict[str, float] = {}
    rot_values: list[float] = []
    trans_values: list[float] = []
    for part, (start, _) in zip(parts, bounds, strict=True):
        for stage, value in part.seconds.items():
            seconds[stage] = seconds.get(stage, 0.0) + value
        if not part.ok:
            continue
        assert part.rot_per_frame is not None and part.trans_per_frame is not None
        idx = np.flatnonzero(np.isfinite(part.rot_per_frame))
        registered[start + idx] = True
        scored = idx[1:]  # the segment's anchor: 0 by construction
        rot[start + scored] = part.rot_per_frame[scored]
        trans[start + scored] = part.trans_per_frame[scored]
        rot_values += part.rot_per_frame[scored].tolist()
        trans_values += part.trans_per_frame[scored].tolist()
    ok = [p for p in parts if p.ok]
    common = dict(segments=len(parts), segments_scored=len(ok), method=method, seconds=seconds)
    if not ok:
        frames_registered = max(p.registered for p in parts)
        why = "; ".join(
            f"segment {a}-{b - 1}: {p.reason}" for p, (a, b) in zip(parts, bounds, strict=True)
        )
        return CameraErrors(None, None, frames_registered, count, f"no segment scored ({why})",
                            **common)  # fmt: skip
    return CameraErrors(
        float(np.mean(rot_values)),
        float(np.mean(trans_values)),
        int(registered.sum()),
        count,
        rot_per_frame=rot,
        trans_per_frame=trans,
        **common,
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


# --- the two-view chain --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Pair:
    """One verified frame pair ``(i, j)``, ``i < j``: the relative rotation and the inliers.

    ``rotation`` is camera ``j``'s orientation in camera ``i``'s axes (camera-to-camera, so
    ``R_j = R_i @ rotation``); ``rays_i`` / ``rays_j`` are the inliers' unit bearings ``(N, 3)``.
    """

    i: int
    j: int
    rotation: np.ndarray
    rays_i: np.ndarray
    rays_j: np.ndarray


def estimate_poses_two_view(
    frames: np.ndarray,
    camera: PinholeCamera,
    settings: SfMSettings | None = None,
    *,
    ignore: np.ndarray | None = None,
) -> PoseEstimate:
    """Camera poses of a window from the relative geometry of frame pairs (OpenCV, CPU).

    Every frame is paired with the next :attr:`SfMSettings.span` frames; a pair whose SIFT
    matches admit an essential matrix with at least :attr:`SfMSettings.min_num_matches` inliers
    (known intrinsics, RANSAC, one-pixel threshold) gives a relative rotation. The frames are
    registered along a chain: from the anchor, each next frame is the nearest one (at most
    ``span`` ahead) with a verified pair to the last; of several chains (a frame nothing links
    to breaks one) the longest is kept. Rotations of the chain's frames are averaged over all
    their verified pairs (robust chordal averaging, so one ambiguous pair is outvoted); each
    chain step's translation direction is then solved from its inliers given the averaged
    rotation, and scaled by the step's frame count: **one unit per frame**, or 0 when the
    step's matches show no parallax (:attr:`SfMSettings.min_parallax_px`). See the module
    docstring for why.

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB.
        camera: Intrinsics of every frame (``W x H`` must match the frames).
        settings: Estimator settings; ``None`` = :class:`SfMSettings` defaults.
        ignore: ``(T, H, W)`` bool, true where no feature may be taken; ``None`` = every pixel.

    Returns:
        The poses in the anchor's axes (NaN where not registered), ``num_points`` = inlier
        correspondences of the chain's pairs, ``reprojection_error`` NaN (no 3D points).

    Raises:
        ShapeMismatchError: If the frames or ``ignore`` are malformed (as
            :func:`estimate_poses`).
    """
    import cv2  # imported here: only camera metrics need it

    settings = settings or SfMSettings()
    frames = _check_frames(frames, camera)
    ignore = _check_ignore(ignore, frames)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(settings.num_threads)
    try:
        return _two_view(cv2, frames, camera, settings, ignore)
    finally:
        cv2.setNumThreads(threads)


def _two_view(
    cv2: Any,
    frames: np.ndarray,
    camera: PinholeCamera,
    settings: SfMSettings,
    ignore: np.ndarray | None,
) -> PoseEstimate:
    """:func:`estimate_poses_two_view` once its inputs are checked."""
    seconds: dict[str, float] = {}
    count = len(frames)
    t0 = time.perf_counter()
    features = _sift(cv2, frames, ignore, settings)
    seconds["extract"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    k = _opencv_intrinsics(camera)
    pairs: dict[tuple[int, int], _Pair] = {}
    for i in range(count):
        for j in range(i + 1, min(count, i + settings.span + 1)):
            pair = _verify_pair(cv2, features[i], features[j], k, i, j, settings)
            if pair is not None:
                pairs[(i, j)] = pair
    seconds["match"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    chain = _longest_chain(count, pairs, settings.span)
    matrices = np.full((count, 4, 4), np.nan)
    registered = np.zeros(count, bool)
    inliers = 0
    if len(chain) >= 2:
        rotations = _average_rotations(chain, pairs)
        centre = np.zeros(3)
        for a, b in zip(chain, chain[1:], strict=False):
            matrices[a] = _rigid(rotations[a], centre)
            pair = pairs[(a, b)]
            relative = rotations[a].T @ rotations[b]
            direction = _translation_direction(pair, relative, camera, settings)
            centre = centre + rotations[a] @ direction * (b - a)  # one unit per frame
            inliers += len(pair.rays_i)
        matrices[chain[-1]] = _rigid(rotations[chain[-1]], centre)
        registered[chain] = True
    seconds["map"] = time.perf_counter() - t0
    return PoseEstimate(matrices, registered, inliers, math.nan, seconds)


def _sift(
    cv2: Any, frames: np.ndarray, ignore: np.ndarray | None, settings: SfMSettings
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """SIFT keypoints (OpenCV pixel coordinates of the original frame: centres at integers)
    and descriptors of every frame, found on the frame enlarged ``settings.upsample`` times."""
    up = settings.upsample
    # OpenCV's contrast threshold is divided by its 3 layers per octave and halved; COLMAP's
    # peak threshold is not: 6 x COLMAP's is the same threshold
    sift = cv2.SIFT_create(
        nfeatures=settings.max_features, contrastThreshold=6.0 * settings.peak_threshold
    )
    out = []
    for i, frame in enumerate(frames):
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        size = (gray.shape[1] * up, gray.shape[0] * up)
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_CUBIC) if up > 1 else gray
        mask = None
        if ignore is not None:
            keep = np.where(ignore[i], 0, 255).astype(np.uint8)
            mask = cv2.resize(keep, size, interpolation=cv2.INTER_NEAREST) if up > 1 else keep
        keypoints, descriptors = sift.detectAndCompute(gray, mask)
        points = np.array([p.pt for p in keypoints], np.float64).reshape(-1, 2)
        out.append(((points + 0.5) / up - 0.5, descriptors))  # back to the frame's pixels
    return out


def _opencv_intrinsics(camera: PinholeCamera) -> np.ndarray:
    """``K`` for OpenCV pixel coordinates: cityenv's pixel centres are at +0.5, OpenCV's at 0."""
    return np.array(
        [[camera.fx, 0.0, camera.cx - 0.5], [0.0, camera.fy, camera.cy - 0.5], [0.0, 0.0, 1.0]]
    )


def _verify_pair(
    cv2: Any,
    first: tuple[np.ndarray, np.ndarray | None],
    second: tuple[np.ndarray, np.ndarray | None],
    k: np.ndarray,
    i: int,
    j: int,
    settings: SfMSettings,
) -> _Pair | None:
    """Ratio-test matches, an essential matrix by RANSAC and its rotation; ``None`` with fewer
    than ``settings.min_num_matches`` inliers."""
    (points_i, desc_i), (points_j, desc_j) = first, second
    need = settings.min_num_matches
    if desc_i is None or desc_j is None or len(points_i) < need or len(points_j) < need:
        return None
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(desc_i, desc_j, k=2)
    good = [m[0] for m in knn if len(m) == 2 and m[0].distance < 0.8 * m[1].distance]
    if len(good) < need:
        return None
    a = points_i[[m.queryIdx for m in good]]
    b = points_j[[m.trainIdx for m in good]]
    if float(np.median(np.linalg.norm(a - b, axis=1))) < settings.min_parallax_px:
        # the same picture twice: no essential matrix exists, the camera did not move
        return _Pair(i, j, np.eye(3), _bearings(a, k), _bearings(b, k))
    cv2.setRNGSeed(settings.seed + 7919 * i + j)  # repeatable RANSAC, a stream per pair
    try:
        essential, mask = cv2.findEssentialMat(
            a, b, k, method=cv2.RANSAC, prob=0.9999, threshold=1.0
        )
        if essential is None or essential.shape[0] < 3:
            return None
        _, rotation, _, mask = cv2.recoverPose(essential[:3], a, b, k, mask=mask)
    except cv2.error:  # a degenerate sample (OpenCV's polynomial solver asserts)
        return None
    inlier = mask.ravel() > 0
    if inlier.sum() < need:
        return None
    rays_i, rays_j = _bearings(a[inlier], k), _bearings(b[inlier], k)
    # recoverPose's R maps camera-i points to camera j: camera j's axes in i's are R^T
    return _Pair(i, j, rotation.T, rays_i, rays_j)


def _bearings(points: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Unit rays ``(N, 3)`` of OpenCV pixel coordinates ``(N, 2)``."""
    rays = np.c_[points, np.ones(len(points))] @ np.linalg.inv(k).T
    return rays / np.linalg.norm(rays, axis=1, keepdims=True)


def _longest_chain(count: int, pairs: dict[tuple[int, int], _Pair], span: int) -> list[int]:
    """The longest run of frames each linked to the last by a verified pair (greedy: the
    nearest next frame); ties go to the earliest run."""
    best: list[int] = []
    start = 0
    while start < count - 1:
        chain = [start]
        while True:
            last = chain[-1]
            nxt = next((j for j in range(last + 1, last + span + 1) if (last, j) in pairs), None)
            if nxt is None:
                break
            chain.append(nxt)
        if len(chain) > len(best):
            best = chain
        start = chain[-1] + 1 if len(chain) > 1 else start + 1
    return best if len(best) >= 2 else []


def _average_rotations(
    chain: list[int], pairs: dict[tuple[int, int], _Pair], iterations: int = 30
) -> dict[int, np.ndarray]:
    """Orientations of the chain's frames in the anchor's axes, from every verified pair
    among them. Each frame starts at the medoid of what its pairs with earlier frames say
    (so one ambiguous pair among three is outvoted, instead of tilting every later frame);
    then Gauss-Seidel chordal averaging with weights ``1 / angle`` (iteratively reweighted
    least squares of an L1 cost: a pair that disagrees with the others counts little). The
    anchor stays at the identity."""
    members = set(chain)
    edges = [p for (i, j), p in pairs.items() if i in members and j in members]
    rotations = {chain[0]: np.eye(3)}
    for n in chain[1:]:
        guesses = np.stack([rotations[p.i] @ p.rotation for p in edges if p.j == n])
        spread = [
            rotation_angles(np.broadcast_to(g, guesses.shape), guesses).sum() for g in guesses
        ]
        rotations[n] = guesses[int(np.argmin(spread))]
    floor = math.radians(0.1)  # no weight grows beyond 1 / 0.1 degree
    for _ in range(iterations):
        for n in chain[1:]:
            total = np.zeros((3, 3))
            for p in edges:
                if p.j == n:
                    guess = rotations[p.i] @ p.rotation
                elif p.i == n:
                    guess = rotations[p.j] @ p.rotation.T
                else:
                    continue
                angle = float(rotation_angles(guess[None], rotations[n][None])[0])
                total += guess / max(angle, floor)
            rotations[n] = _nearest_rotation(total)
    return rotations


def _nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    """The rotation nearest a ``(3, 3)`` matrix in the Frobenius norm (SVD projection)."""
    u, _, vt = np.linalg.svd(matrix)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def _translation_direction(
    pair: _Pair, rotation: np.ndarray, camera: PinholeCamera, settings: SfMSettings
) -> np.ndarray:
    """Unit direction of camera ``j``'s centre in camera ``i``'s axes, given their relative
    ``rotation`` (``R_i^T R_j``); zeros when the inliers show no parallax after the rotation.

    With the rotation known the epipolar constraint is linear in the translation ``t`` of
    ``x_j ~ R^T x_i + t`` (camera ``j``'s coordinates): ``t . ((R^T x_i) x x_j) = 0`` per
    match; ``t`` is the least-squares null vector, its sign the one that puts most points in
    front of both cameras.
    """
    rotated = pair.rays_i @ rotation  # rows: R^T x_i, the i-rays in camera j's axes
    # parallax: the angle between a j-ray and its rotated i-ray, in pixels of the frame
    parallax = np.linalg.norm(np.cross(rotated, pair.rays_j), axis=1) * camera.fx
    if float(np.median(parallax)) < settings.min_parallax_px:
        return np.zeros(3)
    normals = np.cross(rotated, pair.rays_j)
    t = np.linalg.svd(normals)[2][-1]
    # depths: lambda_j x_j = lambda_i R^T x_i + t; solve per match, count positive pairs
    front = 0
    for r, x in zip(rotated, pair.rays_j, strict=True):
        lam = np.linalg.lstsq(np.c_[r, -x], -t, rcond=None)[0]
        front += 1 if (lam > 0).all() else (-1 if (lam < 0).all() else 0)
    t = t if front >= 0 else -t
    return -rotation @ t  # camera j's centre in camera i's axes: -R t


def _rigid(rotation: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """A ``(4, 4)`` camera-to-world matrix."""
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = rotation, centre
    return m
