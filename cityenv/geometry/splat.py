"""Depth unprojection, forward splatting with a z-buffer, and reprojection coverage.

Frames and conventions: poses are camera-to-world 4x4 transforms (city ENU world frame, OpenCV
camera frame: x right, y down, z forward); depth is metric z-depth along the camera z axis, 0 means
"no depth". Integer pixel ``(u, v)`` has its centre at continuous coordinates
``(u + 0.5, v + 0.5)``; a source pixel splats to the destination pixel that contains its
projection (the floor of the continuous coordinate), and when several land on one destination
pixel the nearest one wins.

Every function takes numpy arrays or torch tensors. :func:`forward_splat` and :func:`unproject`
answer in the kind they were given and run one torch implementation: numpy inputs are wrapped
without copying and tensors stay on their device (CPU or CUDA). :func:`coverage`, a small CPU-side
filter for retrieval, runs in numpy (faster than torch at its typical 16 x 64 x 64 size). Pose
algebra (a few 4x4 matrices) is numpy float64 throughout. There is no Python loop over pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cityenv.errors import InvalidDepthError, ShapeMismatchError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose, Trajectory

__all__ = ["coverage", "forward_splat", "unproject"]

PoseLike = Pose | Trajectory | Sequence[Pose] | np.ndarray | torch.Tensor
ArrayOrTensor = np.ndarray | torch.Tensor

_EMPTY_HIGH = 0x7FFFFFFF  # high half of an empty z-buffer key: above any finite float32's bits
_MIN_Z = 1e-6  # destination z-depth (metres) at or below which a point is behind the camera


# --- input conversion and validation ------------------------------------------------------------
def _as_tensor(x: ArrayOrTensor) -> torch.Tensor:
    """Wrap a numpy array (no copy when contiguous) or pass a tensor through."""
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def _pose_matrices(pose: PoseLike, name: str) -> np.ndarray:
    """Camera-to-world matrices of ``pose``, float64 ``(4, 4)`` or ``(B, 4, 4)``.

    Args:
        pose: A :class:`Pose`, a :class:`Trajectory` or sequence of poses (a batch), or an array /
            tensor of shape ``(4, 4)`` or ``(B, 4, 4)``.
        name: What to call the argument in the error message.

    Raises:
        ShapeMismatchError: If the matrices are not ``(4, 4)`` or ``(B, 4, 4)``.
    """
    if isinstance(pose, Pose):
        matrix = pose.matrix
    elif isinstance(pose, Trajectory):
        matrix = pose.matrices
    elif isinstance(pose, Sequence) and pose and all(isinstance(p, Pose) for p in pose):
        matrix = np.stack([p.matrix for p in pose])
    elif isinstance(pose, torch.Tensor):
        matrix = pose.detach().cpu().numpy()
    else:
        matrix = np.asarray(pose)
    if matrix.ndim not in (2, 3) or matrix.shape[-2:] != (4, 4):
        raise ShapeMismatchError(
            f"{name} must be a Pose or camera-to-world matrices of shape (4, 4) or (B, 4, 4), got "
            f"shape {matrix.shape}; pass Pose.matrix or Trajectory.matrices."
        )
    return matrix.astype(np.float64, copy=False)


def _batch_pose(pose: PoseLike, name: str, bsz: int) -> np.ndarray:
    """Pose matrices ``(4, 4)`` / ``(B, 4, 4)`` checked against the depth's batch size ``bsz``.

    Raises:
        ShapeMismatchError: If a batch of poses does not have ``bsz`` (or 1) poses.
    """
    m = _pose_matrices(pose, name)
    if m.ndim == 3 and m.shape[0] not in (1, bsz):
        raise ShapeMismatchError(
            f"{name} must be one pose or a batch of {bsz} (one per depth map), got {m.shape[0]} "
            "poses; pass one camera-to-world matrix per source view."
        )
    return m


def _depth_tensor(
    depth: ArrayOrTensor, camera: PinholeCamera, device: torch.device | None = None
) -> torch.Tensor:
    """Validate a z-depth map against ``camera``; return it as a float tensor ``(..., H, W)``.

    Integer depth becomes float32; the tensor moves to ``device`` if one is given.

    Raises:
        ShapeMismatchError: If the last two dimensions are not the camera's ``(H, W)``.
        InvalidDepthError: If any value is negative or not finite.
    """
    d = _as_tensor(depth).to(device=device)
    if d.ndim < 2 or tuple(d.shape[-2:]) != (camera.height, camera.width):
        raise ShapeMismatchError(
            f"depth must have shape (..., H, W) = (..., {camera.height}, {camera.width}) to match "
            f"the source camera, got shape {tuple(d.shape)}; resize the depth or pass "
            "camera.rescaled(width, height)."
        )
    if not d.is_floating_point():
        d = d.to(torch.float32)
    if d.numel():
        low, high = torch.aminmax(d)  # NaN propagates into both, and fails both tests below
        if not (bool(low >= 0) and bool(high < torch.inf)):
            raise InvalidDepthError(
                f"depth must be finite and >= 0 (metric z-depth, 0 = none), got values in "
                f"[{float(low)}, {float(high)}]; replace missing or invalid depth with 0."
            )
    return d


def _batched_depth(
    depth: ArrayOrTensor, camera: PinholeCamera, device: torch.device | None = None
) -> tuple[torch.Tensor, bool]:
    """Validated depth as ``(B, H, W)`` and whether the caller passed a batch.

    Raises:
        ShapeMismatchError: If the depth is neither ``(H, W)`` nor ``(B, H, W)``.
    """
    d = _depth_tensor(depth, camera, device)
    if d.ndim not in (2, 3):
        raise ShapeMismatchError(
            f"depth must have shape (H, W) or (B, H, W), got shape {tuple(d.shape)}; flatten "
            "extra batch dimensions into B."
        )
    return (d, True) if d.ndim == 3 else (d[None], False)


def _check_image(image: ArrayOrTensor, depth_shape: tuple[int, ...]) -> None:
    """Raise unless ``image`` is ``depth_shape + (C,)`` or ``depth_shape``."""
    shape = tuple(image.shape)
    if shape[: len(depth_shape)] != depth_shape or len(shape) > len(depth_shape) + 1:
        raise ShapeMismatchError(
            f"image must have shape {depth_shape + ('C',)} (the depth's shape plus channels), got "
            f"shape {shape}; pass the depth map that belongs to this image, at its resolution."
        )


# --- the projection kernel ----------------------------------------------------------------------
def _rigid_inverse(m: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms ``(..., 4, 4)``: ``[R^T, -R^T t]``."""
    rt = np.swapaxes(m[..., :3, :3], -1, -2)
    inv = np.zeros_like(m)
    inv[..., :3, :3] = rt
    inv[..., :3, 3] = -(rt @ m[..., :3, 3:])[..., 0]
    inv[..., 3, 3] = 1.0
    return inv


def _relative_projection(
    src_camera: PinholeCamera,
    src_pose: np.ndarray,
    dst_camera: PinholeCamera,
    dst_pose: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Map from source pixels with depth to *padded* destination homogeneous pixels.

    A source pixel with continuous coordinates ``(x, y)`` and z-depth ``z`` lands at homogeneous
    coordinates ``q = z * A @ (x, y, 1) + b`` of the destination image padded by a one-pixel
    border (its principal point shifted by ``(+1, +1)``); ``q[2]`` is its destination z-depth.

    Args:
        src_camera: Source intrinsics.
        src_pose: Source camera-to-world, float64 ``(4, 4)`` or ``(B, 4, 4)``.
        dst_camera: Destination intrinsics.
        dst_pose: Destination camera-to-world, float64 ``(4, 4)`` or ``(B, 4, 4)``.

    Returns:
        ``A`` of shape ``(B', 3, 3)`` and ``b`` of shape ``(B', 3)``, float64, ``B'`` the broadcast
        batch size (1 when both poses are single).
    """
    k_dst = dst_camera.K  # a fresh array: safe to shift in place
    k_dst[:2, 2] += 1.0  # the border column / row sits at 0, the image starts at 1
    rel = (_rigid_inverse(dst_pose) @ src_pose).reshape(-1, 4, 4)  # source -> destination camera
    a = k_dst @ rel[:, :3, :3] @ np.linalg.inv(src_camera.K)
    b = (k_dst @ rel[:, :3, 3:])[..., 0]
    return a, b


def _homogeneous(depth: torch.Tensor, a: np.ndarray, b: np.ndarray) -> torch.Tensor:
    """``q = depth * A @ (x, y, 1) + b`` for every source pixel centre ``(x, y)``.

    Args:
        depth: Source z-depth, float32 ``(B, H, W)``.
        a: ``(B, 3, 3)`` or ``(1, 3, 3)`` from :func:`_relative_projection`.
        b: ``(B, 3)`` or ``(1, 3)`` from :func:`_relative_projection`.

    Returns:
        Padded destination homogeneous coordinates, float32 ``(B, 3, H, W)``.
    """
    _, height, width = depth.shape
    a, b = (torch.from_numpy(m).to(depth) for m in (a, b))
    cols = torch.arange(width, dtype=depth.dtype, device=depth.device) + 0.5
    rows = torch.arange(height, dtype=depth.dtype, device=depth.device) + 0.5
    # A @ (x, y, 1) is separable: a column term plus a row term, one add per pixel.
    col_term = a[:, :, 0, None] * cols  # (B, 3, W)
    row_term = a[:, :, 1, None] * rows + a[:, :, 2, None]  # (B, 3, H)
    q = col_term[:, :, None, :] + row_term[:, :, :, None]  # (B, 3, H, W)
    return q.mul_(depth[:, None]).add_(b[:, :, None, None])


def _project(
    depth: torch.Tensor, a: np.ndarray, b: np.ndarray, dst_camera: PinholeCamera
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project every source pixel into the destination image, padded by a one-pixel border.

    Everything that does not land inside the destination image (no depth, behind the camera,
    outside the frame) is clamped into the border, so no mask is needed: the caller crops the
    border away after scattering. This keeps the per-pixel work to a few in-place float operations.

    Args:
        depth: Source z-depth, shape ``(B, H, W)``, float.
        a: ``(B, 3, 3)`` or ``(1, 3, 3)`` from :func:`_relative_projection`.
        b: ``(B, 3)`` or ``(1, 3)`` from :func:`_relative_projection`.
        dst_camera: Destination intrinsics, image ``(h, w)``.

    Returns:
        ``slot`` int64 ``(B * H * W,)``: the flat index ``batch * (h + 2) * (w + 2) + (row + 1) *
        (w + 2) + (col + 1)`` of the padded destination pixel each source pixel lands in, and ``z``
        float32 ``(B, H, W)``, its destination z-depth (meaningless where it lands in the border).
    """
    bsz = depth.shape[0]
    h, w = dst_camera.height, dst_camera.width
    depth = depth.to(torch.float32)
    q = _homogeneous(depth, a, b)
    x, y, z = q.unbind(1)
    # NaN marks "splat nowhere"; nan_to_num sends it to the border, clamp sends the rest there.
    inv_z = torch.where((depth > 0) & (z > _MIN_Z), z.reciprocal(), torch.nan)
    col = x.mul_(inv_z).nan_to_num_(nan=0.0).clamp_(0.0, w + 1.0).floor_()
    row = y.mul_(inv_z).nan_to_num_(nan=0.0).clamp_(0.0, h + 1.0).floor_()
    if bsz * (h + 2) * (w + 2) > 2**24:  # float32 holds integers exactly only below 2**24
        col, row = col.double(), row.double()
    slot = torch.add(col, row, alpha=w + 2)
    if bsz > 1:
        offsets = torch.arange(bsz, dtype=slot.dtype, device=slot.device) * ((h + 2) * (w + 2))
        slot += offsets[:, None, None]
    return slot.reshape(-1).to(torch.int64), z


def _interior(padded: torch.Tensor, bsz: int, dst_camera: PinholeCamera) -> torch.Tensor:
    """Crop the border off flat padded slots: ``(B * (h + 2) * (w + 2),)`` -> ``(B, h, w)``."""
    h, w = dst_camera.height, dst_camera.width
    return padded.view(bsz, h + 2, w + 2)[:, 1:-1, 1:-1]


def _zbuffer(
    slot: torch.Tensor, z: torch.Tensor, bsz: int, dst_camera: PinholeCamera
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest source pixel per destination pixel, in one ``scatter_reduce`` (no sort).

    Each source pixel gets an int64 key ``float32_bits(z) << 32 | index``: positive float32 bit
    patterns order like the floats, so the minimum key per pixel is the nearest surface (ties go to
    the lower source index, which makes the result deterministic on every device). Pixels nothing
    reached keep the key ``_EMPTY_HIGH << 32 | N``, which decodes to ``N``: one past the last
    source pixel, where the caller puts a zero pixel.

    Args:
        slot: Padded destination slot per source pixel, int64 ``(N,)`` (see :func:`_project`).
        z: Destination z-depth per source pixel, float32 ``(B, H, W)`` (positive and finite where
            the slot is inside the image).
        bsz: Batch size ``B``.
        dst_camera: Destination intrinsics, image ``(h, w)``.

    Returns:
        ``src`` int32 ``(B, h, w)``: the winning source index, ``N`` where none, and ``hit`` bool
        ``(B, h, w)``: whether any source pixel landed there.
    """
    n = slot.numel()
    if n >= 2**31:
        raise ShapeMismatchError(
            f"forward_splat handles fewer than 2**31 source pixels per call, got {n}; split the "
            "batch."
        )
    empty = (_EMPTY_HIGH << 32) | n
    key = z.contiguous().view(torch.int32).reshape(-1).to(torch.int64)
    key.bitwise_left_shift_(32).add_(torch.arange(n, device=slot.device))
    padded = (bsz * (dst_camera.height + 2) * (dst_camera.width + 2),)
    best = torch.full(padded, empty, dtype=torch.int64, device=slot.device)
    best.scatter_reduce_(0, slot, key, reduce="amin", include_self=True)
    best = _interior(best, bsz, dst_camera)
    # int64 -> int32 keeps the low 32 bits (two's complement wrap-around on CPU and CUDA).
    src = best.to(torch.int32)
    return src, src != n


def _gather(image: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Source pixels at ``src``, where index ``N`` (one past the end) reads as zero.

    Args:
        image: Source pixels flattened to ``(N, C)`` or ``(N,)``, any dtype.
        src: Source index per destination pixel, int ``(M,)``, values in ``[0, N]``.

    Returns:
        ``(M, C)`` or ``(M,)`` of the image's dtype and device.
    """
    padded = torch.cat([image, image.new_zeros((1, *image.shape[1:]))])
    return padded.index_select(0, src.to(image.device))


def _coverage_hits(
    depth: np.ndarray, a: np.ndarray, b: np.ndarray, dst_camera: PinholeCamera
) -> np.ndarray:
    """Count destination pixels hit per batch item (numpy; see :func:`_project` for the maths).

    Args:
        depth: Source z-depth, float32 ``(B, H, W)``.
        a: ``(B, 3, 3)`` or ``(1, 3, 3)`` from :func:`_relative_projection`.
        b: ``(B, 3)`` or ``(1, 3)`` from :func:`_relative_projection`.
        dst_camera: Destination intrinsics, image ``(h, w)``.

    Returns:
        int ``(B,)``: how many destination pixels at least one source pixel lands in.
    """
    bsz, height, width = depth.shape
    h, w = dst_camera.height, dst_camera.width
    a, b = a.astype(np.float32), b.astype(np.float32)
    cols = np.arange(width, dtype=np.float32) + 0.5
    rows = np.arange(height, dtype=np.float32) + 0.5
    col_term = a[:, :, 0, None] * cols  # (B, 3, W), as in _homogeneous
    row_term = a[:, :, 1, None] * rows + a[:, :, 2, None]  # (B, 3, H)
    q = col_term[:, :, None, :] + row_term[:, :, :, None]  # (B, 3, H, W)
    q *= depth[:, None]  # in place throughout: fresh temporaries cost more than the arithmetic
    q += b[:, :, None, None]
    x, y, z = q[:, 0], q[:, 1], q[:, 2]
    index_type = np.int32 if bsz * (h + 2) * (w + 2) < 2**31 else np.int64
    with np.errstate(divide="ignore", invalid="ignore"):
        x /= z
        y /= z
        inside = (depth > 0) & (z > _MIN_Z) & (x >= 1) & (x < w + 1) & (y >= 1) & (y < h + 1)
        slot = y.astype(index_type) * (w + 2)  # garbage where not inside; masked below
        slot += x.astype(index_type)  # truncation is the floor for the x >= 1 kept
    slot += (np.arange(bsz, dtype=index_type) * ((h + 2) * (w + 2)))[:, None, None]
    hit = np.zeros(bsz * (h + 2) * (w + 2), dtype=bool)
    hit[slot[inside]] = True
    return np.count_nonzero(hit.reshape(bsz, h + 2, w + 2), axis=(1, 2))


# --- public API ---------------------------------------------------------------------------------
def unproject(
    depth: ArrayOrTensor, camera: PinholeCamera, pose: PoseLike | None = None
) -> ArrayOrTensor:
    """Lift a z-depth map to 3D points, one per pixel centre.

    Args:
        depth: Metric z-depth, shape ``(..., H, W)`` (``(H, W)`` = the camera's), numpy or torch.
            Pixels with depth 0 map to the camera centre; mask them with ``depth > 0``.
        camera: Intrinsics of the depth map.
        pose: Camera-to-world transform: a :class:`Pose`, ``(4, 4)``, or ``(..., 4, 4)`` matching
            the depth's leading dimensions. ``None`` keeps the points in the camera frame.

    Returns:
        Points of shape ``(..., H, W, 3)``: world frame (camera frame if ``pose`` is ``None``), of
        the depth's type and device; float dtype of the depth (float32 for integer depth).

    Raises:
        ShapeMismatchError: If the depth does not match the camera or the pose's batch shape.
        InvalidDepthError: If the depth has negative or non-finite values.
    """
    d = _depth_tensor(depth, camera)
    rays = torch.from_numpy(camera.pixel_rays()).to(device=d.device, dtype=d.dtype)
    points = d[..., None] * rays
    if pose is not None:
        m = torch.from_numpy(_pose_matrices(pose, "pose")).to(d)
        if m.ndim == 3 and tuple(m.shape[:-2]) != tuple(d.shape[:-2]):
            raise ShapeMismatchError(
                f"pose must be (4, 4) or have the depth's leading shape {tuple(d.shape[:-2])} + "
                f"(4, 4), got {tuple(m.shape)}; pass one pose per depth map."
            )
        rot = m[..., None, :3, :3].transpose(-1, -2)  # (..., 1, 3, 3) broadcasts over rows
        points = points @ rot + m[..., None, None, :3, 3]
    return points if isinstance(depth, torch.Tensor) else points.numpy()


def forward_splat(
    image: ArrayOrTensor,
    depth: ArrayOrTensor,
    src_camera: PinholeCamera,
    src_pose: PoseLike,
    dst_camera: PinholeCamera,
    dst_pose: PoseLike,
) -> tuple[ArrayOrTensor, ArrayOrTensor]:
    """Forward-warp a source image into a destination camera using its depth, with a z-buffer.

    Every source pixel with depth > 0 is moved to 3D, projected into the destination camera and
    written to the destination pixel that contains its projection; where several land on one
    pixel the nearest (smallest destination z-depth) wins. Pixels nothing lands on stay 0.

    Args:
        image: Source image ``(H, W, C)`` / ``(H, W)``, or a batch ``(B, H, W, C)`` / ``(B, H, W)``;
            numpy or torch, any dtype, CPU or CUDA.
        depth: Source metric z-depth ``(H, W)`` or ``(B, H, W)``; 0 means no depth (not splatted).
        src_camera: Source intrinsics (image ``(H, W)``).
        src_pose: Source camera-to-world: :class:`Pose`, ``(4, 4)`` or ``(B, 4, 4)``.
        dst_camera: Destination intrinsics (image ``(h, w)``).
        dst_pose: Destination camera-to-world: :class:`Pose`, ``(4, 4)`` or ``(B, 4, 4)``.

    Returns:
        ``(warped, valid)``: ``warped`` of shape ``(h, w, C)`` / ``(B, h, w, C)`` (no ``C`` if the
        image had none), of the image's type, dtype and device; ``valid`` bool ``(h, w)`` /
        ``(B, h, w)``, True where some source pixel landed.

    Raises:
        ShapeMismatchError: If image, depth, camera and poses disagree in shape.
        InvalidDepthError: If the depth has negative or non-finite values.
    """
    device = image.device if isinstance(image, torch.Tensor) else None
    d, batched = _batched_depth(depth, src_camera, device)
    _check_image(image, tuple(d.shape) if batched else tuple(d.shape[1:]))
    bsz = d.shape[0]
    src_m, dst_m = _batch_pose(src_pose, "src_pose", bsz), _batch_pose(dst_pose, "dst_pose", bsz)
    slot, z = _project(d, *_relative_projection(src_camera, src_m, dst_camera, dst_m), dst_camera)
    src, hit = _zbuffer(slot, z, bsz, dst_camera)
    channels = tuple(image.shape[d.ndim - (not batched) :])
    pixels = _as_tensor(image).to(d.device).reshape((-1, *channels))
    warped = _gather(pixels, src.reshape(-1)).reshape(src.shape + channels)
    if not batched:
        warped, hit = warped[0], hit[0]
    if isinstance(image, torch.Tensor):
        return warped, hit
    return warped.cpu().numpy(), hit.cpu().numpy()


def coverage(
    depth: ArrayOrTensor,
    src_camera: PinholeCamera,
    src_pose: PoseLike,
    dst_camera: PinholeCamera,
    dst_pose: PoseLike,
) -> float | np.ndarray:
    """Fraction of destination pixels that a source view's depth reprojects onto.

    A destination pixel counts as covered when at least one source pixel with depth > 0 lands in
    it in front of the destination camera. There is no z-buffer (which surface lands does not
    matter), so this is cheap enough to filter retrieval candidates in bulk.

    Args:
        depth: Source metric z-depth ``(H, W)`` or a batch of candidates ``(B, H, W)``.
        src_camera: Source intrinsics (image ``(H, W)``; rescale it to the depth's size).
        src_pose: Source camera-to-world: :class:`Pose`, ``(4, 4)`` or ``(B, 4, 4)``.
        dst_camera: Destination intrinsics (image ``(h, w)``).
        dst_pose: The one destination camera-to-world: :class:`Pose` or ``(4, 4)`` (a ``(B, 4, 4)``
            batch is accepted too).

    Returns:
        The covered fraction in ``[0, 1]``: a float for one depth map, a float64 array ``(B,)`` for
        a batch.

    Raises:
        ShapeMismatchError: If the depth, camera and poses disagree in shape.
        InvalidDepthError: If the depth has negative or non-finite values.
    """
    d, batched = _batched_depth(depth, src_camera)
    bsz = d.shape[0]
    src_m, dst_m = _batch_pose(src_pose, "src_pose", bsz), _batch_pose(dst_pose, "dst_pose", bsz)
    a, b = _relative_projection(src_camera, src_m, dst_camera, dst_m)
    hits = _coverage_hits(d.cpu().numpy().astype(np.float32, copy=False), a, b, dst_camera)
    fraction = hits / (dst_camera.height * dst_camera.width)
    return fraction if batched else float(fraction[0])
