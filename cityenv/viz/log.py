"""Rerun logging of cityenv data: one ``log_*`` function per kind of data, fixed entity paths.

Every function takes the :class:`rerun.RecordingStream` to log into (never the global one) and
logs at the time the caller set with :func:`set_time`; the columnar ones (``log_poses``,
``log_images``, ``log_masks``) log a whole chunk in one call at the time columns of
:func:`frame_indexes`. Calibration and the world's axes are logged static. The entity tree::

    world                          ENU axes (x east, y north, z up), static
    world/ego/camera               camera pose (Transform3D), pinhole (static), generated frame
    world/ego/trajectory           the past camera path (LineStrips3D)
    world/route                    the planned route to the goal (LineStrips3D)
    world/references/<k>           reference slot k: pose, pinhole and image (cleared when unused)
    world/references/sink          the lookahead-sink reference
    world/references/depth_points  the nearest reference's depth, unprojected (Points3D)
    warp/image, warp/mask          the geometric-referencing input of the world model
    map/ego, map/trajectory, map/route, map/goal, map/references    geodetic (MapView)
    scalars/<name>                 reward, progress_m, references_used, distance_to_goal

Conventions at the boundary: cityenv quaternions are (w, x, y, z), Rerun wants (x, y, z, w); the
cameras are OpenCV (x right, y down, z forward), Rerun's ``RDF``; the world is right-handed z-up.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import quaternion
import rerun as rr
from PIL import Image

from cityenv.errors import ShapeMismatchError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.geodesy import LocalFrame
from cityenv.geometry.pose import Pose, Trajectory
from cityenv.geometry.splat import unproject
from cityenv.worldmodel.referencing import ReferenceView

__all__ = [
    "CAMERA",
    "DEPTH_POINTS",
    "MAP_EGO",
    "MAP_GOAL",
    "MAP_REFERENCES",
    "MAP_ROUTE",
    "MAP_TRAJECTORY",
    "REFERENCES",
    "ROUTE",
    "SCALARS",
    "SINK",
    "TRAJECTORY",
    "WARP_IMAGE",
    "WARP_MASK",
    "WORLD",
    "assign_slots",
    "clear_reference",
    "decimate",
    "encode_jpeg",
    "frame_indexes",
    "lat_lon",
    "log_calibration",
    "log_geo_line",
    "log_geo_points",
    "log_image",
    "log_images",
    "log_masks",
    "log_path",
    "log_pose",
    "log_poses",
    "log_reference",
    "log_reference_depth",
    "log_references",
    "log_scalars",
    "log_warp",
    "log_world",
    "quaternion_xyzw",
    "reference_path",
    "set_time",
]

WORLD = "world"
CAMERA = "world/ego/camera"
TRAJECTORY = "world/ego/trajectory"
ROUTE = "world/route"
REFERENCES = "world/references"
SINK = "world/references/sink"
DEPTH_POINTS = "world/references/depth_points"
WARP_IMAGE = "warp/image"
WARP_MASK = "warp/mask"
MAP_EGO = "map/ego"
MAP_TRAJECTORY = "map/trajectory"
MAP_ROUTE = "map/route"
MAP_GOAL = "map/goal"
MAP_REFERENCES = "map/references"
SCALARS = "scalars"

EGO_COLOR = (40, 200, 80)
REFERENCE_COLOR = (255, 150, 30)
SINK_COLOR = (200, 60, 220)
ROUTE_COLOR = (60, 140, 255)


def quaternion_xyzw(pose: Pose) -> np.ndarray:
    """A pose's rotation in Rerun's order.

    Args:
        pose: Camera-to-world pose; its quaternion is (w, x, y, z) as numpy-quaternion orders it.

    Returns:
        float64 ``(4,)`` ``(x, y, z, w)``.
    """
    q = pose.rotation
    return np.array([q.x, q.y, q.z, q.w], dtype=np.float64)  # wxyz -> xyzw for Rerun


def reference_path(slot: int) -> str:
    """Entity path of reference slot ``slot`` (``world/references/<slot>``)."""
    return f"{REFERENCES}/{int(slot)}"


def set_time(
    rec: rr.RecordingStream,
    *,
    step: int | None = None,
    frame: int | None = None,
    sim_time: float | None = None,
) -> None:
    """Set the recording's time: the ``step`` and ``frame`` sequences and ``sim_time`` (seconds).

    Args:
        rec: The recording.
        step: Environment step (0 = reset); ``None`` leaves the timeline as it is.
        frame: Index of the generated frame since the first reset; ``None`` leaves it.
        sim_time: Time of the frame in the episode, seconds; ``None`` leaves it.
    """
    if step is not None:
        rec.set_time("step", sequence=int(step))
    if frame is not None:
        rec.set_time("frame", sequence=int(frame))
    if sim_time is not None:
        rec.set_time("sim_time", duration=float(sim_time))


def log_world(rec: rr.RecordingStream) -> None:
    """Log the world's axes, static: ENU is right-handed with z up."""
    rec.log(WORLD, rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)


def log_calibration(
    rec: rr.RecordingStream,
    camera: PinholeCamera,
    path: str = CAMERA,
    *,
    static: bool = True,
    color: Sequence[int] = EGO_COLOR,
    plane_distance: float = 2.0,
) -> None:
    """Log a pinhole camera's intrinsics (its frustum).

    Args:
        rec: The recording.
        camera: The intrinsics (and image size).
        path: Entity of the camera.
        static: Log once for the whole recording (the ego camera) or at the current time (a
            reference slot, whose camera may change).
        color: RGB of the frustum lines.
        plane_distance: Depth of the drawn image plane, metres.
    """
    pinhole = rr.Pinhole(
        image_from_camera=camera.K,
        resolution=[camera.width, camera.height],
        camera_xyz=rr.ViewCoordinates.RDF,  # OpenCV: x right, y down, z forward
        image_plane_distance=plane_distance,
        color=color,
    )
    rec.log(path, pinhole, static=static)


def log_pose(rec: rr.RecordingStream, pose: Pose, path: str = CAMERA) -> None:
    """Log a camera-to-world pose as the entity's transform from its parent (``world``).

    Args:
        rec: The recording.
        pose: Camera-to-world pose (ENU).
        path: Entity of the camera.
    """
    rec.log(path, rr.Transform3D(translation=pose.position, quaternion=quaternion_xyzw(pose)))


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an RGB image, uint8 ``(H, W, 3)`` (Pillow; about 0.4 ms at 256x256)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(
        buffer, format="JPEG", quality=int(quality)
    )
    return buffer.getvalue()


def _check_rgb(images: np.ndarray, ndim: int, path: str) -> None:
    if images.ndim != ndim or images.shape[-1] != 3:
        shape = "(H, W, 3)" if ndim == 3 else "(L, H, W, 3)"
        raise ShapeMismatchError(
            f"images for {path!r} must have shape {shape}, got {images.shape}."
        )


def log_image(
    rec: rr.RecordingStream,
    image: np.ndarray,
    path: str = CAMERA,
    *,
    jpeg_quality: int | None = None,
) -> None:
    """Log an RGB image.

    Args:
        rec: The recording.
        image: uint8 ``(H, W, 3)``.
        path: Entity to log it at.
        jpeg_quality: JPEG-compress with this quality (1-100; about 10x smaller files for about
            0.4 ms per 256x256 frame); ``None`` logs the raw pixels.

    Raises:
        ShapeMismatchError: If ``image`` is not ``(H, W, 3)``.
    """
    image = np.asarray(image)
    _check_rgb(image, 3, path)
    if jpeg_quality is None:
        rec.log(path, rr.Image(np.ascontiguousarray(image, dtype=np.uint8)))
    else:
        jpeg = encode_jpeg(image, jpeg_quality)
        rec.log(path, rr.EncodedImage(contents=jpeg, media_type="image/jpeg"))


def frame_indexes(step: int, first_frame: int, sim_times: np.ndarray) -> list[rr.TimeColumn]:
    """Time columns of ``L`` consecutive frames, for the columnar ``log_*s`` functions.

    Args:
        step: The env step all of them belong to.
        first_frame: ``frame`` index of the first one (the others follow by one).
        sim_times: float ``(L,)`` seconds.

    Returns:
        ``step``, ``frame`` and ``sim_time`` columns of length ``L``.
    """
    n = len(sim_times)
    return [
        rr.TimeColumn("step", sequence=np.full(n, int(step), np.int64)),
        rr.TimeColumn("frame", sequence=int(first_frame) + np.arange(n, dtype=np.int64)),
        rr.TimeColumn("sim_time", duration=np.asarray(sim_times, np.float64)),
    ]


def log_poses(
    rec: rr.RecordingStream,
    trajectory: Trajectory,
    indexes: list[rr.TimeColumn],
    path: str = CAMERA,
) -> None:
    """Log ``L`` camera poses in one call, one per row of ``indexes`` (:func:`frame_indexes`).

    Args:
        rec: The recording.
        trajectory: ``L`` camera-to-world poses (ENU).
        indexes: Time columns of length ``L``.
        path: Entity of the camera.
    """
    xyzw = quaternion.as_float_array(trajectory.rotations)[:, [1, 2, 3, 0]]  # wxyz -> xyzw
    columns = rr.Transform3D.columns(translation=trajectory.positions, quaternion=xyzw)
    rec.send_columns(path, indexes=indexes, columns=columns)


def log_images(
    rec: rr.RecordingStream,
    images: np.ndarray,
    indexes: list[rr.TimeColumn],
    path: str = CAMERA,
    *,
    jpeg_quality: int | None = None,
) -> None:
    """Log ``L`` RGB images in one call, one per row of ``indexes`` (:func:`frame_indexes`).

    Args:
        rec: The recording.
        images: uint8 ``(L, H, W, 3)``.
        indexes: Time columns of length ``L``.
        path: Entity to log them at.
        jpeg_quality: JPEG quality (1-100), ``None`` for raw pixels.

    Raises:
        ShapeMismatchError: If ``images`` is not ``(L, H, W, 3)``.
    """
    images = np.asarray(images)
    _check_rgb(images, 4, path)
    n, h, w, _ = images.shape
    if jpeg_quality is None:
        fmt = rr.components.ImageFormat(width=w, height=h, color_model="RGB", channel_datatype="U8")
        pixels = np.ascontiguousarray(images, dtype=np.uint8).reshape(n, -1)
        columns = rr.Image.columns(buffer=pixels, format=[fmt] * n)
    else:
        blobs = [encode_jpeg(image, jpeg_quality) for image in images]
        columns = rr.EncodedImage.columns(blob=blobs, media_type=["image/jpeg"] * n)
    rec.send_columns(path, indexes=indexes, columns=columns)


def log_masks(
    rec: rr.RecordingStream,
    masks: np.ndarray,
    indexes: list[rr.TimeColumn],
    path: str = WARP_MASK,
) -> None:
    """Log ``L`` boolean masks as segmentation images (class 1 = true) in one call.

    Args:
        rec: The recording.
        masks: bool ``(L, H, W)``.
        indexes: Time columns of length ``L`` (:func:`frame_indexes`).
        path: Entity to log them at.
    """
    n, h, w = masks.shape
    fmt = rr.components.ImageFormat(width=w, height=h, channel_datatype="U8")
    pixels = np.ascontiguousarray(masks, dtype=np.uint8).reshape(n, -1)
    rec.send_columns(
        path, indexes=indexes, columns=rr.SegmentationImage.columns(buffer=pixels, format=[fmt] * n)
    )


def log_warp(
    rec: rr.RecordingStream,
    warp: np.ndarray | None,
    mask: np.ndarray | None,
    *,
    jpeg_quality: int | None = None,
) -> None:
    """Log one frame's warp (the nearest reference splatted into it) and its mask.

    Args:
        rec: The recording.
        warp: uint8 ``(H, W, 3)`` or ``None`` (nothing is logged).
        mask: bool ``(H, W)``, true on splatted pixels, or ``None``; logged as a segmentation
            image (class 1 = splatted).
        jpeg_quality: JPEG quality of the warp, ``None`` for raw pixels.
    """
    if warp is not None:
        log_image(rec, warp, WARP_IMAGE, jpeg_quality=jpeg_quality)
    if mask is not None:
        rec.log(WARP_MASK, rr.SegmentationImage(np.asarray(mask, dtype=np.uint8)))


def decimate(points: np.ndarray, max_points: int) -> np.ndarray:
    """Every k-th row of ``points`` ``(N, D)``, about ``max_points`` of them, the last kept."""
    stride = max(1, -(-len(points) // max(2, int(max_points))))
    return points if stride == 1 else np.concatenate([points[:-1:stride], points[-1:]])


def log_path(
    rec: rr.RecordingStream,
    positions: np.ndarray,
    path: str = TRAJECTORY,
    *,
    color: Sequence[int] = EGO_COLOR,
    max_points: int = 2048,
) -> None:
    """Log a path through the world as one line strip.

    Args:
        rec: The recording.
        positions: ENU points, float ``(N, 3)`` metres, in order.
        path: Entity to log it at.
        color: RGB of the line.
        max_points: Longer paths are decimated to about this many points (the last kept), so the
            cost of a growing path stays bounded.
    """
    points = decimate(np.asarray(positions, dtype=np.float64).reshape(-1, 3), max_points)
    rec.log(path, rr.LineStrips3D([points], colors=[color]))


def lat_lon(frame: LocalFrame, positions: np.ndarray) -> np.ndarray:
    """ENU positions to WGS84 ``(lat, lon)`` in degrees.

    Args:
        frame: The city's ENU frame.
        positions: ENU points ``(N, 3)`` or ``(3,)`` metres.

    Returns:
        float64 ``(N, 2)`` (``(1, 2)`` for one point).
    """
    lat, lon, _ = frame.enu_to_geodetic(np.asarray(positions, np.float64).reshape(-1, 3))
    return np.stack([np.atleast_1d(lat), np.atleast_1d(lon)], axis=-1)


def log_geo_points(
    rec: rr.RecordingStream,
    lat_lon_deg: np.ndarray,
    path: str = MAP_EGO,
    *,
    color: Sequence[int] = EGO_COLOR,
    radius_px: float = 6.0,
) -> None:
    """Log geodetic points for the map view.

    Args:
        rec: The recording.
        lat_lon_deg: float ``(N, 2)`` latitude and longitude in degrees.
        path: Entity to log them at.
        color: RGB of the points.
        radius_px: Radius on screen, pixels.
    """
    radii = -float(radius_px)  # negative radii are ui points in Rerun
    rec.log(path, rr.GeoPoints(lat_lon=np.asarray(lat_lon_deg), radii=radii, colors=[color]))


def log_geo_line(
    rec: rr.RecordingStream,
    lat_lon_deg: np.ndarray,
    path: str = MAP_TRAJECTORY,
    *,
    color: Sequence[int] = EGO_COLOR,
    width_px: float = 3.0,
    max_points: int = 2048,
) -> None:
    """Log a geodetic line string for the map view.

    Args:
        rec: The recording.
        lat_lon_deg: float ``(N, 2)`` latitude and longitude in degrees, in order.
        path: Entity to log it at.
        color: RGB of the line.
        width_px: Width on screen, pixels.
        max_points: Longer lines are decimated to about this many points (the last kept).
    """
    points = decimate(np.asarray(lat_lon_deg, dtype=np.float64).reshape(-1, 2), max_points)
    line = rr.GeoLineStrings(lat_lon=[points], radii=-float(width_px) / 2.0, colors=[color])
    rec.log(path, line)


def log_reference(
    rec: rr.RecordingStream,
    view: ReferenceView,
    path: str,
    *,
    color: Sequence[int] = REFERENCE_COLOR,
    jpeg_quality: int | None = None,
) -> None:
    """Log one reference: its pose, frustum and image.

    Args:
        rec: The recording.
        view: The loaded reference (image uint8 ``(h, w, 3)``, camera, pose).
        path: Entity of its slot (:func:`reference_path` or :data:`SINK`).
        color: RGB of the frustum.
        jpeg_quality: JPEG quality of the image, ``None`` for raw pixels.
    """
    log_pose(rec, view.pose, path)
    log_calibration(rec, view.camera, path, static=False, color=color, plane_distance=1.5)
    log_image(rec, view.image, path, jpeg_quality=jpeg_quality)


def clear_reference(rec: rr.RecordingStream, path: str) -> None:
    """Clear a reference slot (pose, frustum and image) from the current time on."""
    rec.log(path, rr.Clear(recursive=True))


def assign_slots(ids: Sequence[int], previous: Sequence[int | None]) -> list[int | None]:
    """Stable slots for view ids: a view keeps its slot while it stays retrieved.

    Args:
        ids: The view ids retrieved now (at most ``K``, distinct).
        previous: The view id in each slot before (``None`` = empty).

    Returns:
        The view id in each slot now: views still present keep their slot, new ones fill the
        first empty slots, trailing empty slots are dropped.
    """
    current = set(ids)
    slots: list[int | None] = [i if i in current else None for i in previous]
    for view_id in ids:
        if view_id in slots:
            continue
        if None in slots:
            slots[slots.index(None)] = view_id
        else:
            slots.append(view_id)
    while slots and slots[-1] is None:
        slots.pop()
    return slots


def log_references(
    rec: rr.RecordingStream,
    views: Sequence[ReferenceView],
    previous: Sequence[int | None] = (),
    *,
    jpeg_quality: int | None = None,
) -> list[int | None]:
    """Log the chunk's references into stable slots ``world/references/<k>``.

    A view that was retrieved last time too keeps its slot and is not logged again (Rerun keeps
    showing it), so consecutive chunks, which share most of their references, cost little; new
    views fill free slots (:func:`assign_slots`); slots left empty are cleared.

    Args:
        rec: The recording.
        views: The references (``ChunkReferences.views``).
        previous: What the last call returned (the view id in each slot, ``None`` = empty).
        jpeg_quality: JPEG quality of the images, ``None`` for raw pixels.

    Returns:
        The view id in each slot now (``None`` = empty), at most ``max(len(views), K)`` long.
    """
    by_id = {int(v.view_id): v for v in views}
    slots = assign_slots(list(by_id), previous)
    for slot in range(max(len(slots), len(previous))):
        now = slots[slot] if slot < len(slots) else None
        before = previous[slot] if slot < len(previous) else None
        if now is not None and now != before:
            log_reference(rec, by_id[now], reference_path(slot), jpeg_quality=jpeg_quality)
        elif now is None and before is not None:
            clear_reference(rec, reference_path(slot))
    return slots


def _strided(depth: np.ndarray, camera: PinholeCamera, stride: int):
    """Every ``stride``-th pixel of a depth map and the camera of those pixel centres."""
    offset = stride // 2
    sub = depth[offset::stride, offset::stride]
    # pixel j of the subsampled map is pixel stride*j + offset of the full one, so
    # (j + 0.5 - cx') / fx' must equal (stride*j + offset + 0.5 - cx) / fx
    cx = 0.5 - (offset + 0.5 - camera.cx) / stride
    cy = 0.5 - (offset + 0.5 - camera.cy) / stride
    fx, fy = camera.fx / stride, camera.fy / stride
    return sub, PinholeCamera(sub.shape[1], sub.shape[0], fx, fy, cx, cy), offset


def log_reference_depth(
    rec: rr.RecordingStream,
    view: ReferenceView | None,
    *,
    stride: int = 4,
    max_depth: float = 80.0,
    radius_m: float = 0.08,
) -> int:
    """Log a reference's depth as coloured world points (or clear them when ``view`` is None).

    Args:
        rec: The recording.
        view: The reference (depth float32 ``(h, w)`` metres, 0 = none; image ``(h, w, 3)``).
        stride: Keep every ``stride``-th pixel in each direction (``h*w/stride**2`` points).
        max_depth: Drop points farther than this, metres (far depth is sparse and noisy).
        radius_m: Radius of each point, metres.

    Returns:
        The number of points logged.
    """
    if view is None:
        rec.log(DEPTH_POINTS, rr.Clear(recursive=False))
        return 0
    depth, camera, offset = _strided(np.asarray(view.depth), view.camera, max(1, int(stride)))
    points = unproject(depth, camera, view.pose)
    keep = (depth > 0) & (depth <= max_depth)
    colors = view.image[offset :: max(1, int(stride)), offset :: max(1, int(stride))][keep]
    rec.log(DEPTH_POINTS, rr.Points3D(points[keep], colors=colors, radii=radius_m))
    return int(keep.sum())


def log_scalars(rec: rr.RecordingStream, values: Mapping[str, float | None]) -> None:
    """Log named scalars at ``scalars/<name>``; ``None`` and non-finite values are skipped.

    Args:
        rec: The recording.
        values: E.g. ``{"reward": 0.3, "progress_m": 4.2, "references_used": 5}``.
    """
    for name, value in values.items():
        if value is not None and np.isfinite(float(value)):
            rec.log(f"{SCALARS}/{name}", rr.Scalars(float(value)))
