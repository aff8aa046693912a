"""The on-disk format of a CityDB: manifest, Parquet tables, blob shards, codecs.

A CityDB is one folder (see ``docs/citydb.md`` for the full description)::

    manifest.json                  format version, city, ENU anchor, cameras, committed parts/shards
    views/part-NNNNN.parquet       one row per pinhole view (one part per commit)
    panoramas/part-NNNNN.parquet   one row per panorama (same commit as the views part)
    blobs/shard-NNNNN.bin          encoded images and depth maps, appended back to back
    .writer.lock                   advisory lock held by the one writer

``manifest.json`` is the commit point: it is replaced atomically (temp file, fsync, ``os.replace``)
and lists every committed part and the committed byte size of every shard. Readers see nothing
else: part files it does not list and shard bytes past the committed size are ignored by readers
and moved to ``lost+found/`` by the next writer (never deleted).

Integrity: the manifest carries a SHA-256 of its own content and of every part file; every part
records the database settings of its commit in its Parquet key-value metadata (so ``repair`` can
rebuild a lost manifest) and writes CRC-32 page checksums; every view row holds the CRC-32 of its
image and depth bytes. Databases written before these existed stay readable: a missing checksum is
"not recorded".

This module holds the schemas, manifest (de)serialisation, path checks and the image/depth codecs;
it does no buffering and holds no state.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
from numpy.typing import ArrayLike

from cityenv.errors import (
    CityDBFormatError,
    CityDBIntegrityError,
    CorruptImageError,
    InvalidDepthError,
    InvalidPoseError,
    ManifestLostError,
    ManifestNotFoundError,
    ShapeMismatchError,
    UnsafePathError,
)
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.geodesy import LocalFrame

__all__ = [
    "DEFAULT_DEPTH_SCALE_M",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "PANORAMA_SCHEMA",
    "VIEW_SCHEMA",
    "Manifest",
    "PartInfo",
    "ShardInfo",
    "ViewRecords",
    "blob_crc32",
    "committed_files",
    "decode_depth",
    "decode_image",
    "encode_depth",
    "encode_image",
    "file_sha256",
    "index_tables",
    "manifest_checksum",
    "part_settings",
    "read_manifest",
    "resolve_inside",
    "to_utc_micros",
    "write_manifest",
]

FORMAT_NAME = "cityenv-citydb"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
VIEWS_DIR = "views"
PANORAMAS_DIR = "panoramas"
BLOBS_DIR = "blobs"
LOCK_NAME = ".writer.lock"
LOST_DIR = "lost+found"  # where a writer moves uncommitted leftovers (never deleted)
PART_METADATA_KEY = b"cityenv.citydb"  # Parquet key-value metadata: the settings of the commit
PART_PATTERN = "part-[0-9][0-9][0-9][0-9][0-9]*.parquet"
SHARD_PATTERN = "shard-[0-9][0-9][0-9][0-9][0-9]*.bin"
# 1 cm steps in a uint16 reach 655.35 m; 0 stays "no depth".
DEFAULT_DEPTH_SCALE_M = 0.01
DEPTH_MAX_CODE = 65535
IMAGE_FORMATS = ("png", "jpeg")

_TIME = pa.timestamp("us", tz="UTC")

VIEW_SCHEMA = pa.schema(
    [
        pa.field("view_id", pa.int64(), nullable=False),
        pa.field("panorama_index", pa.int32(), nullable=False),
        pa.field("view_index", pa.int16(), nullable=False),
        pa.field("panorama_id", pa.string(), nullable=False),
        pa.field("traversal_id", pa.string(), nullable=False),
        pa.field("capture_time", _TIME, nullable=False),
        pa.field("lat", pa.float64(), nullable=False),
        pa.field("lon", pa.float64(), nullable=False),
        pa.field("height", pa.float64(), nullable=False),
        pa.field("x", pa.float64(), nullable=False),
        pa.field("y", pa.float64(), nullable=False),
        pa.field("z", pa.float64(), nullable=False),
        pa.field("qw", pa.float64(), nullable=False),
        pa.field("qx", pa.float64(), nullable=False),
        pa.field("qy", pa.float64(), nullable=False),
        pa.field("qz", pa.float64(), nullable=False),
        pa.field("camera_index", pa.int32(), nullable=False),
        pa.field("image_width", pa.int32(), nullable=False),
        pa.field("image_height", pa.int32(), nullable=False),
        pa.field("fx", pa.float64(), nullable=False),
        pa.field("fy", pa.float64(), nullable=False),
        pa.field("cx", pa.float64(), nullable=False),
        pa.field("cy", pa.float64(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("image_shard", pa.int32(), nullable=False),
        pa.field("image_offset", pa.int64(), nullable=False),
        pa.field("image_length", pa.int64(), nullable=False),
        pa.field("depth_shard", pa.int32(), nullable=False),
        pa.field("depth_offset", pa.int64(), nullable=False),
        pa.field("depth_length", pa.int64(), nullable=False),
        pa.field("image_crc32", pa.uint32(), nullable=True),
        pa.field("depth_crc32", pa.uint32(), nullable=True),
    ]
)
"""One row per pinhole view. ``*_length == 0`` means "not stored" (index-only rows);
``*_crc32`` is the CRC-32 of the stored bytes, null = not recorded (no blob, or a part written
before checksums: such parts lack the two columns)."""

PANORAMA_SCHEMA = pa.schema(
    [
        pa.field("panorama_index", pa.int32(), nullable=False),
        pa.field("panorama_id", pa.string(), nullable=False),
        pa.field("traversal_id", pa.string(), nullable=False),
        pa.field("capture_time", _TIME, nullable=False),
        pa.field("lat", pa.float64(), nullable=False),
        pa.field("lon", pa.float64(), nullable=False),
        pa.field("height", pa.float64(), nullable=False),
        pa.field("x", pa.float64(), nullable=False),
        pa.field("y", pa.float64(), nullable=False),
        pa.field("z", pa.float64(), nullable=False),
    ]
)
"""One row per panorama; its position and time are those of its first view."""

# Columns CityDB.open reads eagerly; everything else is read on demand.
VIEW_INDEX_COLUMNS = ("panorama_index", "qw", "qx", "qy", "qz", "camera_index")
VIEW_POSITION_COLUMNS = ("x", "y", "z")  # read at open only for parts without views_at_panorama
PANORAMA_INDEX_COLUMNS = ("x", "y", "z", "capture_time", "traversal_id")
STRING_COLUMNS = ("panorama_id", "traversal_id", "source")
BLOB_COLUMNS = (
    "image_shard",
    "image_offset",
    "image_length",
    "depth_shard",
    "depth_offset",
    "depth_length",
)
CHECKSUM_COLUMNS = ("image_crc32", "depth_crc32")  # absent from parts written before checksums
CAMERA_COLUMNS = ("image_width", "image_height", "fx", "fy", "cx", "cy")
ROW_GROUP_SIZE = 65536
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_utc_micros(time: datetime) -> int:
    """Microseconds since the Unix epoch of a capture time (naive datetimes are taken as UTC)."""
    if not isinstance(time, datetime):
        raise TypeError(f"capture_time must be a datetime, got {type(time).__name__}.")
    aware = time.replace(tzinfo=timezone.utc) if time.tzinfo is None else time
    delta = aware.astimezone(timezone.utc) - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def parquet_write_options(schema: pa.Schema) -> dict[str, Any]:
    """Keyword arguments for ``pyarrow.parquet.write_table`` for a CityDB table.

    Numeric columns are written PLAIN and uncompressed so ``CityDB.open`` decodes them at memory
    speed (random floats do not compress anyway); string columns are dictionary-encoded and
    zstd-compressed (they repeat a lot and are read lazily).
    """
    strings = [f.name for f in schema if pa.types.is_string(f.type)]
    return {
        "compression": {f.name: ("zstd" if f.name in strings else "none") for f in schema},
        "use_dictionary": strings,
        "row_group_size": ROW_GROUP_SIZE,
        "write_statistics": ["view_id", "panorama_index"],
        "write_page_checksum": True,  # CRC-32 per page, checked whenever a page is read
    }


def with_checksum_columns(table: pa.Table) -> pa.Table:
    """A view table with the :data:`CHECKSUM_COLUMNS` (null if absent: an older part)."""
    for name in CHECKSUM_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(
                pa.field(name, pa.uint32()), pa.nulls(len(table), pa.uint32())
            )
    return table


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes as hex (read in 4 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def blob_crc32(data: bytes) -> int:
    """CRC-32 of a blob's bytes (what the ``*_crc32`` view columns hold)."""
    return zlib.crc32(data)


# --- index rows from typed arrays -----------------------------------------------------------------
_UNIT_ATOL = 1e-6  # |q| may differ from 1 by this much (float32 sources round-trip within it)


def _strings(values: Sequence[str] | pa.Array | pa.ChunkedArray, name: str, n: int) -> pa.Array:
    """``values`` as an Arrow string array of length ``n``."""
    if isinstance(values, str):
        raise CityDBFormatError(
            f"{name} must be {n} strings, got the single string {values!r}; pass a list."
        )
    try:
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if isinstance(values, pa.Array):
            arr = values.cast(pa.string())
        else:
            arr = pa.array(values if isinstance(values, np.ndarray) else list(values), pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError) as exc:
        raise CityDBFormatError(
            f"{name} must be strings (a sequence of str or an Arrow string array), got "
            f"{type(values).__name__} ({exc}); pass one id string per panorama."
        ) from exc
    if len(arr) != n:
        raise ShapeMismatchError(
            f"{name} must have length {n} (one per panorama), got {len(arr)}; pass one id per "
            "row of panorama_positions."
        )
    if arr.null_count:
        raise CityDBFormatError(f"{name} must not hold nulls, got {arr.null_count}.")
    return arr


def _float_array(values: ArrayLike, name: str, rows: int, width: int, what: str) -> np.ndarray:
    """``values`` as finite float64 ``(rows, width)`` (``rows == -1``: any number of rows)."""
    arr = np.asarray(values)
    expected = f"({'P' if rows < 0 else rows}, {width})"
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise CityDBFormatError(
            f"{name} must be a numeric array of shape {expected}, got dtype {arr.dtype}; "
            f"pass {what}."
        )
    if arr.ndim != 2 or arr.shape[1] != width or rows not in (-1, arr.shape[0]):
        raise ShapeMismatchError(
            f"{name} must have shape {expected}, got shape {arr.shape}; pass {what}."
        )
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise InvalidPoseError(f"{name} must be finite, got NaN/inf; pass {what}.")
    return arr


def _int_array(values: ArrayLike, name: str, n: int, low: int, high: int, what: str) -> np.ndarray:
    """``values`` as int64 ``(n,)`` with every value in ``[low, high)``."""
    arr = np.asarray(values)
    if arr.size == 0:  # np.asarray([]) is float64
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise CityDBFormatError(
            f"{name} must be an integer array of shape ({n},), got dtype {arr.dtype}; pass {what}."
        )
    if arr.shape != (n,):
        raise ShapeMismatchError(
            f"{name} must have shape ({n},) (one per view), got shape {arr.shape}; pass {what}."
        )
    arr = arr.astype(np.int64, copy=False)
    if n and (arr.min() < low or arr.max() >= high):
        raise CityDBFormatError(
            f"{name} must lie in [{low}, {high}), got values in [{arr.min()}, {arr.max()}]; "
            f"pass {what}."
        )
    return arr


def _micros(times: ArrayLike | Sequence[datetime], n: int) -> np.ndarray:
    """Capture times ``(n,)`` as int64 microseconds since 1970 UTC."""
    arr = np.asarray(times)
    if arr.dtype == object:
        if not all(isinstance(t, datetime) for t in arr.ravel()):
            raise CityDBFormatError(
                "capture_times must be datetimes, numpy datetime64 or int64 microseconds since "
                f"1970 UTC, got {sorted({type(t).__name__ for t in arr.ravel()})}."
            )
        arr = np.array([to_utc_micros(t) for t in arr.ravel()], np.int64).reshape(arr.shape)
    elif np.issubdtype(arr.dtype, np.datetime64):
        arr = arr.astype("datetime64[us]").astype(np.int64)  # naive datetime64 is taken as UTC
    elif not np.issubdtype(arr.dtype, np.integer):
        raise CityDBFormatError(
            "capture_times must be datetimes, numpy datetime64 or int64 microseconds since 1970 "
            f"UTC, got dtype {arr.dtype}; convert float seconds with (t * 1e6).astype(np.int64)."
        )
    if arr.shape != (n,):
        raise ShapeMismatchError(
            f"capture_times must have shape ({n},) (one per panorama), got shape {arr.shape}."
        )
    return arr.astype(np.int64, copy=False)


def _order_in_panorama(view_panorama: np.ndarray) -> np.ndarray:
    """Index of each view among its panorama's views, in view order ``(V,)`` int16."""
    order = np.argsort(view_panorama, kind="stable")
    starts = np.searchsorted(view_panorama[order], view_panorama[order])
    view_index = np.empty(view_panorama.shape[0], np.int16)
    view_index[order] = np.arange(view_panorama.shape[0]) - starts
    return view_index


@dataclass(frozen=True)
class ViewRecords:
    """Index rows of ``P`` panoramas and their ``V`` views as plain typed arrays (no pixels).

    What :meth:`CityDBWriter.append_views <cityenv.citydb.writer.CityDBWriter.append_views>`
    takes instead of prebuilt :data:`VIEW_SCHEMA` / :data:`PANORAMA_SCHEMA` tables: the writer
    numbers the rows, registers the cameras, derives the geodetic columns from ENU and the
    panorama columns of each view. Arrays are validated (and converted) on construction.

    Args:
        panorama_ids: Panorama ids, ``P`` strings (a sequence or an Arrow string array).
        traversal_ids: Capture pass of each panorama, ``P`` strings.
        capture_times: Capture time of each panorama, shape ``(P,)``: int64 microseconds since
            1970 UTC, numpy ``datetime64`` (taken as UTC) or ``datetime`` objects.
        panorama_positions: Panorama centres, shape ``(P, 3)`` ENU metres.
        view_panorama: Panorama of each view, shape ``(V,)`` int in ``[0, P)`` (any order).
        wxyz: Camera-to-world rotation of each view, shape ``(V, 4)`` unit quaternions
            ``(w, x, y, z)`` (stored as given, so they must be unit already).
        cameras: The intrinsics of every view, or a list of them indexed by ``view_camera``.
        view_camera: Shape ``(V,)`` int index into ``cameras``; ``None`` = ``cameras[0]``.
        view_positions: Camera centres ``(V, 3)`` ENU; ``None`` = their panorama's position.
        view_index: Index of each view within its panorama ``(V,)`` int; ``None`` = the view's
            rank among its panorama's views (in view order).
        source: Provenance of every row (e.g. ``"import:vendor"``).

    Raises:
        ShapeMismatchError: If an array's shape or length disagrees with ``P`` or ``V``.
        CityDBFormatError: If an array has the wrong dtype or an index is out of range.
        InvalidPoseError: If a position or quaternion is not finite or a quaternion is not unit.

    Example::

        records = ViewRecords(
            panorama_ids=["p0"], traversal_ids=["drive-1"], capture_times=[t0_us],
            panorama_positions=[[0.0, 0.0, 2.5]], view_panorama=np.zeros(8, int),
            wxyz=yaw_quaternions, cameras=PinholeCamera.from_fov(512, 512, 90.0),
        )
        view_ids = writer.append_views(records)
    """

    panorama_ids: Sequence[str] | pa.Array
    traversal_ids: Sequence[str] | pa.Array
    capture_times: ArrayLike | Sequence[datetime]
    panorama_positions: ArrayLike
    view_panorama: ArrayLike
    wxyz: ArrayLike
    cameras: PinholeCamera | Sequence[PinholeCamera]
    view_camera: ArrayLike | None = None
    view_positions: ArrayLike | None = None
    view_index: ArrayLike | None = None
    source: str = ""

    def __post_init__(self) -> None:
        positions = _float_array(
            self.panorama_positions, "panorama_positions", -1, 3, "one ENU xyz per panorama"
        )
        p = positions.shape[0]
        view_panorama = np.asarray(self.view_panorama)
        if view_panorama.ndim != 1:
            raise ShapeMismatchError(
                "view_panorama must have shape (V,) (one panorama row per view), got shape "
                f"{view_panorama.shape}; pass a 1-D integer array."
            )
        v = view_panorama.shape[0]
        view_panorama = _int_array(
            view_panorama, "view_panorama", v, 0, p, "the row of panorama_positions of each view"
        )
        cameras = [self.cameras] if isinstance(self.cameras, PinholeCamera) else list(self.cameras)
        if not cameras or not all(isinstance(c, PinholeCamera) for c in cameras):
            raise CityDBFormatError(
                "cameras must be a PinholeCamera or a non-empty sequence of them, got "
                f"{type(self.cameras).__name__}; pass the views' intrinsics."
            )
        converted = {
            "panorama_positions": positions,
            "panorama_ids": _strings(self.panorama_ids, "panorama_ids", p),
            "traversal_ids": _strings(self.traversal_ids, "traversal_ids", p),
            "capture_times": _micros(self.capture_times, p),
            "view_panorama": view_panorama,
            "wxyz": self._unit_quaternions(v),
            "cameras": cameras,
            "view_camera": np.zeros(v, np.int64)
            if self.view_camera is None
            else _int_array(self.view_camera, "view_camera", v, 0, len(cameras), "camera rows"),
            "view_positions": None
            if self.view_positions is None
            else _float_array(self.view_positions, "view_positions", v, 3, "one xyz per view"),
            "view_index": _order_in_panorama(view_panorama)
            if self.view_index is None
            else _int_array(self.view_index, "view_index", v, 0, 2**15, "ranks").astype(np.int16),
        }
        for name, value in converted.items():  # frozen: store the validated arrays once
            object.__setattr__(self, name, value)

    def _unit_quaternions(self, v: int) -> np.ndarray:
        q = _float_array(self.wxyz, "wxyz", v, 4, "one (w, x, y, z) quaternion per view")
        norm = np.linalg.norm(q, axis=1)
        if v and np.abs(norm - 1.0).max() > _UNIT_ATOL:
            raise InvalidPoseError(
                f"wxyz must hold unit quaternions (|q| = 1 within {_UNIT_ATOL}), got norms in "
                f"[{norm.min():.6g}, {norm.max():.6g}]; normalise them with "
                "q / np.linalg.norm(q, axis=1, keepdims=True)."
            )
        return q

    @property
    def num_panoramas(self) -> int:
        """``P``."""
        return int(self.panorama_positions.shape[0])  # type: ignore[union-attr]

    @property
    def num_views(self) -> int:
        """``V``."""
        return int(self.view_panorama.shape[0])  # type: ignore[union-attr]


def index_tables(
    records: ViewRecords,
    *,
    first_view_id: int,
    first_panorama_index: int,
    camera_index: Sequence[int],
    frame: LocalFrame,
) -> tuple[pa.Table, pa.Table]:
    """The :data:`VIEW_SCHEMA` and :data:`PANORAMA_SCHEMA` rows of ``records`` (index only).

    The one place that lays typed view records out as CityDB rows: ids continue from
    ``first_view_id`` / ``first_panorama_index``, latitude, longitude and height come from the
    ENU positions through ``frame``, views take their panorama's ids and time, and blob
    locators are 0 (no image, no depth).

    Args:
        records: The rows.
        first_view_id: Id of the first view row.
        first_panorama_index: Index of the first panorama row.
        camera_index: The database's camera index of each of ``records.cameras``.
        frame: The city's ENU frame.

    Returns:
        ``(views, panoramas)``: ``V`` and ``P`` rows conforming to the schemas.
    """
    r = records
    p, n = r.num_panoramas, r.num_views
    rep = r.view_panorama
    positions = r.panorama_positions
    lat, lon, height = (np.atleast_1d(a) for a in frame.enu_to_geodetic(positions.reshape(-1, 3)))
    pano_index = np.arange(first_panorama_index, first_panorama_index + p, dtype=np.int32)
    stamp = pa.array(r.capture_times).cast(_TIME)
    columns = [pano_index, r.panorama_ids, r.traversal_ids, stamp, lat, lon, height]
    columns += [positions[:, k] for k in range(3)]
    panoramas = pa.Table.from_arrays(
        [_arrow(c, f.type) for c, f in zip(columns, PANORAMA_SCHEMA, strict=True)],
        schema=PANORAMA_SCHEMA,
    )
    if r.view_positions is None:
        view_xyz = positions[rep]
        view_geo = (lat[rep], lon[rep], height[rep])
    else:
        view_xyz = r.view_positions
        view_geo = tuple(np.atleast_1d(a) for a in frame.enu_to_geodetic(view_xyz.reshape(-1, 3)))
    cams = np.array([[c.width, c.height, c.fx, c.fy, c.cx, c.cy] for c in r.cameras])
    cams = cams[r.view_camera]
    take = pa.array(rep)
    columns: dict[str, Any] = {
        "view_id": np.arange(first_view_id, first_view_id + n, dtype=np.int64),
        "panorama_index": pano_index[rep],
        "view_index": r.view_index,
        "panorama_id": r.panorama_ids.take(take),
        "traversal_id": r.traversal_ids.take(take),
        "capture_time": stamp.take(take),
        "lat": view_geo[0],
        "lon": view_geo[1],
        "height": view_geo[2],
        **{axis: view_xyz[:, k] for k, axis in enumerate("xyz")},
        **{name: r.wxyz[:, k] for k, name in enumerate(("qw", "qx", "qy", "qz"))},
        "camera_index": np.asarray(camera_index, np.int64)[r.view_camera],
        **{name: cams[:, k] for k, name in enumerate(CAMERA_COLUMNS)},
        # one dictionary entry: a string column of V copies would cost V Python strings
        "source": pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), [r.source]),
        **{name: np.zeros(n, np.int64) for name in BLOB_COLUMNS},
        **{name: pa.nulls(n, pa.uint32()) for name in CHECKSUM_COLUMNS},  # no blobs
    }
    views = pa.Table.from_arrays(
        [_arrow(columns[f.name], f.type) for f in VIEW_SCHEMA], schema=VIEW_SCHEMA
    )
    return views, panoramas


def _arrow(values: Any, type_: pa.DataType) -> pa.Array:
    """An Arrow array of ``type_`` from a numpy array or an Arrow array."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values if values.type == type_ else values.cast(type_)
    return pa.array(values, type=type_)


# --- manifest -----------------------------------------------------------------------------------
@dataclass
class PartInfo:
    """One committed part: a views file and a panoramas file written in the same commit.

    Attributes:
        views: Path of the views Parquet file, relative to the database folder.
        panoramas: Path of the panoramas Parquet file, relative to the database folder.
        first_view_id: View id of the part's first row; its rows hold ids
            ``first_view_id .. first_view_id + num_views - 1`` in order.
        num_views: Number of rows in the views file.
        first_panorama_index: Panorama index of the part's first panorama row.
        num_panoramas: Number of rows in the panoramas file.
        views_at_panorama: True when every view of the part sits exactly at its panorama's
            position (the usual case); readers then skip the views' ``x, y, z`` at open.
        views_sha256: SHA-256 of the views file as committed, hex ("" = not recorded).
        panoramas_sha256: SHA-256 of the panoramas file as committed, hex ("" = not recorded).
    """

    views: str
    panoramas: str
    first_view_id: int
    num_views: int
    first_panorama_index: int
    num_panoramas: int
    views_at_panorama: bool = False
    views_sha256: str = ""
    panoramas_sha256: str = ""


@dataclass
class ShardInfo:
    """One blob shard and its committed size in bytes (bytes past it are uncommitted)."""

    path: str
    size: int


@dataclass
class Manifest:
    """The content of ``manifest.json``.

    Attributes:
        city: Name of the city.
        anchor: The ENU frame's anchor (lat, lon, height on WGS84).
        depth_scale_m: Metres per unit of the stored uint16 depth (0 = no depth).
        image_format: Default codec for new images, ``"png"`` (lossless) or ``"jpeg"``.
        cameras: Distinct intrinsics ``[W, H, fx, fy, cx, cy]``; ``camera_index`` points here.
        parts: Committed parts in view-id order.
        shards: Blob shards; ``shard`` numbers in the view table index this list.
        created: UTC creation time (ISO 8601).
        updated: UTC time of the last commit (ISO 8601).
        format_version: Version of this format.
        checksum: SHA-256 of the manifest's content as recorded in the file ("" = not recorded);
            filled by :func:`read_manifest`, computed afresh by :func:`write_manifest`.
    """

    city: str
    anchor: LocalFrame
    depth_scale_m: float = DEFAULT_DEPTH_SCALE_M
    image_format: str = "png"
    cameras: list[list[float]] = field(default_factory=list)
    parts: list[PartInfo] = field(default_factory=list)
    shards: list[ShardInfo] = field(default_factory=list)
    created: str = ""
    updated: str = ""
    format_version: int = FORMAT_VERSION
    checksum: str = ""

    @property
    def num_views(self) -> int:
        """Number of committed views."""
        return self.parts[-1].first_view_id + self.parts[-1].num_views if self.parts else 0

    @property
    def num_panoramas(self) -> int:
        """Number of committed panoramas."""
        last = self.parts[-1] if self.parts else None
        return last.first_panorama_index + last.num_panoramas if last else 0

    def camera(self, index: int) -> PinholeCamera:
        """The intrinsics with ``camera_index == index``."""
        w, h, fx, fy, cx, cy = self.cameras[index]
        return PinholeCamera(int(w), int(h), fx, fy, cx, cy)

    def to_json(self) -> dict[str, Any]:
        """The manifest as a JSON-ready dict."""
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "city": self.city,
            "anchor": {
                "lat": self.anchor.lat,
                "lon": self.anchor.lon,
                "height": self.anchor.height,
            },
            "depth_scale_m": self.depth_scale_m,
            "image_format": self.image_format,
            "num_views": self.num_views,
            "num_panoramas": self.num_panoramas,
            "cameras": self.cameras,
            "parts": [vars(p) for p in self.parts],
            "shards": [vars(s) for s in self.shards],
            "created": self.created,
            "updated": self.updated,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> Manifest:
        """Parse a manifest dict, raising :class:`CityDBFormatError` naming ``where``."""
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise CityDBFormatError(
                f"{where} must be a JSON object with format={FORMAT_NAME!r}, got "
                f"{type(data).__name__} with format={_get(data, 'format')!r}; this is not a "
                "CityDB manifest."
            )
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise CityDBFormatError(
                f"{where} has format_version {version!r}, this cityenv reads version "
                f"{FORMAT_VERSION}; upgrade cityenv or rebuild the database."
            )
        try:
            anchor = data["anchor"]
            manifest = cls(
                city=str(data["city"]),
                anchor=LocalFrame(anchor["lat"], anchor["lon"], anchor["height"]),
                depth_scale_m=float(data["depth_scale_m"]),
                image_format=str(data["image_format"]),
                cameras=[[float(v) for v in c] for c in data["cameras"]],
                parts=[PartInfo(**p) for p in data["parts"]],
                shards=[ShardInfo(**s) for s in data["shards"]],
                created=str(data.get("created", "")),
                updated=str(data.get("updated", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CityDBFormatError(
                f"{where} is missing or has a malformed field ({type(exc).__name__}: {exc}); "
                "expected the keys city, anchor{lat,lon,height}, depth_scale_m, image_format, "
                "cameras, parts, shards. Restore the manifest or rebuild the database."
            ) from exc
        manifest.check_consistency(where)
        return manifest

    def check_consistency(self, where: str) -> None:
        """Raise :class:`CityDBFormatError` unless parts are contiguous and sizes non-negative."""
        view_id, pano = 0, 0
        for i, part in enumerate(self.parts):
            if (part.first_view_id, part.first_panorama_index) != (view_id, pano) or min(
                part.num_views, part.num_panoramas
            ) < 0:
                raise CityDBFormatError(
                    f"{where}: part {i} must start at view id {view_id} and panorama "
                    f"{pano} with non-negative counts, got first_view_id={part.first_view_id}, "
                    f"first_panorama_index={part.first_panorama_index}, num_views="
                    f"{part.num_views}, num_panoramas={part.num_panoramas}; the manifest was "
                    "edited or damaged, restore it or rebuild the database."
                )
            view_id += part.num_views
            pano += part.num_panoramas
        if not (self.depth_scale_m > 0 and math.isfinite(self.depth_scale_m)):
            raise CityDBFormatError(
                f"{where}: depth_scale_m must be a positive number of metres, got "
                f"{self.depth_scale_m}; restore the manifest."
            )
        if any(s.size < 0 for s in self.shards):
            raise CityDBFormatError(f"{where}: shard sizes must be >= 0; restore the manifest.")
        if self.image_format not in IMAGE_FORMATS:
            raise CityDBFormatError(
                f"{where}: image_format must be one of {list(IMAGE_FORMATS)}, got "
                f"{self.image_format!r}; restore the manifest or rebuild it from the parts "
                "with `python -m cityenv.citydb repair DB`."
            )
        for i, cam in enumerate(self.cameras):
            if len(cam) != 6 or not all(math.isfinite(v) for v in cam) or min(cam[:4]) <= 0:
                raise CityDBFormatError(
                    f"{where}: camera {i} must be [W, H, fx, fy, cx, cy] with finite values and "
                    f"positive W, H, fx, fy, got {cam}; restore the manifest or rebuild it with "
                    "`python -m cityenv.citydb repair DB`."
                )

    def settings(self) -> dict[str, Any]:
        """The settings a part records at commit (its Parquet key-value metadata)."""
        anchor = {"lat": self.anchor.lat, "lon": self.anchor.lon, "height": self.anchor.height}
        return {
            "city": self.city,
            "anchor": anchor,
            "depth_scale_m": self.depth_scale_m,
            "image_format": self.image_format,
            "cameras": self.cameras,
        }

    def check_part_settings(self, recorded: dict[str, Any] | None, where: str) -> None:
        """Raise :class:`CityDBIntegrityError` if a part's settings contradict the manifest.

        A part records the settings of its commit; later commits only add cameras, so the
        manifest's cameras must start with the part's. ``None`` (an older part) checks nothing.
        """
        if not recorded:
            return
        mine = self.settings()
        clashes = [
            f"{key} {mine[key]!r} in the manifest vs {recorded[key]!r} in the part"
            for key in ("city", "anchor", "depth_scale_m")
            if key in recorded and recorded[key] != mine[key]
        ]
        cams = recorded.get("cameras", [])
        if mine["cameras"][: len(cams)] != cams:
            clashes.append(
                f"cameras {mine['cameras'][: len(cams)]} in the manifest vs {cams} in the part"
            )
        if clashes:
            raise CityDBIntegrityError(
                f"{where} was committed with other settings than the manifest now says: "
                f"{'; '.join(clashes)}; the manifest was edited or damaged. Restore it, or "
                "rebuild it from the parts with `python -m cityenv.citydb repair DB`."
            )


def part_settings(schema: pa.Schema) -> dict[str, Any] | None:
    """The settings a part recorded at commit (:meth:`Manifest.settings`), ``None`` if none."""
    raw = (schema.metadata or {}).get(PART_METADATA_KEY)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}  # damaged metadata: no settings to trust (verify reports the part's hash)
    return value if isinstance(value, dict) else {}


def manifest_checksum(data: dict[str, Any]) -> str:
    """SHA-256 (hex) of a manifest dict's canonical JSON, its ``checksum`` key left out."""
    body = {k: v for k, v in data.items() if k != "checksum"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _get(data: Any, key: str) -> Any:
    return data.get(key) if isinstance(data, dict) else None


def utc_now_iso() -> str:
    """The current UTC time as ISO 8601 with a ``Z`` suffix."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def read_manifest(root: Path) -> Manifest:
    """Read and validate ``root/manifest.json``.

    Raises:
        ManifestNotFoundError: If the folder has no manifest.
        CityDBFormatError: If the manifest is not valid JSON or not a CityDB manifest.
        UnsafePathError: If a part or shard path leaves the database folder.
    """
    path = root / MANIFEST_NAME
    if not path.is_file():
        found = committed_files(root)
        if found:
            raise ManifestLostError(
                f"expected {MANIFEST_NAME} in {root}, got {describe_files(found)} and no "
                f"{MANIFEST_NAME}: the manifest was lost. Do not re-ingest into this folder; "
                f"rebuild the manifest from the parts with `python -m cityenv.citydb repair "
                f"{root}`."
            )
        raise ManifestNotFoundError(
            f"expected a CityDB folder with {MANIFEST_NAME} at {root}, got "
            f"{'no such folder' if not root.exists() else 'no manifest'}; build one with "
            "`python -m cityenv.citydb ingest PANORAMAS.csv DB --city NAME` or "
            "cityenv.citydb.CityDBWriter."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CityDBFormatError(
            f"{path} must be a JSON manifest, got unparseable content ({exc}); restore it from a "
            "backup or rebuild the database."
        ) from exc
    manifest = Manifest.from_json(data, str(path))
    for part in manifest.parts:
        resolve_inside(root, part.views, "manifest part")
        resolve_inside(root, part.panoramas, "manifest part")
    for shard in manifest.shards:
        resolve_inside(root, shard.path, "manifest shard")
    manifest.checksum = str(data.get("checksum", ""))
    if manifest.checksum and manifest.checksum != manifest_checksum(data):
        raise CityDBIntegrityError(
            f"{path} must hash to the checksum recorded at its last commit "
            f"({manifest.checksum[:12]}...), got content hashing to "
            f"{manifest_checksum(data)[:12]}...: it was edited or damaged since (a camera, "
            "depth_scale_m, a shard size, a part changed). Restore it, or rebuild it from the "
            f"parts with `python -m cityenv.citydb repair {root}`."
        )
    return manifest


def committed_files(root: Path) -> dict[str, list[Path]]:
    """The part and shard files in a database folder (what a manifest would list), by kind."""
    if not root.is_dir():
        return {}
    found = {
        VIEWS_DIR: sorted((root / VIEWS_DIR).glob(PART_PATTERN)),
        PANORAMAS_DIR: sorted((root / PANORAMAS_DIR).glob(PART_PATTERN)),
        BLOBS_DIR: sorted((root / BLOBS_DIR).glob(SHARD_PATTERN)),
    }
    return {kind: files for kind, files in found.items() if files}


def describe_files(found: dict[str, list[Path]]) -> str:
    """``"3 view parts, 3 panorama parts and 1 shard (12345 bytes)"``-style text."""
    names = {VIEWS_DIR: "view part", PANORAMAS_DIR: "panorama part", BLOBS_DIR: "shard"}
    words = [
        f"{len(files)} {names[kind]}{'s' if len(files) != 1 else ''}"
        for kind, files in found.items()
    ]
    size = sum(f.stat().st_size for files in found.values() for f in files)
    return f"{', '.join(words)} ({size} bytes)"


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Atomically replace ``root/manifest.json`` (temp file, fsync, ``os.replace``, dir fsync).

    The file records the SHA-256 of its own content (``checksum``), so an edit made by hand is
    caught when the database is opened.
    """
    tmp = root / (MANIFEST_NAME + ".tmp")
    data = manifest.to_json()
    manifest.checksum = data["checksum"] = manifest_checksum(data)
    payload = json.dumps(data, indent=1).encode("utf-8")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / MANIFEST_NAME)
    fsync_dir(root)


def fsync_dir(path: Path) -> None:
    """Flush a directory entry to disk (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def resolve_inside(root: Path, relative: str, what: str) -> Path:
    """Resolve ``relative`` against ``root``, refusing anything that lands outside it.

    Symlinks are followed, so a link inside the folder pointing elsewhere is refused too.

    Args:
        root: The database folder.
        relative: A path from the manifest (POSIX separators, relative to ``root``).
        what: What names the path, for the error message.

    Returns:
        The resolved absolute path.

    Raises:
        UnsafePathError: If the path is absolute or resolves outside ``root``.
    """
    base = root.resolve()
    target = (base / relative).resolve()
    if os.path.isabs(relative) or not target.is_relative_to(base):
        raise UnsafePathError(
            f"{what} path must stay inside the database folder {base}, got {relative!r} "
            f"(resolves to {target}); the manifest was tampered with or copied without its files. "
            "Restore the manifest or rebuild the database."
        )
    return target


# --- codecs -------------------------------------------------------------------------------------
def encode_image(image: np.ndarray, image_format: str, jpeg_quality: int = 95) -> bytes:
    """Encode an RGB image.

    Args:
        image: RGB image, shape ``(H, W, 3)`` uint8.
        image_format: ``"png"`` (lossless) or ``"jpeg"``.
        jpeg_quality: JPEG quality 1-100 (ignored for PNG).

    Returns:
        The encoded bytes.

    Raises:
        ShapeMismatchError: If the image is not ``(H, W, 3)`` uint8.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ShapeMismatchError(
            f"image must be an RGB array of shape (H, W, 3) and dtype uint8, got shape "
            f"{image.shape} dtype {image.dtype}; convert with np.asarray(img, np.uint8)."
        )
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # OpenCV codecs expect BGR channel order
    if image_format == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    else:
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    if not ok:  # pragma: no cover - OpenCV only fails on unsupported input, checked above
        raise ShapeMismatchError(f"OpenCV could not encode an image of shape {image.shape}.")
    return buf.tobytes()


def check_depth(depth: np.ndarray) -> None:
    """Raise :class:`InvalidDepthError` unless ``depth`` is finite and ``>= 0``.

    Args:
        depth: Metric z-depth, shape ``(H, W)``.
    """
    finite = np.isfinite(depth)
    if not finite.all():
        raise InvalidDepthError(
            f"depth must be finite metric z-depth (0 = none), got {int((~finite).sum())} "
            "NaN/inf pixels; replace missing or infinite depth (sky) with 0."
        )
    if depth.size and depth.min() < 0:
        raise InvalidDepthError(
            f"depth must be >= 0 metres (0 = none), got a minimum of {float(depth.min())}; "
            "replace invalid depth with 0 or check the sign convention of the depth source."
        )


def encode_depth(depth: np.ndarray, scale_m: float) -> bytes:
    """Encode a metric z-depth map as a 16-bit PNG of ``round(depth / scale_m)``.

    Depth 0 stays 0 ("none"); positive depth below half a step becomes 1 (not "none"); depth past
    ``65535 * scale_m`` is stored as 0 because a clipped value would put the surface at a wrong
    distance.

    Args:
        depth: Metric z-depth, shape ``(H, W)`` float, finite, ``>= 0``.
        scale_m: Metres per stored unit.

    Returns:
        The PNG bytes.

    Raises:
        InvalidDepthError: If the depth is negative or not finite.
    """
    depth = np.asarray(depth, dtype=np.float64)
    check_depth(depth)
    code = np.rint(depth / scale_m)
    code[(code < 1) & (depth > 0)] = 1
    code[code > DEPTH_MAX_CODE] = 0
    ok, buf = cv2.imencode(".png", code.astype(np.uint16), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover
        raise InvalidDepthError(f"OpenCV could not encode a depth map of shape {depth.shape}.")
    return buf.tobytes()


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Decode an encoded RGB image to ``(H, W, 3)`` uint8.

    Raises:
        CorruptImageError: If the bytes do not decode to a 3-channel 8-bit image.
    """
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.ndim != 3 or bgr.dtype != np.uint8:
        raise CorruptImageError(
            f"{where}: expected an encoded PNG/JPEG RGB image, got {len(data)} bytes that do not "
            "decode; the shard is damaged, restore it or re-ingest the panorama."
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_depth(data: bytes, scale_m: float, where: str) -> np.ndarray:
    """Decode a 16-bit depth PNG to metric z-depth ``(H, W)`` float32.

    Raises:
        CorruptImageError: If the bytes do not decode to a single-channel 16-bit image.
    """
    code = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if code is None or code.ndim != 2 or code.dtype != np.uint16:
        raise CorruptImageError(
            f"{where}: expected a 16-bit single-channel depth PNG, got {len(data)} bytes that do "
            "not decode to one; the shard is damaged, restore it or re-ingest the panorama."
        )
    return code.astype(np.float32) * np.float32(scale_m)
