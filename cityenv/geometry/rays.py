"""Plücker ray embeddings of pinhole cameras.

Each pixel's ray is the pair ``(o x d, d)``: ``d`` the unit direction through the pixel centre and
``o`` the camera centre, both expressed in a reference frame (the world frame, or the camera frame
of a reference pose such as the first frame of a chunk). The moment ``o x d`` does not depend on
which point of the ray plays ``o``, so the six numbers identify the line itself.
"""

from __future__ import annotations

import numpy as np
import torch

from cityenv.errors import ShapeMismatchError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.splat import PoseLike, _pose_matrices, _rigid_inverse

__all__ = ["plucker_rays"]


def _relative_poses(pose: PoseLike, reference_pose: PoseLike | None) -> np.ndarray:
    """Camera-to-reference matrices ``(4, 4)`` / ``(B, 4, 4)``: ``reference^-1 @ pose``.

    Raises:
        ShapeMismatchError: If both are batches of different sizes.
    """
    m = _pose_matrices(pose, "pose")
    if reference_pose is None:
        return m
    ref = _pose_matrices(reference_pose, "reference_pose")
    if m.ndim == ref.ndim == 3 and len(m) != len(ref) and 1 not in (len(m), len(ref)):
        raise ShapeMismatchError(
            f"pose and reference_pose batches must have the same size, got {len(m)} and "
            f"{len(ref)}; pass one reference pose (or one per pose)."
        )
    return _rigid_inverse(ref) @ m


def plucker_rays(
    camera: PinholeCamera,
    pose: PoseLike,
    reference_pose: PoseLike | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-pixel Plücker rays of a camera, in a reference frame.

    Args:
        camera: Intrinsics; the output has its resolution (pass ``camera.rescaled(w, h)`` for a
            latent grid).
        pose: Camera-to-world: a :class:`~cityenv.geometry.pose.Pose`, ``(4, 4)``, or a batch
            ``(B, 4, 4)`` (a :class:`~cityenv.geometry.pose.Trajectory` or list of poses too).
        reference_pose: Camera-to-world of the frame to express the rays in (same forms; a batch
            pairs with the poses one to one); ``None`` for the world frame.
        dtype: Floating dtype of the result (computed in float64, then cast).

    Returns:
        CPU tensor ``(6, H, W)``, or ``(B, 6, H, W)`` for a batch: channels ``0:3`` the moment
        ``o x d``, channels ``3:6`` the unit direction ``d``, both in the reference frame.

    Raises:
        ShapeMismatchError: If a pose is not ``(4, 4)``/``(B, 4, 4)`` or the batches disagree.
    """
    rel = _relative_poses(pose, reference_pose)
    rays = camera.pixel_rays()
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)  # (H, W, 3) unit, camera frame
    directions = np.einsum("...ij,hwj->...ihw", rel[..., :3, :3], rays)  # (..., 3, H, W)
    origins = np.broadcast_to(rel[..., :3, 3, None, None], directions.shape)
    moments = np.cross(origins, directions, axis=-3)
    return torch.from_numpy(np.concatenate([moments, directions], axis=-3)).to(dtype)
