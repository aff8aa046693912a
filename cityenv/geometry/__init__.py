"""cityenv.geometry: geodesy, poses, cameras, panoramas, Plücker rays and forward splatting.

Pure functions and small value types, no I/O. Conventions (``../shared/DESIGN.md``): a city's ENU
frame (x east, y north, z up, metres), OpenCV cameras (x right, y down, z forward), camera-to-world
poses, (w, x, y, z) quaternions, metric z-depth with 0 = none.

Names are imported on first use (PEP 562), so code that needs only poses and cameras (the town's
render workers, say) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cityenv._lazy import lazy_namespace

if TYPE_CHECKING:
    from cityenv.geometry.camera import PinholeCamera
    from cityenv.geometry.geodesy import (
        LocalFrame,
        ecef_to_geodetic,
        geodetic_to_ecef,
        heading_to_yaw,
        yaw_to_heading,
    )
    from cityenv.geometry.panorama import PinholeView, equirect_to_pinholes, view_rotation
    from cityenv.geometry.pose import (
        QUATERNION_PRODUCTS_TO_MATRIX,
        Pose,
        Trajectory,
        heading_quaternions,
        poses_to_matrices,
        quaternion_product_features,
        quaternions_to_matrices,
        rotation_matrix_column,
    )
    from cityenv.geometry.rays import plucker_rays
    from cityenv.geometry.splat import coverage, forward_splat, unproject

_HOMES = {
    "PinholeCamera": "camera",
    "LocalFrame": "geodesy",
    "ecef_to_geodetic": "geodesy",
    "geodetic_to_ecef": "geodesy",
    "heading_to_yaw": "geodesy",
    "yaw_to_heading": "geodesy",
    "PinholeView": "panorama",
    "equirect_to_pinholes": "panorama",
    "view_rotation": "panorama",
    "Pose": "pose",
    "Trajectory": "pose",
    "QUATERNION_PRODUCTS_TO_MATRIX": "pose",
    "heading_quaternions": "pose",
    "poses_to_matrices": "pose",
    "quaternion_product_features": "pose",
    "quaternions_to_matrices": "pose",
    "rotation_matrix_column": "pose",
    "plucker_rays": "rays",
    "coverage": "splat",
    "forward_splat": "splat",
    "unproject": "splat",
}
__all__ = [
    "QUATERNION_PRODUCTS_TO_MATRIX",
    "LocalFrame",
    "PinholeCamera",
    "PinholeView",
    "Pose",
    "Trajectory",
    "coverage",
    "ecef_to_geodetic",
    "equirect_to_pinholes",
    "forward_splat",
    "geodetic_to_ecef",
    "heading_quaternions",
    "heading_to_yaw",
    "plucker_rays",
    "poses_to_matrices",
    "quaternion_product_features",
    "quaternions_to_matrices",
    "rotation_matrix_column",
    "unproject",
    "view_rotation",
    "yaw_to_heading",
]


__getattr__, __dir__ = lazy_namespace(__name__, _HOMES, __all__)
