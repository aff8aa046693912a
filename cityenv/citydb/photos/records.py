"""Photo metadata from the three sources: EXIF of a folder, a photo CSV, Mapillary-style JSON.

Each reader returns ``(records, skips)``: one :class:`PhotoRecord` per usable photo and one
:class:`Skip` per photo that cannot be used (no GPS, corrupt EXIF, a missing file, ...). Pixels
are not decoded here; :mod:`cityenv.citydb.photos.pipeline` does that.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from PIL import ExifTags, Image, UnidentifiedImageError

from cityenv.errors import PhotoSourceError

__all__ = [
    "IMAGE_SUFFIXES",
    "PhotoRecord",
    "Skip",
    "read_exif",
    "read_mapillary_json",
    "read_photo_csv",
    "read_photo_folder",
    "read_photos",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp")
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)
"""The 35 mm film frame's diagonal: EXIF ``FocalLengthIn35mmFilm`` scales by the diagonal."""


@dataclass(frozen=True)
class Skip:
    """A photo that was not ingested, and why.

    Attributes:
        image: The photo's path (or id when there is no file).
        reason: What was wrong and what to do.
    """

    image: str
    reason: str


@dataclass(frozen=True)
class PhotoRecord:
    """What one source says about one photo (``None`` = not known).

    Attributes:
        image: Path of the image file.
        image_id: Unique id (the panorama id of the stored view).
        source: ``"exif"``, ``"csv"`` or ``"mapillary"``.
        lat: WGS84 latitude, degrees.
        lon: WGS84 longitude, degrees.
        altitude: Height in metres, above mean sea level (``altitude_ref="msl"``) or on the WGS84
            ellipsoid (``"ellipsoid"``).
        altitude_ref: ``"msl"`` or ``"ellipsoid"``.
        capture_time: Capture time (UTC).
        time_note: A note when the time zone had to be assumed.
        sequence: Sequence id (one capture pass); ``None`` = group by time.
        compass: Heading of the optical axis, degrees clockwise from north.
        compass_kind: ``"explicit"`` (a CSV pose), ``"computed"`` (Mapillary's SfM-refined
            angle), ``"true"`` or ``"magnetic"`` (a device compass), or ``""``.
        pitch: Pitch, degrees (up positive); ``None`` = level.
        roll: Roll, degrees; ``None`` = level.
        fx: Focal length in pixels of the image as displayed (after EXIF orientation).
        fy: Vertical focal length in pixels (``None`` = ``fx``).
        cx: Principal point column in pixels (``None`` = the centre).
        cy: Principal point row in pixels (``None`` = the centre).
        focal_mm: EXIF focal length, millimetres.
        focal_35mm: EXIF 35 mm-equivalent focal length, millimetres.
        focal_plane_px_per_mm: EXIF focal-plane resolution, pixels per millimetre.
        focal_relative: Focal length divided by ``max(width, height)`` (Mapillary/OpenSfM).
        distortion: OpenCV coefficients ``(k1, k2, p1, p2[, k3])`` or fisheye ``(k1, k2)``.
        distortion_model: ``"opencv"``, ``"fisheye"`` or ``None``.
        width: Width the metadata expects, pixels (checked against the file).
        height: Height the metadata expects, pixels.
        camera_name: Make and model, used to split sequences without ids.
    """

    image: Path
    image_id: str
    source: str
    lat: float | None = None
    lon: float | None = None
    altitude: float | None = None
    altitude_ref: str = "msl"
    capture_time: datetime | None = None
    time_note: str = ""
    sequence: str | None = None
    compass: float | None = None
    compass_kind: str = ""
    pitch: float | None = None
    roll: float | None = None
    fx: float | None = None
    fy: float | None = None
    cx: float | None = None
    cy: float | None = None
    focal_mm: float | None = None
    focal_35mm: float | None = None
    focal_plane_px_per_mm: float | None = None
    focal_relative: float | None = None
    distortion: tuple[float, ...] | None = None
    distortion_model: str | None = None
    width: int | None = None
    height: int | None = None
    camera_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def with_(self, **changes: Any) -> PhotoRecord:
        """A copy with ``changes`` applied."""
        return replace(self, **changes)


# --- EXIF -----------------------------------------------------------------------------------
_GPS = ExifTags.IFD.GPSInfo
_EXIF = ExifTags.IFD.Exif
_T = ExifTags.Base


def _float(value: Any) -> float | None:
    """A finite float from an EXIF rational/number, else ``None``."""
    try:
        out = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return out if math.isfinite(out) else None


def _dms(value: Any, ref: Any, negative: str) -> float | None:
    """Degrees from an EXIF ``(deg, min, sec)`` triple and its hemisphere letter."""
    try:
        d, m, s = (float(v) for v in value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    degrees = d + m / 60.0 + s / 3600.0
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    sign = -1.0 if str(ref).strip().upper().startswith(negative) else 1.0
    return sign * degrees if math.isfinite(degrees) else None


def _exif_time(exif: dict[int, Any], gps: dict[int, Any]) -> tuple[datetime | None, str]:
    """Capture time: DateTimeOriginal with its offset, else the GPS (UTC) stamp."""
    text = exif.get(_T.DateTimeOriginal) or exif.get(_T.DateTimeDigitized)
    offset = exif.get(_T.OffsetTimeOriginal) or exif.get(_T.OffsetTime)
    local = None
    if isinstance(text, str):
        try:
            local = datetime.strptime(text.strip().rstrip("\x00"), "%Y:%m:%d %H:%M:%S")
        except ValueError:
            local = None
    if local is not None and isinstance(offset, str):
        try:
            tz = datetime.strptime(offset.strip(), "%z").tzinfo
            return local.replace(tzinfo=tz).astimezone(timezone.utc), ""
        except ValueError:
            pass
    stamp, date = gps.get(7), gps.get(29)  # GPSTimeStamp (h, m, s) and GPSDateStamp, in UTC
    if stamp is not None and isinstance(date, str):
        try:
            h, m, s = (float(v) for v in stamp)
            day = datetime.strptime(date.strip(), "%Y:%m:%d").replace(tzinfo=timezone.utc)
            return day + timedelta(hours=h, minutes=m, seconds=s), ""
        except (TypeError, ValueError, ZeroDivisionError):
            pass
    if local is not None:
        return local.replace(tzinfo=timezone.utc), "EXIF time without a time zone taken as UTC"
    return None, ""


def read_exif(path: Path) -> PhotoRecord | Skip:
    """The EXIF metadata of one image file (GPS, time, focal lengths, orientation, compass).

    Returns:
        A :class:`PhotoRecord` (``source="exif"``), or a :class:`Skip` for a file that is not
        an image or whose EXIF block is present but cannot be parsed.
    """
    try:
        with Image.open(path) as im:
            raw = im.info.get("exif")
            tags = im.getexif()
            base = dict(tags)
            exif = dict(tags.get_ifd(_EXIF))
            gps = dict(tags.get_ifd(_GPS))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        return Skip(str(path), f"not a readable image or corrupt EXIF ({exc}); re-export it")
    if raw and not base and not exif and not gps:
        return Skip(
            str(path),
            f"corrupt EXIF block ({len(raw)} bytes that do not parse); re-export the photo "
            "or give its pose in a photo CSV",
        )
    direction = _float(gps.get(17))
    kind = ""
    if direction is not None:
        ref = gps.get(16, "T")
        ref = ref.decode("ascii", "replace") if isinstance(ref, bytes) else str(ref)
        kind = "magnetic" if ref.strip().upper().startswith("M") else "true"
    altitude = _float(gps.get(6))
    if altitude is not None and gps.get(5) in (1, b"\x01"):  # GPSAltitudeRef 1 = below sea level
        altitude = -altitude
    when, note = _exif_time(exif, gps)
    resolution = _float(exif.get(_T.FocalPlaneXResolution))
    unit = {2: 25.4, 3: 10.0, 4: 1.0}.get(exif.get(_T.FocalPlaneResolutionUnit, 2))
    make = str(base.get(_T.Make, "")).strip("\x00 ")
    model = str(base.get(_T.Model, "")).strip("\x00 ")
    return PhotoRecord(
        image=path,
        image_id=path.name,
        source="exif",
        lat=_dms(gps.get(2), gps.get(1, "N"), "S") if 2 in gps else None,
        lon=_dms(gps.get(4), gps.get(3, "E"), "W") if 4 in gps else None,
        altitude=altitude,
        capture_time=when,
        time_note=note,
        compass=direction,
        compass_kind=kind,
        focal_mm=_float(exif.get(_T.FocalLength)),
        focal_35mm=_float(exif.get(_T.FocalLengthIn35mmFilm)),
        focal_plane_px_per_mm=resolution / unit if resolution and unit else None,
        camera_name=f"{make} {model}".strip(),
    )


def read_photo_folder(folder: str | os.PathLike[str]) -> tuple[list[PhotoRecord], list[Skip]]:
    """EXIF records of every image in ``folder`` (not recursive), in file-name order.

    Raises:
        PhotoSourceError: If the folder does not exist or holds no image.
    """
    root = Path(folder)
    if not root.is_dir():
        raise PhotoSourceError(f"expected a folder of photos at {root}, got none; check the path.")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PhotoSourceError(
            f"expected photos ({', '.join(IMAGE_SUFFIXES)}) in {root}, got none; point at the "
            "folder that holds the images."
        )
    records, skips = [], []
    for path in files:
        out = read_exif(path)
        (skips if isinstance(out, Skip) else records).append(out)
    return records, skips


# --- photo CSV ------------------------------------------------------------------------------
CSV_NUMBERS = (
    "lat", "lon", "height", "altitude", "heading", "pitch", "roll", "fx", "fy", "cx", "cy",
    "k1", "k2", "p1", "p2", "k3", "image_width", "image_height",
)  # fmt: skip


def _read_csv_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a UTF-8 CSV (a byte-order mark is accepted) with stripped header names."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            reader.fieldnames = header
            return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]
    except UnicodeDecodeError as exc:
        raise PhotoSourceError(
            f"expected a UTF-8 CSV at {path}, got a byte that is not UTF-8 at offset {exc.start} "
            f"({exc.object[exc.start : exc.start + 1]!r}, e.g. Latin-1); re-save it as UTF-8 "
            f"(iconv -f latin1 -t utf-8 {path.name} > fixed.csv)."
        ) from exc


def _csv_time(text: str) -> datetime | None:
    """ISO 8601 (no offset = UTC) or Unix seconds; ``None`` when empty or malformed."""
    if not text:
        return None
    try:
        try:
            stamp = datetime.fromtimestamp(float(text), tz=timezone.utc)
        except ValueError:
            stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        return None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def _csv_record(row: dict[str, str], number: int, base: Path) -> PhotoRecord | Skip:
    """One CSV row merged over the image's EXIF (the CSV wins where it gives a value)."""
    name = row.get("image", "")
    if not name:
        return Skip(f"row {number}", "the 'image' cell is empty; fill in the photo's path")
    path = base / name
    if not path.is_file():
        return Skip(str(path), f"CSV row {number} names a file that does not exist; fix the path")
    values: dict[str, float | None] = {}
    for column in CSV_NUMBERS:
        text = row.get(column, "")
        values[column] = _float(text) if text else None
        if text and values[column] is None:
            return Skip(str(path), f"CSV row {number}, column {column!r}: {text!r} is not a number")
    exif = read_exif(path)
    record = exif if isinstance(exif, PhotoRecord) else PhotoRecord(path, name, "csv")
    dist = [values[k] for k in ("k1", "k2", "p1", "p2", "k3")]
    changes: dict[str, Any] = {"image_id": row.get("image_id") or name, "source": "csv"}
    for key in ("lat", "lon", "pitch", "roll", "fx", "fy", "cx", "cy"):
        if values[key] is not None:
            changes[key] = values[key]
    if values["height"] is not None:
        changes.update(altitude=values["height"], altitude_ref="ellipsoid")
    elif values["altitude"] is not None:
        changes.update(altitude=values["altitude"], altitude_ref="msl")
    if values["heading"] is not None:
        changes.update(compass=values["heading"], compass_kind="explicit")
    if any(d is not None for d in dist):
        changes.update(distortion=tuple(d or 0.0 for d in dist), distortion_model="opencv")
    if values["image_width"] is not None and values["image_height"] is not None:
        changes.update(width=int(values["image_width"]), height=int(values["image_height"]))
    if row.get("capture_time"):
        when = _csv_time(row["capture_time"])
        if when is None:
            return Skip(
                str(path),
                f"CSV row {number}, column 'capture_time': {row['capture_time']!r} is not ISO 8601 "
                "or Unix seconds",
            )
        changes.update(capture_time=when, time_note="")
    if row.get("sequence"):
        changes["sequence"] = row["sequence"]
    return record.with_(**changes)


def read_photo_csv(csv_path: str | os.PathLike[str]) -> tuple[list[PhotoRecord], list[Skip]]:
    """Records of a photo CSV (columns in ``docs/citydb.md``); EXIF fills what it leaves out.

    Raises:
        PhotoSourceError: If the file is missing, not UTF-8, or lacks the ``image`` column.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise PhotoSourceError(f"expected a photo CSV at {path}, got no such file; check the path.")
    rows = _read_csv_rows(path)
    if rows and "image" not in rows[0]:
        raise PhotoSourceError(
            f"CSV {path} header: expected an 'image' column (+ lat, lon, height or altitude, "
            f"heading, fx, ...), got {sorted(rows[0])}; add it."
        )
    records, skips = [], []
    for number, row in enumerate(rows, start=1):
        out = _csv_record(row, number, path.parent)
        (skips if isinstance(out, Skip) else records).append(out)
    return records, skips


# --- Mapillary-style JSON -------------------------------------------------------------------
def _mapillary_file(entry: dict[str, Any], base: Path) -> Path | None:
    """The local file of a Mapillary image: ``path``/``file`` field, else ``<id>.jpg`` nearby."""
    named = entry.get("path") or entry.get("file")
    if named:
        return base / str(named)
    for folder in (base, base / "images"):
        for suffix in (".jpg", ".jpeg", ".png"):
            candidate = folder / f"{entry.get('id')}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _mapillary_camera(entry: dict[str, Any]) -> dict[str, Any]:
    """Intrinsics and distortion from ``camera_type`` and ``camera_parameters``."""
    kind = str(entry.get("camera_type") or "perspective").lower()
    params = entry.get("camera_parameters") or []
    if kind not in ("perspective", "fisheye", "brown"):
        return {"extra": {"camera_type": kind}}
    try:
        values = [float(p) for p in params]
    except (TypeError, ValueError):
        values = []
    out: dict[str, Any] = {"extra": {"camera_type": kind}}
    if values:
        out["focal_relative"] = values[0]
    if len(values) >= 3 and any(values[1:3]):
        out["distortion"] = tuple(values[1:3])
        out["distortion_model"] = "fisheye" if kind == "fisheye" else "opencv"
    return out


def _mapillary_position(entry: dict[str, Any]) -> tuple[float | None, float | None] | str:
    """``(lon, lat)`` from ``computed_geometry``/``geometry`` (``None`` when absent), or why the
    coordinates given cannot be used."""
    geometry = entry.get("computed_geometry") or entry.get("geometry") or {}
    coords = geometry.get("coordinates") if isinstance(geometry, dict) else None
    if coords is None:
        return None, None
    if not isinstance(coords, (list, tuple)) or len(coords) < 2:
        return (
            f"geometry.coordinates must be a [lon, lat] list, got {coords!r}; fix the JSON "
            "(GeoJSON order: longitude first)"
        )
    return _float(coords[0]), _float(coords[1])


def _mapillary_time(entry: dict[str, Any]) -> datetime | None | str:
    """``captured_at`` (Unix milliseconds) as UTC (``None`` when absent), or why it cannot be
    a time (a value past what the platform's clock functions can represent)."""
    millis = _float(entry.get("captured_at"))
    if millis is None:
        return None
    try:
        return datetime.fromtimestamp(millis / 1000.0, tz=timezone.utc)
    except (OverflowError, OSError, ValueError) as exc:
        return (
            f"captured_at {entry.get('captured_at')!r} is not a Unix time in milliseconds "
            f"between the years 1 and 9999 ({exc}); fix the JSON"
        )


def _mapillary_record(entry: dict[str, Any], base: Path) -> PhotoRecord | Skip:
    image_id = str(entry.get("id", "")).strip()
    if not image_id:
        return Skip("?", "a Mapillary entry without an 'id'; every image needs one")
    path = _mapillary_file(entry, base)
    if path is None or not path.is_file():
        return Skip(
            image_id,
            f"no local file for image {image_id} (looked for {image_id}.jpg beside the JSON and "
            "in images/); save each image as <id>.jpg",
        )
    position = _mapillary_position(entry)
    if isinstance(position, str):
        return Skip(str(path), f"image {image_id}: {position}")
    when = _mapillary_time(entry)
    if isinstance(when, str):
        return Skip(str(path), f"image {image_id}: {when}")
    lon, lat = position
    computed = _float(entry.get("computed_compass_angle"))
    compass = computed if computed is not None else _float(entry.get("compass_angle"))
    altitude = _float(entry.get("computed_altitude"))
    altitude = altitude if altitude is not None else _float(entry.get("altitude"))
    sequence = entry.get("sequence") or entry.get("sequence_id")
    if isinstance(sequence, dict):
        sequence = sequence.get("id")
    name = f"{entry.get('make') or ''} {entry.get('model') or ''}".strip()
    record = PhotoRecord(
        image=path,
        image_id=image_id,
        source="mapillary",
        lat=lat,
        lon=lon,
        altitude=altitude,
        capture_time=when,
        sequence=str(sequence) if sequence else None,
        compass=compass,
        compass_kind=("computed" if computed is not None else "true")
        if compass is not None
        else "",
        width=int(entry["width"]) if _float(entry.get("width")) else None,
        height=int(entry["height"]) if _float(entry.get("height")) else None,
        camera_name=name,
    )
    return record.with_(**_mapillary_camera(entry))


def read_mapillary_json(json_path: str | os.PathLike[str]) -> tuple[list[PhotoRecord], list[Skip]]:
    """Records of Mapillary image-API metadata: a list of image objects or ``{"data": [...]}``.

    Raises:
        PhotoSourceError: If the file is missing, not JSON, or not a list of image objects.
    """
    path = Path(json_path)
    if not path.is_file():
        raise PhotoSourceError(f"expected a metadata JSON at {path}, got no such file.")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PhotoSourceError(
            f"expected UTF-8 JSON in {path} (Mapillary image API fields), got {exc}; fix the file."
        ) from exc
    entries = data.get("data") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise PhotoSourceError(
            f"expected a list of image objects (or {{'data': [...]}}) in {path}, got "
            f"{type(entries).__name__}; export the image API's response as it comes."
        )
    records, skips = [], []
    for entry in entries:
        out = _mapillary_record(entry, path.parent)
        (skips if isinstance(out, Skip) else records).append(out)
    return records, skips


def read_photos(source: str | os.PathLike[str]) -> tuple[list[PhotoRecord], list[Skip]]:
    """Records from a folder (EXIF), a ``.csv`` (photo CSV) or a ``.json`` (Mapillary).

    Raises:
        PhotoSourceError: If the source is none of these or cannot be read.
    """
    path = Path(source)
    if path.is_dir():
        return read_photo_folder(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_photo_csv(path)
    if suffix == ".json":
        return read_mapillary_json(path)
    raise PhotoSourceError(
        f"expected a folder of photos, a .csv or a Mapillary .json, got {path}; "
        "see docs/citydb.md (Ingesting photos)."
    )
