"""Rigid camera poses and timed trajectories of them.

Frames and conventions: the world frame is a city's local ENU frame (x east, y north, z up,
metres); the camera frame is OpenCV's (x right, y down, z forward). A :class:`Pose` is
camera-to-world: it maps camera-frame points ``p_cam`` to world points ``R @ p_cam + t``, so the
columns of ``R`` are the camera axes expressed in the world and ``t`` is the camera centre.
Rotations are unit quaternions of numpy-quaternion, ordered ``(w, x, y, z)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import overload

import numpy as np
import quaternion
from numpy.typing import ArrayLike

from cityenv.errors import InvalidPoseError, ShapeMismatchError

__all__ = [
    "QUATERNION_PRODUCTS_TO_MATRIX",
    "Pose",
    "Trajectory",
    "poses_to_matrices",
    "heading_quaternions",
    "quaternion_product_features",
    "quaternions_to_matrices",
    "rotation_matrix_column",
]

# Camera axes for heading 0, pitch 0, roll 0, as columns in ENU: camera x (right) = east,
# camera y (down) = -up, camera z (optical axis) = north.
_LEVEL_NORTH = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
_ORTHONORMAL_ATOL = 1e-6


# --- validation helpers -----------------------------------------------------------------------
def _as_position(position: ArrayLike, name: str = "position") -> np.ndarray:
    """Return a finite float64 ``(3,)`` copy of ``position`` (a scalar broadcasts to all axes)."""
    arr = np.asarray(position, dtype=np.float64)
    if arr.shape == ():
        arr = np.full(3, float(arr))
    if arr.shape != (3,):
        raise InvalidPoseError(
            f"{name} must have shape (3,) (x, y, z in metres), got shape {arr.shape}; "
            "pass one xyz point."
        )
    if not np.all(np.isfinite(arr)):
        raise InvalidPoseError(
            f"{name} must be finite, got {arr.tolist()}; check the source of the pose for NaN/inf."
        )
    arr = arr.copy()
    arr.flags.writeable = False
    return arr


def _normalised(q: np.ndarray, name: str) -> np.ndarray:
    """Normalise a float ``(..., 4)`` wxyz array, raising on non-finite or zero-norm rows."""
    if not np.all(np.isfinite(q)):
        raise InvalidPoseError(
            f"{name} must be finite, got non-finite values; check the source of the pose for "
            "NaN/inf."
        )
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm < 1e-12):
        raise InvalidPoseError(
            f"{name} must be a non-zero quaternion (w, x, y, z), got a zero-norm quaternion; "
            "use (1, 0, 0, 0) for no rotation."
        )
    return q / norm


def _as_unit_quaternion(rotation: quaternion.quaternion | ArrayLike) -> quaternion.quaternion:
    """Return ``rotation`` (a quaternion or a wxyz ``(4,)`` array) as a unit quaternion."""
    if isinstance(rotation, quaternion.quaternion):
        wxyz = quaternion.as_float_array(rotation)
    else:
        arr = np.asarray(rotation)
        wxyz = quaternion.as_float_array(arr) if arr.dtype == np.quaternion else arr
        wxyz = np.asarray(wxyz, dtype=np.float64)
        if wxyz.shape != (4,):
            raise InvalidPoseError(
                "rotation must be a numpy-quaternion or an array of shape (4,) ordered "
                f"(w, x, y, z), got shape {wxyz.shape}; use Pose.from_rt for a rotation matrix."
            )
    return quaternion.from_float_array(_normalised(wxyz, "rotation"))


def _as_quaternion_array(rotations: ArrayLike, n: int) -> np.ndarray:
    """Return ``rotations`` (quaternions ``(N,)`` or wxyz ``(N, 4)``) as unit quaternions."""
    arr = np.asarray(rotations)
    wxyz = quaternion.as_float_array(arr) if arr.dtype == np.quaternion else arr
    wxyz = np.asarray(wxyz, dtype=np.float64)
    if wxyz.shape != (n, 4):
        raise ShapeMismatchError(
            f"rotations must be a quaternion array of shape ({n},) or a wxyz array of shape "
            f"({n}, 4) to match {n} positions, got shape {arr.shape}; pass one rotation per pose."
        )
    return quaternion.from_float_array(_normalised(wxyz, "rotations"))


def _check_rotation_matrix(R: np.ndarray) -> None:
    """Raise :class:`InvalidPoseError` unless ``R`` is a finite proper rotation ``(3, 3)``."""
    if R.shape != (3, 3) or not np.all(np.isfinite(R)):
        raise InvalidPoseError(
            f"rotation matrix must be a finite (3, 3) array, got shape {R.shape}"
            f"{'' if np.all(np.isfinite(R)) else ' with NaN/inf'}; check the source of the pose."
        )
    error = np.abs(R.T @ R - np.eye(3)).max()
    if error > _ORTHONORMAL_ATOL or np.linalg.det(R) <= 0.0:
        raise InvalidPoseError(
            "rotation matrix must be orthonormal with determinant +1, got max |R^T R - I| = "
            f"{error:.2e} and det = {np.linalg.det(R):.6f}; orthonormalise it (e.g. via SVD) "
            "or check for a left-handed (mirrored) convention."
        )


def _axis_rotation(axis: int, angle_rad: float) -> np.ndarray:
    """Right-handed rotation matrix ``(3, 3)`` about coordinate ``axis`` by ``angle_rad``."""
    return quaternion.as_rotation_matrix(
        quaternion.from_rotation_vector(np.eye(3)[axis] * angle_rad)
    )


# --- Pose -------------------------------------------------------------------------------------
class Pose:
    """A camera-to-world rigid transform (treat as immutable).

    Args:
        position: Camera centre in the world frame, shape ``(3,)`` metres (a scalar broadcasts,
            so ``Pose(0, q)`` is a pure rotation).
        rotation: Camera-to-world rotation as a numpy-quaternion or a ``(4,)`` array ordered
            ``(w, x, y, z)``; it is normalised.

    Attributes:
        position: Camera centre, shape ``(3,)`` float64, read-only.
        rotation: Unit quaternion (camera-to-world).

    Raises:
        InvalidPoseError: If an input is not finite, has the wrong shape, or the quaternion is zero.
    """

    __slots__ = ("position", "rotation")

    def __init__(
        self, position: ArrayLike, rotation: quaternion.quaternion | ArrayLike = (1.0, 0, 0, 0)
    ) -> None:
        self.position: np.ndarray = _as_position(position)
        self.rotation: quaternion.quaternion = _as_unit_quaternion(rotation)

    # constructors
    @classmethod
    def identity(cls) -> Pose:
        """The pose whose camera frame is the world frame."""
        return cls(np.zeros(3), quaternion.one)

    @classmethod
    def from_rt(cls, R: ArrayLike, t: ArrayLike) -> Pose:
        """Build a pose from a camera-to-world rotation matrix and camera centre.

        Args:
            R: Rotation matrix, shape ``(3, 3)``; columns are the camera axes in the world.
            t: Camera centre in the world, shape ``(3,)``.

        Raises:
            InvalidPoseError: If ``R`` is not a finite proper rotation or ``t`` not finite.
        """
        R = np.asarray(R, dtype=np.float64)
        _check_rotation_matrix(R)
        return cls(t, quaternion.from_rotation_matrix(R, nonorthogonal=False))

    @classmethod
    def from_matrix(cls, m: ArrayLike) -> Pose:
        """Build a pose from a camera-to-world homogeneous matrix.

        Args:
            m: Matrix of shape ``(4, 4)`` whose last row is ``(0, 0, 0, 1)``.

        Raises:
            InvalidPoseError: If ``m`` has the wrong shape, a bad last row, or a bad rotation.
        """
        m = np.asarray(m, dtype=np.float64)
        if m.shape != (4, 4) or not np.allclose(m[3], (0.0, 0.0, 0.0, 1.0)):
            raise InvalidPoseError(
                "pose matrix must have shape (4, 4) with last row (0, 0, 0, 1), got shape "
                f"{m.shape}{f' and last row {m[3].tolist()}' if m.shape == (4, 4) else ''}; "
                "pass a camera-to-world homogeneous transform."
            )
        return cls.from_rt(m[:3, :3], m[:3, 3])

    @classmethod
    def from_heading(
        cls,
        position: ArrayLike,
        heading_deg: float,
        pitch_deg: float = 0.0,
        roll_deg: float = 0.0,
    ) -> Pose:
        """A camera at ``position`` looking along a compass heading.

        The camera first looks horizontally along ``heading_deg`` (degrees clockwise from north),
        upright, then pitches up by ``pitch_deg`` about its x axis, then rolls by ``roll_deg``
        about its optical axis. Heading 0 gives camera x = east, camera y (down) = -up and optical
        axis = north; heading 90 looks east.

        Args:
            position: Camera centre in ENU, shape ``(3,)`` metres.
            heading_deg: Compass heading of the optical axis, degrees clockwise from north.
            pitch_deg: Elevation of the optical axis, degrees; positive looks up.
            roll_deg: Rotation about the optical axis, degrees; positive turns the camera
                clockwise as seen from behind it (its right side dips).

        Raises:
            InvalidPoseError: If an angle or the position is not finite.
        """
        angles = np.array([heading_deg, pitch_deg, roll_deg], dtype=np.float64)
        if not np.all(np.isfinite(angles)):
            raise InvalidPoseError(
                f"heading/pitch/roll must be finite degrees, got {angles.tolist()}; "
                "check the source of the angles for NaN/inf."
            )
        heading, pitch, roll = np.radians(angles)
        # Clockwise compass heading is a negative (counter-clockwise) rotation about up; pitch up
        # turns the optical axis toward camera -y (up), i.e. a positive rotation about camera x.
        R = (
            _axis_rotation(2, -heading)
            @ _LEVEL_NORTH
            @ _axis_rotation(0, pitch)
            @ _axis_rotation(2, roll)
        )
        return cls.from_rt(R, position)

    # views
    @property
    def rotation_matrix(self) -> np.ndarray:
        """Camera-to-world rotation, shape ``(3, 3)`` float64 (columns = camera axes in world)."""
        return quaternion.as_rotation_matrix(self.rotation)

    @property
    def matrix(self) -> np.ndarray:
        """Camera-to-world homogeneous transform, shape ``(4, 4)`` float64."""
        m = np.eye(4)
        m[:3, :3] = self.rotation_matrix
        m[:3, 3] = self.position
        return m

    @property
    def forward(self) -> np.ndarray:
        """World direction of the optical axis (camera +z), unit, shape ``(3,)``."""
        return self.rotation_matrix[:, 2]

    @property
    def heading_deg(self) -> float:
        """Compass heading of the optical axis in degrees ``[0, 360)``, clockwise from north.

        For a camera looking straight up or down, the heading of its ``up`` (-y) axis for a camera
        looking down, or of its ``down`` (+y) axis for one looking up, i.e. the heading it had
        before pitching.
        """
        R = self.rotation_matrix
        direction = R[:, 2]
        if math.hypot(direction[0], direction[1]) < 1e-9:
            direction = R[:, 1] * np.sign(direction[2])
        heading = math.degrees(math.atan2(direction[0], direction[1])) % 360.0
        return 0.0 if heading >= 360.0 else heading

    @property
    def pitch_deg(self) -> float:
        """Elevation of the optical axis in degrees ``[-90, 90]``; positive looks up."""
        return math.degrees(math.asin(float(np.clip(self.forward[2], -1.0, 1.0))))

    # algebra
    def inverse(self) -> Pose:
        """The inverse transform (world-to-camera as a :class:`Pose`)."""
        inverse_rotation = self.rotation.conjugate()
        position = -quaternion.rotate_vectors(inverse_rotation, self.position)
        return Pose(position, inverse_rotation)

    def __matmul__(self, other: Pose) -> Pose:
        """Compose: ``(self @ other).matrix == self.matrix @ other.matrix``."""
        if not isinstance(other, Pose):
            return NotImplemented
        position = self.position + quaternion.rotate_vectors(self.rotation, other.position)
        return Pose(position, self.rotation * other.rotation)

    def relative_to(self, reference: Pose) -> Pose:
        """This pose expressed in ``reference``'s camera frame: ``reference.inverse() @ self``."""
        return reference.inverse() @ self

    def transform_points(self, points: ArrayLike) -> np.ndarray:
        """Map camera-frame points to the world frame.

        Args:
            points: Points in this camera's frame, shape ``(..., 3)``.

        Returns:
            World points, shape ``(..., 3)`` float64.
        """
        points = np.asarray(points, dtype=np.float64)
        if points.ndim == 0 or points.shape[-1] != 3:
            raise ShapeMismatchError(
                f"points must have shape (..., 3), got {points.shape}; put xyz on the last axis."
            )
        return points @ self.rotation_matrix.T + self.position

    def allclose(self, other: Pose, atol: float = 1e-9) -> bool:
        """Whether both poses agree to ``atol`` in position and rotation matrix entries.

        Compares rotation matrices, so ``q`` and ``-q`` count as equal.
        """
        return bool(
            np.allclose(self.position, other.position, rtol=0.0, atol=atol)
            and np.allclose(self.rotation_matrix, other.rotation_matrix, rtol=0.0, atol=atol)
        )

    def __repr__(self) -> str:
        q = quaternion.as_float_array(self.rotation)
        return (
            f"Pose(position={np.round(self.position, 6).tolist()}, "
            f"rotation_wxyz={np.round(q, 6).tolist()})"
        )


# --- Trajectory -------------------------------------------------------------------------------
def _as_timestamps(timestamps: ArrayLike, n: int) -> np.ndarray:
    """Return strictly increasing finite float64 timestamps of shape ``(n,)``."""
    t = np.asarray(timestamps, dtype=np.float64)
    if t.shape != (n,):
        raise ShapeMismatchError(
            f"timestamps must have shape ({n},) to match {n} poses, got shape {t.shape}; "
            "pass one time in seconds per pose."
        )
    if not np.all(np.isfinite(t)):
        raise InvalidPoseError("timestamps must be finite seconds, got NaN/inf; check the clock.")
    if np.any(np.diff(t) <= 0.0):
        bad = int(np.argmax(np.diff(t) <= 0.0))
        raise InvalidPoseError(
            f"timestamps must be strictly increasing, got t[{bad}] = {t[bad]} followed by "
            f"t[{bad + 1}] = {t[bad + 1]}; sort the poses by time and drop duplicates."
        )
    return t


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _slerp_pairs(q0: np.ndarray, q1: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """Slerp between quaternion arrays ``q0`` and ``q1`` ``(M,)`` at fractions ``tau`` ``(M,)``."""
    # q and -q are the same rotation; flip q1 into q0's hemisphere so slerp takes the short arc.
    dots = np.sum(quaternion.as_float_array(q0) * quaternion.as_float_array(q1), axis=-1)
    q1 = np.where(dots < 0.0, -q1, q1)
    return np.slerp_vectorized(q0, q1, tau)


class Trajectory:
    """Camera poses with timestamps (treat as immutable).

    Args:
        positions: Camera centres in the world frame, shape ``(N, 3)`` metres, ``N >= 1``.
        rotations: Camera-to-world rotations, a quaternion array ``(N,)`` or a wxyz array
            ``(N, 4)``; normalised.
        timestamps: Times in seconds, shape ``(N,)``, strictly increasing.

    Attributes:
        positions: Shape ``(N, 3)`` float64, read-only.
        rotations: Quaternion array ``(N,)`` of unit quaternions, read-only.
        timestamps: Shape ``(N,)`` float64, read-only.

    Raises:
        InvalidPoseError: If a value is not finite, a quaternion is zero, ``N == 0`` or the
            timestamps are not strictly increasing.
        ShapeMismatchError: If the three arrays disagree in shape.
    """

    __slots__ = ("positions", "rotations", "timestamps")

    def __init__(self, positions: ArrayLike, rotations: ArrayLike, timestamps: ArrayLike) -> None:
        p = np.asarray(positions, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != 3 or p.shape[0] == 0:
            raise InvalidPoseError(
                f"positions must have shape (N, 3) with N >= 1, got shape {p.shape}; "
                "pass one xyz camera centre per pose."
            )
        if not np.all(np.isfinite(p)):
            raise InvalidPoseError(
                "positions must be finite, got NaN/inf; check the source of the trajectory."
            )
        n = p.shape[0]
        self.positions: np.ndarray = _readonly(p.copy())
        self.rotations: np.ndarray = _readonly(_as_quaternion_array(rotations, n))
        self.timestamps: np.ndarray = _readonly(_as_timestamps(timestamps, n).copy())

    @classmethod
    def from_poses(
        cls,
        poses: Sequence[Pose],
        timestamps: ArrayLike | None = None,
        fps: float | None = None,
    ) -> Trajectory:
        """Build a trajectory from a sequence of poses.

        Args:
            poses: ``N >= 1`` poses.
            timestamps: Times in seconds, shape ``(N,)``, strictly increasing.
            fps: Frame rate; gives timestamps ``0, 1/fps, 2/fps, ...``. Give at most one of
                ``timestamps`` and ``fps``; with neither the timestamps are ``0, 1, 2, ...``.

        Raises:
            InvalidPoseError: If both ``timestamps`` and ``fps`` are given, ``fps`` is not positive,
                or ``poses`` is empty.
        """
        poses = list(poses)
        if not poses:
            raise InvalidPoseError("poses must hold at least one Pose, got none.")
        if timestamps is not None and fps is not None:
            raise InvalidPoseError(
                f"give timestamps or fps, not both (got fps={fps} and {len(poses)} timestamps)."
            )
        if timestamps is None:
            timestamps = np.arange(len(poses), dtype=np.float64) / _check_fps(
                1.0 if fps is None else fps
            )
        positions = np.stack([pose.position for pose in poses])
        rotations = np.array([pose.rotation for pose in poses], dtype=np.quaternion)
        return cls(positions, rotations, timestamps)

    # container protocol
    def __len__(self) -> int:
        return int(self.timestamps.shape[0])

    @overload
    def __getitem__(self, index: int) -> Pose: ...

    @overload
    def __getitem__(self, index: slice) -> Trajectory: ...

    def __getitem__(self, index: int | slice) -> Pose | Trajectory:
        """Pose ``index`` (an ``int``), or a sub-trajectory (a ``slice`` with positive step)."""
        if isinstance(index, slice):
            return Trajectory(self.positions[index], self.rotations[index], self.timestamps[index])
        return Pose(self.positions[index], self.rotations[index])

    def __iter__(self) -> Iterator[Pose]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return (
            f"Trajectory(N={len(self)}, t=[{self.timestamps[0]:.3f}, {self.timestamps[-1]:.3f}] s)"
        )

    # views
    @property
    def matrices(self) -> np.ndarray:
        """Camera-to-world transforms, shape ``(N, 4, 4)`` float64."""
        m = np.tile(np.eye(4), (len(self), 1, 1))
        m[:, :3, :3] = quaternion.as_rotation_matrix(self.rotations)
        m[:, :3, 3] = self.positions
        return m

    @property
    def wxyz(self) -> np.ndarray:
        """The rotations as unit quaternion components, shape ``(N, 4)`` float64 ``(w, x, y, z)``
        (a read-only view, no copy)."""
        return self.rotations.view(np.float64).reshape(-1, 4)

    @property
    def duration(self) -> float:
        """Time from the first to the last pose, seconds."""
        return float(self.timestamps[-1] - self.timestamps[0])

    # operations
    def interpolate(self, times: float | ArrayLike) -> Trajectory:
        """Poses at the given times: linear positions and slerped rotations.

        Args:
            times: A time or strictly increasing times in seconds, shape ``()`` or ``(M,)``,
                inside ``[t0, tN]``.

        Returns:
            A trajectory of ``M`` poses (1 for a scalar time) with ``times`` as timestamps.

        Raises:
            InvalidPoseError: If a time is outside ``[t0, tN]``, not finite, or the times are not
                strictly increasing.
        """
        t = np.atleast_1d(np.asarray(times, dtype=np.float64))
        t = self._check_in_range(t)
        if len(self) == 1:
            return Trajectory(
                np.repeat(self.positions, len(t), axis=0), np.repeat(self.rotations, len(t)), t
            )
        i = np.clip(np.searchsorted(self.timestamps, t, side="right") - 1, 0, len(self) - 2)
        t0, t1 = self.timestamps[i], self.timestamps[i + 1]
        tau = (t - t0) / (t1 - t0)
        positions = self.positions[i] + tau[:, None] * (self.positions[i + 1] - self.positions[i])
        rotations = _slerp_pairs(self.rotations[i], self.rotations[i + 1], tau)
        return Trajectory(positions, rotations, t)

    def _check_in_range(self, t: np.ndarray) -> np.ndarray:
        """Validate query times ``(M,)`` and snap those within rounding of the ends onto them."""
        start, end = float(self.timestamps[0]), float(self.timestamps[-1])
        slack = 1e-9 * max(1.0, abs(start), abs(end))
        if t.ndim != 1 or not np.all(np.isfinite(t)):
            raise InvalidPoseError(
                f"times must be a finite scalar or 1-D array of seconds, got shape {t.shape}."
            )
        if np.any(t < start - slack) or np.any(t > end + slack):
            raise InvalidPoseError(
                f"times must lie in the trajectory's range [{start}, {end}] s, got "
                f"[{t.min()}, {t.max()}]; interpolation does not extrapolate, so clip the times."
            )
        return np.clip(t, start, end)

    def resample(self, fps: float) -> Trajectory:
        """The trajectory at uniform times ``t0, t0 + 1/fps, ...`` up to and including ``tN``.

        The last pose is at the last multiple of ``1/fps`` that does not pass ``tN`` (``tN``
        itself when the duration is a whole number of frames).

        Args:
            fps: Frame rate in frames per second, positive.

        Returns:
            A trajectory of ``floor(duration * fps) + 1`` poses.
        """
        fps = _check_fps(fps)
        count = int(math.floor(self.duration * fps + 1e-9)) + 1
        times = self.timestamps[0] + np.arange(count, dtype=np.float64) / fps
        return self.interpolate(np.minimum(times, self.timestamps[-1]))

    def relative_to(self, reference: Pose) -> Trajectory:
        """Every pose expressed in ``reference``'s camera frame (``reference.inverse() @ pose``)."""
        inverse = reference.inverse()
        positions = inverse.transform_points(self.positions)
        rotations = inverse.rotation * self.rotations
        return Trajectory(positions, rotations, self.timestamps)


def _check_fps(fps: float) -> float:
    """Return ``fps`` as a positive finite ``float`` or raise :class:`InvalidPoseError`."""
    value = float(fps)
    if not math.isfinite(value) or value <= 0.0:
        raise InvalidPoseError(
            f"fps must be a positive finite frame rate, got {fps!r}; pass frames per second."
        )
    return value


# --- batched conversions ----------------------------------------------------------------------
def _as_wxyz(wxyz: ArrayLike, name: str) -> np.ndarray:
    """``wxyz`` (numpy-quaternions ``(...,)`` or floats ``(..., 4)``) as float64 ``(..., 4)``."""
    arr = np.asarray(wxyz)
    if arr.dtype == np.quaternion:
        arr = quaternion.as_float_array(arr)
    if arr.ndim == 0 or arr.shape[-1] != 4:
        raise ShapeMismatchError(
            f"{name} must have shape (..., 4) ordered (w, x, y, z) (or be a numpy-quaternion "
            f"array), got shape {arr.shape}; put the quaternion components on the last axis."
        )
    return arr.astype(np.float64, copy=False)


def quaternions_to_matrices(wxyz: ArrayLike) -> np.ndarray:
    """Rotation matrices of a batch of quaternions.

    Args:
        wxyz: Quaternions, shape ``(..., 4)`` ordered ``(w, x, y, z)`` (or a numpy-quaternion array
            ``(...,)``); any non-zero norm, they are normalised first.

    Returns:
        Shape ``(..., 3, 3)`` float64. For camera-to-world rotations the columns are the camera
        axes (x right, y down, z forward) in the world; equals ``quaternion.as_rotation_matrix``.

    Raises:
        ShapeMismatchError: If the last axis does not hold 4 components.
        InvalidPoseError: If a quaternion is zero or holds NaN/inf.

    Example::

        quaternions_to_matrices([[1, 0, 0, 0]])  # (1, 3, 3) identity
    """
    q = _normalised(_as_wxyz(wxyz, "wxyz"), "wxyz")
    return _fill_rotations(q, np.empty((*q.shape[:-1], 3, 3)))


def _fill_rotations(q: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Write the rotation matrices of unit quaternions ``q`` ``(..., 4)`` into ``m[..., :3, :3]``.

    Returns ``m`` (filled in place, so a ``(..., 4, 4)`` pose array needs no second copy).
    """
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    m[..., 0, 0] = 1.0 - 2.0 * (y * y + z * z)
    m[..., 0, 1] = 2.0 * (x * y - w * z)
    m[..., 0, 2] = 2.0 * (x * z + w * y)
    m[..., 1, 0] = 2.0 * (x * y + w * z)
    m[..., 1, 1] = 1.0 - 2.0 * (x * x + z * z)
    m[..., 1, 2] = 2.0 * (y * z - w * x)
    m[..., 2, 0] = 2.0 * (x * z - w * y)
    m[..., 2, 1] = 2.0 * (y * z + w * x)
    m[..., 2, 2] = 1.0 - 2.0 * (x * x + y * y)
    return m


def poses_to_matrices(positions: ArrayLike, wxyz: ArrayLike) -> np.ndarray:
    """Camera-to-world homogeneous transforms of a batch of poses.

    Args:
        positions: Camera centres, shape ``(..., 3)`` metres (ENU).
        wxyz: Camera-to-world rotations, shape ``(..., 4)`` ordered ``(w, x, y, z)`` with the
            same leading shape (normalised first, as in :func:`quaternions_to_matrices`).

    Returns:
        Shape ``(..., 4, 4)`` float64; pose ``i`` equals ``Pose(positions[i], wxyz[i]).matrix``.

    Raises:
        ShapeMismatchError: If the shapes are not ``(..., 3)`` and ``(..., 4)`` with one leading
            shape.
        InvalidPoseError: If a quaternion is zero or a value is NaN/inf.
    """
    p = np.asarray(positions, dtype=np.float64)
    q = _as_wxyz(wxyz, "wxyz")
    if p.shape != q.shape[:-1] + (3,):
        raise ShapeMismatchError(
            f"positions must have shape {q.shape[:-1] + (3,)} to match wxyz of shape {q.shape}, "
            f"got shape {p.shape}; pass one xyz position per quaternion."
        )
    if not np.all(np.isfinite(p)):
        raise InvalidPoseError(
            "positions must be finite, got NaN/inf; check the source of the poses."
        )
    m = np.zeros((*p.shape[:-1], 4, 4))
    _fill_rotations(_normalised(q, "wxyz"), m)
    m[..., :3, 3] = p
    m[..., 3, 3] = 1.0
    return m


def rotation_matrix_column(wxyz: np.ndarray, column: int) -> np.ndarray:
    """One column of the rotation matrices of unit quaternions, without building the matrices.

    For camera-to-world rotations, column ``c`` is the world direction of camera axis ``c``
    (0 right, 1 down, 2 the optical axis). Meant for bulk use (every view of a database), so the
    quaternions are taken as unit (they come normalised from a :class:`Pose` or a CityDB) and the
    float dtype is kept: float32 in, float32 out.

    Args:
        wxyz: Unit quaternions, shape ``(..., 4)`` ordered ``(w, x, y, z)``, float (a transposed
            component-major ``(4, N)`` array works without a copy).
        column: 0, 1 or 2.

    Returns:
        Shape ``(..., 3)``, the dtype of ``wxyz`` (float64 for integer input).

    Raises:
        ShapeMismatchError: If the last axis does not hold 4 components.
        ValueError: If ``column`` is not 0, 1 or 2.
    """
    q = np.asarray(wxyz)
    if q.ndim == 0 or q.shape[-1] != 4:
        raise ShapeMismatchError(
            f"wxyz must have shape (..., 4) ordered (w, x, y, z), got shape {q.shape}; put the "
            "quaternion components on the last axis."
        )
    if column not in (0, 1, 2):
        raise ValueError(f"column must be 0, 1 or 2 (camera x, y, z), got {column!r}.")
    if not np.issubdtype(q.dtype, np.floating):
        q = q.astype(np.float64)
    w, x, y, z = np.moveaxis(q, -1, 0)
    out = np.empty((*q.shape[:-1], 3), dtype=q.dtype)
    if column == 0:
        out[..., 0] = 1.0 - 2.0 * (y * y + z * z)
        out[..., 1] = 2.0 * (x * y + w * z)
        out[..., 2] = 2.0 * (x * z - w * y)
    elif column == 1:
        out[..., 0] = 2.0 * (x * y - w * z)
        out[..., 1] = 1.0 - 2.0 * (x * x + z * z)
        out[..., 2] = 2.0 * (y * z + w * x)
    else:
        out[..., 0] = 2.0 * (x * z + w * y)
        out[..., 1] = 2.0 * (y * z - w * x)
        out[..., 2] = 1.0 - 2.0 * (x * x + y * y)
    return out


_LEVEL_NORTH_WXYZ = quaternion.as_float_array(Pose.from_heading(np.zeros(3), 0.0).rotation)


def heading_quaternions(heading_deg: ArrayLike) -> np.ndarray:
    """Camera-to-world rotations of level cameras (pitch 0, roll 0) along compass headings.

    Row ``i`` is the rotation of ``Pose.from_heading(p, heading_deg[i])``, in closed form: the
    heading-0 rotation (optical axis north) turned by ``-heading`` about world up (a compass
    heading is clockwise, a rotation about up counter-clockwise).

    Args:
        heading_deg: Compass headings, degrees clockwise from north, shape ``(N,)``.

    Returns:
        Unit quaternions, shape ``(N, 4)`` float64 ``(w, x, y, z)``.

    Raises:
        InvalidPoseError: If a heading is not finite.
    """
    heading = np.asarray(heading_deg, dtype=np.float64)
    if not np.all(np.isfinite(heading)):
        raise InvalidPoseError(
            "heading_deg must be finite degrees, got NaN/inf; check the source of the headings."
        )
    b = _LEVEL_NORTH_WXYZ
    half = -np.radians(heading) / 2.0
    cw, cz = np.cos(half), np.sin(half)  # the turn about up: (cos, 0, 0, sin)
    return np.stack(  # Hamilton product turn * base
        [
            cw * b[0] - cz * b[3],
            cw * b[1] - cz * b[2],
            cw * b[2] + cz * b[1],
            cw * b[3] + cz * b[0],
        ],
        axis=-1,
    )


def _quaternion_products_to_matrix() -> np.ndarray:
    """Build :data:`QUATERNION_PRODUCTS_TO_MATRIX` from the rotation-matrix formula."""
    w, x, y, z = range(4)
    entries = {  # matrix entry (i, j) -> {(a, b): coefficient of q_a q_b}
        # the diagonal uses w^2 + x^2 + y^2 + z^2 = 1: 1 - 2(y^2 + z^2) = w^2 + x^2 - y^2 - z^2
        (0, 0): {(w, w): 1, (x, x): 1, (y, y): -1, (z, z): -1},
        (0, 1): {(x, y): 1, (y, x): 1, (w, z): -1, (z, w): -1},
        (0, 2): {(x, z): 1, (z, x): 1, (w, y): 1, (y, w): 1},
        (1, 0): {(x, y): 1, (y, x): 1, (w, z): 1, (z, w): 1},
        (1, 1): {(w, w): 1, (x, x): -1, (y, y): 1, (z, z): -1},
        (1, 2): {(y, z): 1, (z, y): 1, (w, x): -1, (x, w): -1},
        (2, 0): {(x, z): 1, (z, x): 1, (w, y): -1, (y, w): -1},
        (2, 1): {(y, z): 1, (z, y): 1, (w, x): 1, (x, w): 1},
        (2, 2): {(w, w): 1, (x, x): -1, (y, y): -1, (z, z): 1},
    }
    table = np.zeros((16, 20))
    for (i, j), terms in entries.items():
        for (a, b), coefficient in terms.items():
            table[4 * i + j, 4 * a + b] = coefficient
    for axis in range(3):
        table[4 * axis + 3, 16 + axis] = 1.0  # translation column <- position
    table[15, 19] = 1.0  # homogeneous 1 <- the constant feature
    return _readonly(table)


QUATERNION_PRODUCTS_TO_MATRIX = _quaternion_products_to_matrix()
"""``(16, 20)`` read-only: times :func:`quaternion_product_features` ``(20, N)``, the flattened
(row-major, entry ``(i, j)`` at row ``4 i + j``) camera-to-world ``4 x 4`` matrices ``(16, N)``.

For a unit quaternion every rotation-matrix entry is a linear combination of the 16 products
``q_a q_b``, and the pose matrix is linear in those, the position and 1. So any linear map of the
flattened matrices, ``A (k, 16)``, folds into one constant ``A @ QUATERNION_PRODUCTS_TO_MATRIX``
and a batch of poses goes to matrices and to linear functions of them in one matmul (retrieval's
stage 1 lays out a chunk this way)."""


def quaternion_product_features(wxyz: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The features that :data:`QUATERNION_PRODUCTS_TO_MATRIX` maps to pose matrices.

    Runs once per retrieval query on a few dozen poses, so it does no normalisation and no value
    check: pass unit quaternions (a :class:`Trajectory`'s ``wxyz`` are).

    Args:
        wxyz: Unit camera-to-world quaternions, shape ``(N, 4)`` float64 ``(w, x, y, z)``.
        positions: Camera centres, shape ``(N, 3)`` float64.

    Returns:
        Shape ``(20, N)`` float64: rows ``4 a + b`` hold ``q_a q_b`` (all 16 ordered products of
        ``w, x, y, z``), rows 16-18 ``x, y, z`` of the position, row 19 ones.

    Raises:
        ShapeMismatchError: If the shapes are not ``(N, 4)`` and ``(N, 3)``.

    Example::

        flat = QUATERNION_PRODUCTS_TO_MATRIX @ quaternion_product_features(t.wxyz, t.positions)
        matrices = flat.T.reshape(-1, 4, 4)  # == t.matrices
    """
    n = wxyz.shape[0]
    if wxyz.shape != (n, 4) or positions.shape != (n, 3):
        raise ShapeMismatchError(
            f"wxyz and positions must have shapes (N, 4) and (N, 3), got {wxyz.shape} and "
            f"{positions.shape}; pass one unit quaternion and one position per pose."
        )
    q = wxyz.T  # (4, N) rows w, x, y, z
    features = np.empty((20, n))
    np.multiply(q[:, None], q[None, :], out=features[:16].reshape(4, 4, n))
    features[16:19] = positions.T
    features[19] = 1.0
    return features
