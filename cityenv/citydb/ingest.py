"""Ingest equirectangular street-view panoramas listed in a CSV into a CityDB.

CSV columns (header row required; extra columns are ignored):

* ``image``: path of the equirectangular RGB panorama (relative paths are relative to the CSV's
  folder). Its centre column looks along ``heading``; azimuth grows to the right.
* ``lat``, ``lon``: WGS84 degrees of the camera; ``height``: WGS84 ellipsoidal height, metres.
* ``heading``: compass heading of the panorama's centre column, degrees clockwise from north.
* ``capture_time``: ISO 8601 (``2023-05-01T10:00:00Z``; no offset = UTC) or Unix seconds.
* ``traversal``: id of the capture pass (one drive).
* ``depth`` (optional): path of the equirectangular metric *range* map; when the column is absent
  or empty the depth is looked up beside the image as ``<stem>_depth.png`` (16-bit, millimetres,
  0 = none) or ``<stem>_depth.npy`` (float32 metres, 0 = none). ``.png`` and ``.npy`` are read the
  same way when named in the column.
* ``panorama_id`` (optional): a unique id; defaults to the ``image`` value as written.

Each panorama becomes ``num_views`` pinhole views (with metric z-depth) through
:func:`cityenv.geometry.panorama.equirect_to_pinholes`; view ``k`` gets the world pose
``Pose.from_heading(enu, heading) @ Pose(0, view.rotation)``.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from cityenv.citydb import format as fmt
from cityenv.citydb.writer import CityDBWriter
from cityenv.errors import CityEnvError, CorruptSourceImageError, IngestError, PanoramaShapeError
from cityenv.geometry.geodesy import LocalFrame
from cityenv.geometry.panorama import equirect_to_pinholes
from cityenv.geometry.pose import Pose

__all__ = [
    "IngestStats",
    "PanoramaRow",
    "check_panorama_files",
    "ingest_panoramas",
    "jpeg_truncation",
    "read_panorama_csv",
]

REQUIRED_COLUMNS = ("image", "lat", "lon", "height", "heading", "capture_time", "traversal")


@dataclass(frozen=True)
class PanoramaRow:
    """One validated CSV row.

    Attributes:
        row: 1-based data row number (the header is row 0).
        image: Resolved path of the panorama image.
        depth: Resolved depth path from the ``depth`` column, or ``None`` (look beside the image).
        panorama_id: Unique id of the panorama.
        lat: Latitude, degrees.
        lon: Longitude, degrees.
        height: Ellipsoidal height, metres.
        heading: Compass heading of the centre column, degrees.
        capture_time: Capture time, UTC.
        traversal: Traversal id.
    """

    row: int
    image: Path
    depth: Path | None
    panorama_id: str
    lat: float
    lon: float
    height: float
    heading: float
    capture_time: datetime
    traversal: str


@dataclass(frozen=True)
class IngestStats:
    """What :func:`ingest_panoramas` did.

    Attributes:
        rows: Data rows in the CSV.
        added: Panoramas written.
        skipped: Panoramas already in the database (a resumed run).
        views: Views written.
        seconds: Wall-clock time.
    """

    rows: int
    added: int
    skipped: int
    views: int
    seconds: float
    traversals: int = 0
    db: str = ""

    def summary(self) -> str:
        """One line: what was ingested and what was skipped."""
        return (
            f"{self.rows} rows: {self.added} panoramas added ({self.views} views) from "
            f"{self.traversals} traversals to {self.db}, {self.skipped} skipped as already "
            f"present, {self.seconds:.1f} s"
        )


def _bad(row: int, column: str, expected: str, got: object, fix: str) -> IngestError:
    return IngestError(
        f"CSV row {row}, column {column!r}: expected {expected}, got {got!r}; {fix}."
    )


def _number(values: dict[str, str], row: int, column: str, low: float, high: float) -> float:
    text = (values.get(column) or "").strip()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high):
        raise _bad(row, column, f"a number in [{low}, {high}]", text, "fix the row")
    return value


def _time(values: dict[str, str], row: int) -> datetime:
    text = (values.get("capture_time") or "").strip()
    try:
        try:
            stamp = datetime.fromtimestamp(float(text), tz=timezone.utc)
        except ValueError:
            stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError) as exc:
        raise _bad(
            row, "capture_time", "an ISO 8601 time or Unix seconds", text, "fix the row"
        ) from exc
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.astimezone(timezone.utc)


def _parse_row(values: dict[str, str], row: int, base: Path) -> PanoramaRow:
    image = (values.get("image") or "").strip()
    if not image:
        raise _bad(row, "image", "a panorama image path", image, "fill in the path")
    traversal = (values.get("traversal") or "").strip()
    if not traversal:
        raise _bad(row, "traversal", "a non-empty traversal id", traversal, "fill in the id")
    depth = (values.get("depth") or "").strip()
    return PanoramaRow(
        row=row,
        image=base / image,
        depth=base / depth if depth else None,
        panorama_id=(values.get("panorama_id") or "").strip() or image,
        lat=_number(values, row, "lat", -90.0, 90.0),
        lon=_number(values, row, "lon", -180.0, 360.0),
        height=_number(values, row, "height", -1e4, 1e5),
        heading=_number(values, row, "heading", -360.0, 720.0),
        capture_time=_time(values, row),
        traversal=traversal,
    )


def read_panorama_csv(csv_path: str | os.PathLike[str]) -> list[PanoramaRow]:
    """Read and validate a panorama CSV (files are not opened yet).

    Args:
        csv_path: The CSV file.

    Returns:
        One :class:`PanoramaRow` per data row, in file order.

    Raises:
        IngestError: If the file is missing, a required column is absent, a value is malformed or
            a ``panorama_id`` repeats; the message names the row and column.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise IngestError(f"expected a panorama CSV at {path}, got no such file; check the path.")
    # utf-8-sig: spreadsheets often save UTF-8 with a byte-order mark, which would end up in the
    # first column's name ("\ufeffimage") and make a present column look missing
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise IngestError(
                    f"CSV {path} header: expected the columns {list(REQUIRED_COLUMNS)} (+ optional "
                    f"depth, panorama_id), got {header}, missing {missing}; add them."
                )
            reader.fieldnames = header
            rows = [_parse_row(values, i, path.parent) for i, values in enumerate(reader, start=1)]
    except UnicodeDecodeError as exc:
        raise IngestError(
            f"expected a UTF-8 CSV at {path}, got a byte that is not UTF-8 at offset {exc.start} "
            f"({exc.object[exc.start : exc.start + 1]!r}, e.g. Latin-1); re-save it as UTF-8 "
            f"(iconv -f latin1 -t utf-8 {path.name} > fixed.csv)."
        ) from exc
    seen: dict[str, int] = {}
    for r in rows:
        if r.panorama_id in seen:
            raise _bad(
                r.row,
                "panorama_id",
                f"an id not used before (row {seen[r.panorama_id]})",
                r.panorama_id,
                "make panorama ids unique",
            )
        seen[r.panorama_id] = r.row
    return rows


def _load_image(row: PanoramaRow) -> np.ndarray:
    bgr = cv2.imread(str(row.image), cv2.IMREAD_COLOR)
    if bgr is None:
        raise _bad(
            row.row,
            "image",
            "a readable PNG/JPEG panorama",
            str(row.image),
            "check that the file exists and is an image",
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # OpenCV reads BGR


def _depth_path(row: PanoramaRow) -> Path:
    if row.depth is not None:
        return row.depth
    for suffix in ("_depth.png", "_depth.npy"):
        candidate = row.image.with_name(row.image.stem + suffix)
        if candidate.exists():
            return candidate
    raise _bad(
        row.row,
        "depth",
        f"a depth column or {row.image.stem}_depth.png/.npy beside the image",
        "nothing",
        "add the depth map (16-bit PNG in mm or float32 .npy in metres)",
    )


def _load_depth(row: PanoramaRow) -> np.ndarray:
    """The row's equirectangular range map in metres, ``(H', W')`` float32."""
    path = _depth_path(row)
    if path.suffix == ".npy":
        try:
            depth = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise _bad(
                row.row,
                "depth",
                "a float .npy range map in metres",
                str(path),
                f"the file does not load ({exc})",
            ) from exc
        if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
            raise _bad(
                row.row,
                "depth",
                "a 2-D float array in metres",
                f"{depth.dtype} array of shape {depth.shape}",
                "rewrite the .npy",
            )
        depth = depth.astype(np.float32)
    else:
        code = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if code is None or code.ndim != 2 or code.dtype != np.uint16:
            got = "an unreadable file" if code is None else f"{code.dtype} image {code.shape}"
            raise _bad(
                row.row,
                "depth",
                "a 16-bit single-channel PNG in millimetres",
                got,
                f"convert {path.name} to uint16 millimetres",
            )
        depth = code.astype(np.float32) / 1000.0
    if not np.all(np.isfinite(depth) & (depth >= 0)):
        raise _bad(
            row.row,
            "depth",
            "finite range >= 0 (0 = none)",
            f"{path.name} with negative or NaN values",
            "replace invalid depth with 0",
        )
    return depth


def _image_size(path: Path) -> tuple[int, int] | None:
    """``(w, h)`` from an image file's header (nothing decoded), or ``None`` if unreadable."""
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def jpeg_truncation(path: Path) -> str | None:
    """Why a JPEG file is cut short, or ``None`` (complete, or not a JPEG).

    OpenCV decodes a truncated JPEG with only a printed "Premature end of JPEG file", filling the
    missing rows grey; a complete JPEG ends its last scan with the end-of-image marker ``FFD9``
    (byte stuffing keeps that pair out of the scan data, so finding it is exact, and bytes a
    camera appends after it are allowed).
    """
    try:
        data = path.read_bytes()
    except OSError:
        return None  # an unreadable file is reported by the decoder's own check
    if not data.startswith(b"\xff\xd8"):
        return None
    scan = data.rfind(b"\xff\xda")  # the last start-of-scan marker
    if scan < 0:
        return f"a JPEG without image data ({len(data)} bytes, no start-of-scan marker)"
    if data.find(b"\xff\xd9", scan) < 0:
        return (
            f"a truncated JPEG ({len(data)} bytes, its last scan has no end-of-image marker; "
            "an interrupted download or copy)"
        )
    return None


def _depth_shape(path: Path) -> tuple[int, ...] | None:
    """Shape ``(h, w)`` of a depth map from its header, or ``None`` if unreadable."""
    if path.suffix == ".npy":
        try:
            return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
        except (OSError, ValueError):
            return None
    size = _image_size(path)
    return None if size is None else (size[1], size[0])


def _check_row_files(row: PanoramaRow) -> None:
    """Raise unless the row's panorama is a readable 2:1 image with a depth map of its aspect."""
    size = _image_size(row.image)
    if size is None:
        raise _bad(
            row.row,
            "image",
            "a readable PNG/JPEG panorama",
            str(row.image),
            "check that the file exists and is an image",
        )
    cut = jpeg_truncation(row.image)
    if cut is not None:
        raise CorruptSourceImageError(
            f"CSV row {row.row}, column 'image': expected a complete PNG/JPEG panorama, got "
            f"{row.image} as {cut}; download or export it again (nothing was written)."
        )
    width, height = size
    if abs(width - 2 * height) > 1:
        raise PanoramaShapeError(
            f"CSV row {row.row}, column 'image': expected an equirectangular panorama of aspect "
            f"2:1 (width = 2 x height), got {row.image.name} of {width}x{height} "
            f"({width / height:.3g}:1); a perspective photo is not a panorama: ingest photos with "
            "`python -m cityenv.citydb ingest-photos` (docs/citydb.md)."
        )
    depth_path = _depth_path(row)
    shape = _depth_shape(depth_path)
    if shape is None:
        _load_depth(row)  # raises the typed error that says what is wrong with the file
    if shape is not None and (len(shape) != 2 or abs(shape[1] - 2 * shape[0]) > 1):
        raise PanoramaShapeError(
            f"CSV row {row.row}, column 'depth': expected an equirectangular range map of the "
            f"panorama's 2:1 aspect ({width}x{height} or any W = 2H), got {depth_path.name} of "
            f"shape {shape} (h, w); give the depth map that belongs to {row.image.name}."
        )


def check_panorama_files(rows: list[PanoramaRow], progress: bool = False) -> None:
    """Check every row's files from their headers before anything is written.

    Raises:
        IngestError: For a missing or unreadable image or depth map (naming row and column).
        CorruptSourceImageError: For a truncated JPEG panorama.
        PanoramaShapeError: For an image that is not 2:1 or a depth map of another aspect.
    """
    for row in tqdm(rows, desc="check", unit="pano", disable=not progress):
        _check_row_files(row)


def _views(
    row: PanoramaRow, frame: LocalFrame, num_views: int, size: tuple[int, int], fov_deg: float
) -> tuple[list, list[Pose]]:
    """The row's pinhole views and their world poses."""
    try:
        views = equirect_to_pinholes(
            _load_image(row), _load_depth(row), num_views=num_views, fov_deg=fov_deg, size=size
        )
        enu = frame.geodetic_to_enu(row.lat, row.lon, row.height)
    except IngestError:
        raise
    except CityEnvError as exc:
        raise _bad(
            row.row, "image", "a valid panorama and depth", str(row.image), str(exc)
        ) from exc
    base = Pose.from_heading(enu, row.heading)
    return views, [base @ Pose(np.zeros(3), v.rotation) for v in views]


def ingest_panoramas(
    csv_path: str | os.PathLike[str],
    db_path: str | os.PathLike[str],
    *,
    city: str | None = None,
    frame: LocalFrame | None = None,
    num_views: int = 8,
    size: tuple[int, int] = (512, 512),
    fov_deg: float = 90.0,
    image_format: str | None = None,
    commit_every: int = 100,
    source: str = "streetview",
    progress: bool = True,
    compact: bool = True,
) -> IngestStats:
    """Cut every panorama of a CSV into pinhole views with depth and append them to a CityDB.

    Rerunning after an interruption resumes: panoramas already committed are skipped.

    Args:
        csv_path: The panorama CSV (see the module docstring for its columns).
        db_path: The database folder (created if needed).
        city: City name; required for a new database.
        frame: ENU anchor; defaults to the first panorama's (lat, lon, height) for a new database
            and to the stored one for an existing database.
        num_views: Pinhole views per panorama.
        size: ``(w, h)`` of each view in pixels.
        fov_deg: Horizontal field of view of each view, degrees.
        image_format: ``"png"`` (lossless) or ``"jpeg"``; ``None`` = the database default.
        commit_every: Commit after this many panoramas.
        source: Provenance recorded with every view.
        progress: Show a tqdm progress bar.
        compact: Merge the per-commit table parts at the end (see
            :meth:`~cityenv.citydb.writer.CityDBWriter.compact`) so opening stays fast.

    Returns:
        Counts of rows, added and skipped panoramas, views written and the elapsed time.

    Raises:
        IngestError: For a malformed CSV, image or depth map (naming row and column).
        CityDBError: If the database cannot be written (e.g. a new one without ``city``).
    """
    start = time.perf_counter()
    db = Path(db_path)
    _check_arguments(db, num_views, size, fov_deg)
    rows = read_panorama_csv(csv_path)
    if not rows:
        raise IngestError(f"expected at least one panorama row in {csv_path}, got none.")
    check_panorama_files(rows, progress)
    new = not (db / fmt.MANIFEST_NAME).exists()
    if frame is None and new:
        frame = LocalFrame(rows[0].lat, rows[0].lon, rows[0].height)
    existed = db.exists()
    created = new and (not existed or not any(db.iterdir()))
    try:
        added, skipped, views_written = _write_panoramas(
            rows, db, city, frame, image_format, commit_every, num_views, size, fov_deg, source,
            progress, compact,
        )  # fmt: skip
    except CityEnvError:
        # a refused first run leaves no folder behind (a rerun must not find a half database);
        # an interrupted one (Ctrl-C, a crash) keeps its commits so that the rerun resumes
        if created:
            remove_new_database(db, existed)
        raise
    return IngestStats(
        len(rows),
        added,
        skipped,
        views_written,
        time.perf_counter() - start,
        traversals=len({r.traversal for r in rows}),
        db=str(db),
    )


def remove_new_database(db: Path, existed: bool) -> None:
    """Undo a refused first run: remove the folder it created, or empty the one it was given."""
    if not existed:
        shutil.rmtree(db, ignore_errors=True)
        return
    for entry in db.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _check_arguments(db: Path, num_views: int, size: tuple[int, int], fov_deg: float) -> None:
    """Raise :class:`IngestError` for a database path that is a file or a bad view count, size or
    field of view (before any row is read, so the message names the option, not a CSV row)."""
    if db.exists() and not db.is_dir():
        raise IngestError(
            f"expected a database folder at {db}, got a file; choose a folder path (it is "
            "created if missing)."
        )
    if isinstance(num_views, bool) or not isinstance(num_views, int) or num_views < 1:
        raise IngestError(
            f"num_views (--views) must be a positive integer, got {num_views!r}; SWM cuts each "
            "panorama into 8 views."
        )
    if (
        len(size) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in size)
        or min(size) < 1
    ):
        raise IngestError(
            f"size (--size W H) must be two positive integers (pixels of each view), got "
            f"{tuple(size)!r}; the default is 512 512."
        )
    try:
        fov = float(fov_deg)
    except (TypeError, ValueError):
        fov = math.nan
    if not 0.0 < fov < 180.0:
        raise IngestError(
            f"fov_deg (--fov) must be a horizontal field of view in (0, 180) degrees, got "
            f"{fov_deg!r}; SWM uses 90."
        )


def _write_panoramas(
    rows: list[PanoramaRow],
    db: Path,
    city: str | None,
    frame: LocalFrame | None,
    image_format: str | None,
    commit_every: int,
    num_views: int,
    size: tuple[int, int],
    fov_deg: float,
    source: str,
    progress: bool,
    compact: bool,
) -> tuple[int, int, int]:
    """Append the rows' views; ``(added, skipped, views written)``."""
    added = skipped = views_written = 0
    with CityDBWriter(
        db, city=city, frame=frame, image_format=image_format, commit_every=commit_every
    ) as writer:
        for row in tqdm(rows, desc="ingest", unit="pano", disable=not progress):
            if writer.has_panorama(row.panorama_id):
                skipped += 1
                continue
            views, poses = _views(row, writer.frame, num_views, size, fov_deg)
            ids = writer.add_panorama(
                panorama_id=row.panorama_id,
                images=[v.image for v in views],
                depths=[v.depth for v in views],
                cameras=[v.camera for v in views],
                poses=poses,
                traversal_id=row.traversal,
                capture_time=row.capture_time,
                source=source,
            )
            added += 1
            views_written += len(ids)
        if compact:
            writer.compact()
    return added, skipped, views_written
