"""Ingest geotagged perspective photos into a CityDB: :func:`ingest_photos`.

The stages, each reported in :class:`PhotoIngestReport`:

1. Metadata from the source (:func:`~cityenv.citydb.photos.records.read_photos`); photos without
   GPS, time or focal length, with corrupt EXIF or missing files are skipped with the reason.
2. Pixels: decoded, turned upright (EXIF orientation), checked against the size the metadata
   states, undistorted with OpenCV when distortion is known, so every stored view is pinhole.
3. Positions: altitudes above sea level -> WGS84 ellipsoidal heights
   (:class:`~cityenv.citydb.photos.geo.GeoidModel`), then the city's ENU frame.
4. Traversals by sequence id (else camera + time gaps); headings from a trustworthy compass, else
   the direction of travel; a photo that gets neither is skipped.
5. Optional pose refinement by structure from motion per traversal, aligned to GPS.
6. Depth from the chosen source (:data:`~cityenv.citydb.photos.depth.DEPTH_SOURCES`).
7. Writing: every photo becomes one view (its own panorama id, view index 0). Everything above is
   decided before the database is opened, so a refused run writes nothing; a first run that fails
   while writing removes the folder it created.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from cityenv.citydb import format as fmt
from cityenv.citydb.ingest import jpeg_truncation, remove_new_database
from cityenv.citydb.photos.depth import DepthSource, DepthView, make_depth_source
from cityenv.citydb.photos.geo import (
    GeoidModel,
    choose_headings,
    group_traversals,
    motion_headings,
)
from cityenv.citydb.photos.records import FULL_FRAME_DIAGONAL_MM, PhotoRecord, Skip, read_photos
from cityenv.citydb.photos.sfm import SparseDepth, reconstruct
from cityenv.citydb.writer import CityDBWriter
from cityenv.errors import DepthlessViewWarning, DepthModelError, IngestError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.geodesy import LocalFrame
from cityenv.geometry.pose import Pose

__all__ = ["PhotoIngestReport", "PreparedPhoto", "ingest_photos", "prepare_photo"]

log = logging.getLogger(__name__)


@dataclass
class PreparedPhoto:
    """A photo ready to store.

    Attributes:
        record: Its metadata.
        image: Undistorted RGB image ``(H, W, 3)`` uint8.
        camera: Pinhole intrinsics of ``image``.
        capture_time: Capture time (UTC).
        enu: Camera position ``(3,)`` in the city's ENU frame (set in stage 3).
        traversal: Traversal id (stage 4).
        pose: Camera-to-world pose (stage 4/5).
        sparse: Sparse SfM depth (stage 5), or ``None``.
        depth: Metric z-depth ``(H, W)`` (stage 6), or ``None``.
    """

    record: PhotoRecord
    image: np.ndarray
    camera: PinholeCamera
    capture_time: datetime
    enu: np.ndarray = field(default_factory=lambda: np.zeros(3))
    traversal: str = ""
    pose: Pose | None = None
    sparse: SparseDepth | None = None
    depth: np.ndarray | None = None


@dataclass
class PhotoIngestReport:
    """What :func:`ingest_photos` did.

    Attributes:
        db: The database folder.
        photos: Photos the source listed.
        added: Views written (one per photo).
        already_present: Photos already in the database (a rerun).
        skipped: Photos not ingested, each with its reason.
        without_depth: Views written without depth.
        traversals: Traversal id -> photos written.
        headings: Traversal id -> where its headings came from.
        sfm: Traversal id -> the SfM outcome (registered images, alignment residual).
        sfm_residual_m: Traversal id -> RMS alignment residual in metres.
        assumptions: What had to be assumed (geoid, time zones, missing altitudes).
        seconds: Wall-clock time.
    """

    db: Path
    photos: int = 0
    added: int = 0
    already_present: int = 0
    skipped: list[Skip] = field(default_factory=list)
    without_depth: int = 0
    traversals: dict[str, int] = field(default_factory=dict)
    headings: dict[str, str] = field(default_factory=dict)
    sfm: dict[str, str] = field(default_factory=dict)
    sfm_residual_m: dict[str, float] = field(default_factory=dict)
    assumptions: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        """A multi-line human summary: counts, traversals, SfM, assumptions, every skip."""
        lines = [
            f"{self.photos} photos: {self.added} views written to {self.db} "
            f"({self.without_depth} without depth), {self.already_present} already present, "
            f"{len(self.skipped)} skipped, {self.seconds:.1f} s",
        ]
        for name, count in sorted(self.traversals.items()):
            extra = "; ".join(x for x in (self.headings.get(name), self.sfm.get(name)) if x)
            lines.append(f"  traversal {name}: {count} views ({extra})")
        lines += [f"  assumed: {a}" for a in self.assumptions]
        lines += [f"  skipped {s.image}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)


# --- stage 2: pixels and intrinsics -----------------------------------------------------------
def _focal_px(record: PhotoRecord, width: int, height: int) -> float | str:
    """Focal length in pixels from the best metadata there is, or the reason there is none."""
    candidates = [
        ("fx", record.fx, 1.0),
        ("camera_parameters focal", record.focal_relative, float(max(width, height))),
        ("FocalLengthIn35mmFilm", record.focal_35mm,
         np.hypot(width, height) / FULL_FRAME_DIAGONAL_MM),
        ("FocalLength", record.focal_mm if record.focal_plane_px_per_mm else None,
         record.focal_plane_px_per_mm or 0.0),
    ]  # fmt: skip
    given = [(name, value, factor) for name, value, factor in candidates if value is not None]
    for _, value, factor in given:
        if value > 0 and np.isfinite(value * factor):
            return float(value * factor)
    if given:
        name, value, _ = given[0]
        return f"focal length {name} = {value} cannot be right; give fx in a photo CSV"
    if record.focal_mm is not None:
        return (
            f"only FocalLength = {record.focal_mm} mm without FocalLengthIn35mmFilm or the sensor "
            "size; give fx in a photo CSV"
        )
    return "no focal length (EXIF FocalLengthIn35mmFilm, CSV fx or camera_parameters); add one"


def _load_upright(path: Path) -> np.ndarray | str:
    """RGB pixels ``(H, W, 3)`` uint8 turned by the EXIF orientation, or why they cannot load."""
    try:
        with Image.open(path) as im:
            # a corrupt orientation tag: keep the pixels as stored
            with contextlib.suppress(ValueError, KeyError, TypeError, SyntaxError):
                im = ImageOps.exif_transpose(im)
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        return f"the image does not decode ({exc}); re-export it"


def _undistort(image: np.ndarray, camera: PinholeCamera, record: PhotoRecord) -> np.ndarray:
    """The image as the pinhole ``camera`` sees it (same intrinsics, distortion removed)."""
    if not record.distortion or not any(record.distortion):
        return image
    coefficients = np.asarray(record.distortion, dtype=np.float64)
    if record.distortion_model == "fisheye":
        fisheye = np.zeros(4)
        fisheye[: min(4, len(coefficients))] = coefficients[:4]
        return cv2.fisheye.undistortImage(image, camera.K, fisheye, Knew=camera.K)
    # OpenCV takes 4, 5, 8, 12 or 14 coefficients: pad (k1, k2) and friends with zeros
    size = next(n for n in (4, 5, 8, 12, 14) if n >= min(len(coefficients), 14))
    padded = np.zeros(size)
    padded[: min(size, len(coefficients))] = coefficients[:size]
    return cv2.undistort(image, camera.K, padded)


def prepare_photo(record: PhotoRecord) -> PreparedPhoto | Skip:
    """Decode, check, and undistort one photo (stage 2); a :class:`Skip` says why not.

    Returns:
        The photo with its pinhole camera, or the reason it cannot be used.
    """
    where = str(record.image)
    if record.lat is None or record.lon is None:
        return Skip(
            where,
            "no GPS position (EXIF GPSLatitude/GPSLongitude); geotag it or list it in a photo CSV",
        )
    if not (-90.0 <= record.lat <= 90.0 and -180.0 <= record.lon <= 360.0):
        # one bad fix must not abort the run (the ENU conversion refuses the whole batch)
        return Skip(
            where,
            f"image {record.image_id}: lat {record.lat} / lon {record.lon} outside [-90, 90] / "
            "[-180, 360] degrees (latitude and longitude swapped?); fix its position",
        )
    if record.capture_time is None:
        return Skip(
            where,
            "no capture time (EXIF DateTimeOriginal or GPS time); add capture_time in a photo CSV",
        )
    if record.extra.get("camera_type") not in (None, "perspective", "fisheye", "brown"):
        return Skip(
            where,
            f"camera_type {record.extra['camera_type']!r} is not a perspective photo; ingest "
            "panoramas with `ingest`",
        )
    cut = jpeg_truncation(record.image)
    if cut is not None:  # Pillow refuses most, unless a library set LOAD_TRUNCATED_IMAGES
        return Skip(where, f"the image is {cut}; download or export it again")
    image = _load_upright(record.image)
    if isinstance(image, str):
        return Skip(where, image)
    height, width = image.shape[:2]
    if record.width and record.height and (record.width, record.height) != (width, height):
        return Skip(
            where,
            f"the metadata describes a {record.width}x{record.height} image but the file is "
            f"{width}x{height} (a resized or mixed-resolution copy); fix the metadata or the file",
        )
    focal = _focal_px(record, width, height)
    if isinstance(focal, str):
        return Skip(where, focal)
    fy = record.fy if record.fy and record.fy > 0 else focal
    camera = PinholeCamera(
        width,
        height,
        fx=focal,
        fy=fy,
        cx=record.cx if record.cx is not None else width / 2.0,
        cy=record.cy if record.cy is not None else height / 2.0,
    )
    return PreparedPhoto(record, _undistort(image, camera, record), camera, record.capture_time)


# --- stage 3: positions -----------------------------------------------------------------------
def _ellipsoidal_heights(
    photos: list[PreparedPhoto], geoid: GeoidModel, notes: list[str]
) -> np.ndarray:
    """WGS84 ellipsoidal height per photo ``(N,)``; a missing altitude takes the others' median."""
    heights = np.full(len(photos), np.nan)
    msl = [
        i
        for i, p in enumerate(photos)
        if p.record.altitude is not None and p.record.altitude_ref == "msl"
    ]
    for i, p in enumerate(photos):
        if p.record.altitude is not None and p.record.altitude_ref == "ellipsoid":
            heights[i] = p.record.altitude
    if msl:
        lat = [photos[i].record.lat for i in msl]
        lon = [photos[i].record.lon for i in msl]
        alt = [photos[i].record.altitude for i in msl]
        converted, note = geoid.to_ellipsoidal(np.array(lat), np.array(lon), np.array(alt))
        heights[msl] = converted
        notes.append(note)
    missing = ~np.isfinite(heights)
    if missing.any():
        fill = float(np.median(heights[~missing])) if (~missing).any() else 0.0
        heights[missing] = fill
        notes.append(
            f"{int(missing.sum())} photos without altitude placed at {fill:.1f} m ellipsoidal "
            "height (the median of the others, else 0)"
        )
    return heights


# --- stage 4: traversals and headings ---------------------------------------------------------
def _assign_poses(photos: list[PreparedPhoto], report: PhotoIngestReport) -> list[PreparedPhoto]:
    """Traversal ids and level poses from headings; photos without a heading are skipped."""
    ids = group_traversals(
        [p.record.sequence for p in photos],
        [p.capture_time for p in photos],
        [p.record.camera_name for p in photos],
    )
    groups: dict[str, list[PreparedPhoto]] = defaultdict(list)
    for photo, traversal in zip(photos, ids, strict=True):
        photo.traversal = traversal
        groups[traversal].append(photo)
    kept: list[PreparedPhoto] = []
    for traversal, group in groups.items():
        group.sort(key=lambda p: p.capture_time)
        t0 = group[0].capture_time
        seconds = np.array([(p.capture_time - t0).total_seconds() for p in group])
        motion = motion_headings(np.array([p.enu for p in group]), seconds)
        compass = np.array(
            [np.nan if p.record.compass is None else p.record.compass for p in group]
        )
        choice = choose_headings(compass, [p.record.compass_kind for p in group], motion)
        report.headings[traversal] = f"headings from {choice.source}" + (
            f", {choice.note}" if choice.note else ""
        )
        for photo, heading in zip(group, choice.headings, strict=True):
            if not np.isfinite(heading):
                why = (
                    "a sequence of one photo" if len(group) == 1 else "a sequence that never moves"
                )
                report.skipped.append(
                    Skip(
                        str(photo.record.image),
                        f"no heading: {why} without a compass angle; add the heading in a "
                        "photo CSV",
                    )
                )
                continue
            photo.pose = Pose.from_heading(
                photo.enu, float(heading), photo.record.pitch or 0.0, photo.record.roll or 0.0
            )
            kept.append(photo)
    return kept


# --- stage 5: structure from motion ------------------------------------------------------------
def _refine(
    photos: list[PreparedPhoto], report: PhotoIngestReport, progress: bool, max_residual_m: float
) -> None:
    """SfM per traversal (its most common camera); registered photos take the aligned pose.

    A reconstruction whose GPS alignment residual exceeds ``max_residual_m`` is rejected (GPS
    poses kept): repeated facades and forward motion can give a confident but wrong model.
    """
    groups: dict[str, list[PreparedPhoto]] = defaultdict(list)
    for photo in photos:
        groups[photo.traversal].append(photo)
    for traversal, group in tqdm(
        groups.items(), desc="sfm", unit="traversal", disable=not progress
    ):
        camera, _ = Counter(p.camera for p in group).most_common(1)[0]
        same = [p for p in group if p.camera == camera]
        if len(same) < 3:
            report.sfm[traversal] = f"SfM not run ({len(same)} photos of one camera, need 3)"
            continue
        result = reconstruct([p.image for p in same], camera, np.array([p.enu for p in same]))
        if result is None:
            report.sfm[traversal] = f"SfM registered too few of {len(same)} photos; GPS poses kept"
            continue
        report.sfm_residual_m[traversal] = result.residual_rms_m
        if result.residual_rms_m > max_residual_m:
            report.sfm[traversal] = (
                f"SfM rejected: GPS alignment residual RMS {result.residual_rms_m:.2f} m > "
                f"{max_residual_m} m ({result.registered} photos registered); GPS poses kept"
            )
            continue
        for photo, pose, sparse in zip(same, result.poses, result.sparse, strict=True):
            if pose is not None:
                photo.pose, photo.sparse = pose, sparse
        report.sfm[traversal] = (
            f"SfM poses used: registered {result.registered}/{len(group)} photos, "
            f"{result.points} points, "
            f"GPS alignment residual RMS {result.residual_rms_m:.2f} m (max "
            f"{result.residual_max_m:.2f} m)"
        )


# --- the whole pipeline ---------------------------------------------------------------------
def _existing_frame(db: Path) -> LocalFrame | None:
    return fmt.read_manifest(db).anchor if (db / fmt.MANIFEST_NAME).is_file() else None


def _check_db_path(db: Path) -> None:
    if db.exists() and not db.is_dir():
        raise IngestError(
            f"expected a database folder at {db}, got a file; choose a folder path (it is "
            "created if missing)."
        )


def _first_pass(
    records: Sequence[PhotoRecord], report: PhotoIngestReport, progress: bool
) -> list[PreparedPhoto]:
    seen: set[str] = set()
    photos: list[PreparedPhoto] = []
    for record in tqdm(records, desc="photos", unit="photo", disable=not progress):
        if record.image_id in seen:
            report.skipped.append(
                Skip(str(record.image), f"image id {record.image_id!r} repeats; ids must be unique")
            )
            continue
        seen.add(record.image_id)
        out = prepare_photo(record)
        (report.skipped if isinstance(out, Skip) else photos).append(out)
        if record.time_note and record.time_note not in report.assumptions:
            report.assumptions.append(record.time_note)
    return photos


def ingest_photos(
    source: str | os.PathLike[str],
    db_path: str | os.PathLike[str],
    *,
    city: str | None = None,
    frame: LocalFrame | None = None,
    refine: str = "none",
    depth: str | DepthSource = "none",
    depth_options: dict[str, object] | None = None,
    geoid: GeoidModel | float | None = None,
    max_sfm_residual_m: float = 3.0,
    image_format: str | None = None,
    progress: bool = True,
) -> PhotoIngestReport:
    """Ingest geotagged perspective photos as posed pinhole views (with depth where possible).

    Args:
        source: A folder of geotagged photos (EXIF), a photo ``.csv`` or a Mapillary ``.json``
            (formats in ``docs/citydb.md``).
        db_path: The database folder (created if needed; a rerun skips photos already stored).
        city: City name; required for a new database.
        frame: ENU anchor of a new database; default: the first usable photo's position.
        refine: ``"none"`` (GPS + heading poses) or ``"sfm"`` (pycolmap, aligned to GPS).
        depth: A registered depth source name (``"none"``, ``"sfm"``, ``"depth-anything"``) or a
            :class:`~cityenv.citydb.photos.depth.DepthSource`.
        depth_options: Options of a named depth source (``{"model": PATH}`` for Depth Anything).
        geoid: A :class:`GeoidModel`, a constant geoid undulation in metres, or ``None`` (a
            pyproj grid if installed, else undulation 0 and a note).
        max_sfm_residual_m: Largest RMS distance between aligned SfM camera centres and GPS
            fixes for the SfM poses to replace the GPS ones.
        image_format: ``"png"`` or ``"jpeg"`` for new views; ``None`` = the database's default.
        progress: Show progress bars.

    Returns:
        The report (see :meth:`PhotoIngestReport.summary`).

    Raises:
        PhotoSourceError: If the source cannot be read as a whole.
        DepthModelError: If the depth source cannot be set up.
        IngestError: If the options contradict each other, the database path is a file, or no
            photo is usable (the message lists why each was skipped); nothing is written then.
    """
    start = time.perf_counter()
    db = Path(db_path)
    _check_db_path(db)
    if refine not in ("none", "sfm"):
        raise IngestError(f"refine must be 'none' or 'sfm', got {refine!r}.")
    estimator = (
        make_depth_source(depth, **(depth_options or {})) if isinstance(depth, str) else depth
    )
    if getattr(estimator, "needs_sfm", False) and refine != "sfm":
        raise IngestError(
            f"depth source {depth!r} needs the SfM reconstruction, got refine={refine!r}; pass "
            "refine='sfm' (--refine sfm), or depth='none'."
        )
    geoid = geoid if isinstance(geoid, GeoidModel) else GeoidModel(geoid)
    records, skips = read_photos(source)
    report = PhotoIngestReport(db=db, photos=len(records) + len(skips), skipped=list(skips))
    photos = _first_pass(records, report, progress)
    if photos:
        heights = _ellipsoidal_heights(photos, geoid, report.assumptions)
        frame = (
            frame
            or _existing_frame(db)
            or LocalFrame(photos[0].record.lat, photos[0].record.lon, float(heights[0]))
        )
        lat = np.array([p.record.lat for p in photos])
        lon = np.array([p.record.lon for p in photos])
        enu = np.atleast_2d(frame.geodetic_to_enu(lat, lon, heights))
        for photo, position in zip(photos, enu, strict=True):
            photo.enu = position
        photos = _assign_poses(photos, report)
    if not photos:
        raise IngestError(
            f"expected at least one usable photo in {source}, got none of {report.photos}; "
            "nothing was written. Why each was skipped:\n"
            + "\n".join(f"  {s.image}: {s.reason}" for s in report.skipped)
        )
    if refine == "sfm":
        _refine(photos, report, progress, max_sfm_residual_m)
    _estimate_depth(photos, estimator)
    _write(photos, db, city, frame, image_format, report)
    report.seconds = time.perf_counter() - start
    return report


def _estimate_depth(photos: list[PreparedPhoto], estimator: DepthSource) -> None:
    """Depth per photo from the source, checked here so that nothing fails while writing."""
    groups: dict[str, list[PreparedPhoto]] = defaultdict(list)
    for photo in photos:
        groups[photo.traversal].append(photo)
    for group in groups.values():
        views = [DepthView(p.image, p.camera, p.sparse) for p in group]
        depths = list(estimator(views))
        if len(depths) != len(views):
            raise DepthModelError(
                f"depth source {estimator!r} must return one depth map (or None) per view, got "
                f"{len(depths)} for {len(views)} views; fix the source."
            )
        for photo, depth in zip(group, depths, strict=True):
            photo.depth = None if depth is None else _checked_depth(depth, photo, estimator)


def _checked_depth(depth: np.ndarray, photo: PreparedPhoto, estimator: DepthSource) -> np.ndarray:
    depth = np.asarray(depth, dtype=np.float32)
    if depth.shape != photo.camera.shape or not np.all(np.isfinite(depth) & (depth >= 0)):
        raise DepthModelError(
            f"depth source {estimator!r} must return finite metric depth >= 0 of shape "
            f"{photo.camera.shape} for {photo.record.image.name}, got shape {depth.shape}"
            f"{'' if depth.shape != photo.camera.shape else ' with negative or NaN values'}; "
            "fix the source (nothing was written)."
        )
    return depth


def _write(
    photos: list[PreparedPhoto],
    db: Path,
    city: str | None,
    frame: LocalFrame,
    image_format: str | None,
    report: PhotoIngestReport,
) -> None:
    """Append the photos as views; a failed first run removes the folder it created."""
    new = not (db / fmt.MANIFEST_NAME).exists()
    existed = db.exists()
    created = new and (not existed or not any(db.iterdir()))
    depthless: list[str] = []
    try:
        with CityDBWriter(
            db, city=city, frame=frame, image_format=image_format, commit_every=1 << 30
        ) as writer:
            for photo in sorted(photos, key=lambda p: (p.traversal, p.capture_time)):
                if writer.has_panorama(photo.record.image_id):
                    report.already_present += 1
                    continue
                writer.add_view(
                    image=photo.image,
                    depth=photo.depth,
                    camera=photo.camera,
                    pose=photo.pose,
                    panorama_id=photo.record.image_id,
                    traversal_id=photo.traversal,
                    capture_time=photo.capture_time,
                    source=f"photo:{photo.record.source}",
                )
                report.added += 1
                report.traversals[photo.traversal] = report.traversals.get(photo.traversal, 0) + 1
                if photo.depth is None or not np.any(photo.depth > 0):
                    depthless.append(photo.record.image_id)
    except Exception:
        # any failure (not only a refusal) of a first run leaves no half database behind
        if created:
            remove_new_database(db, existed)
        raise
    report.without_depth = len(depthless)
    if depthless:
        warnings.warn(
            f"{len(depthless)} views were stored without depth ({', '.join(depthless[:5])}"
            f"{', ...' if len(depthless) > 5 else ''}): retrieval can use them only as the "
            "lookahead sink, never as a geometric or semantic reference (its depth-reprojection "
            "stage needs depth); ingest with depth='sfm' or 'depth-anything' to use them fully.",
            DepthlessViewWarning,
            stacklevel=3,
        )
