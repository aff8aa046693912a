"""The clip store: rendered target clips for training and evaluation (format: ``docs/clips.md``).

A clip is one continuous camera pass (a traversal) with, per frame, RGB, metric depth, a mask of
moving objects, a camera-to-world pose and a capture time, plus a caption. The data generator
(``python -m carla_tools.generate``) writes stores; this module defines the format (names,
version, Arrow schemas, the encodings) and reads it, so the library's consumers (training,
evaluation) need nothing from ``carla_tools``::

    from cityenv.citydb.clips import ClipStore

    store = ClipStore("data/town/clips", split="train")   # test clips cannot be read through it
    for info in store.clips(kind="vehicle"):
        window = store.read_clip(info.clip_id, frames=range(0, 16), depth=False)
        window.rgb            # (16, H, W, 3) uint8
        window.trajectory     # 16 camera-to-world poses (cityenv.geometry.pose.Trajectory)

Layout under the store root::

    store.json                         {"format": "cityenv-clips", "version": 1, "anchor": {...}}
    clips/<clip_id>/clip.json          the clip's index row
    clips/<clip_id>/frames.npz         rgb (F, H, W, 3) uint8, depth (F, H, W) float16 metres,
                                       dynamic (F, H, ceil(W / 8)) uint8 bit-packed along W
    clips/<clip_id>/poses.parquet      per frame: frame, t, time, x y z, qw qx qy qz
    index/part-<shard>-of-<n>.parquet  one row per clip (the clip.json fields)

The frames of a clip are zlib-compressed arrays with frames on the first axis, so a window of
frames is read by streaming the array up to its last frame: the frames after it are never
decompressed and only the window is held in memory.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cityenv.cache import LRUCache
from cityenv.errors import (
    ClipNotFoundError,
    ClipSplitError,
    ClipStoreFormatError,
    ClipStoreNotFoundError,
    FrameRangeError,
    check_name,
)
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.geodesy import LocalFrame
from cityenv.geometry.pose import Trajectory

__all__ = [
    "CLIPS_DIR",
    "CLIP_FILE",
    "CLIP_KINDS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "FRAMES_FILE",
    "INDEX_DIR",
    "INDEX_SCHEMA",
    "POSES_FILE",
    "POSE_SCHEMA",
    "SPLITS",
    "STORE_FILE",
    "Clip",
    "ClipInfo",
    "ClipStore",
    "clip_json",
    "encode_frames",
    "index_part_name",
    "poses_table",
    "read_clip_row",
    "reference_traversal",
    "split_traversals",
    "anchor_mismatch",
    "resize_frames",
    "resize_masks",
    "store_marker",
]

FORMAT_NAME = "cityenv-clips"
"""Value of ``format`` in ``store.json``."""

FORMAT_VERSION = 1
"""Value of ``version`` in ``store.json``; readers accept this version only."""

STORE_FILE = "store.json"
CLIPS_DIR = "clips"
INDEX_DIR = "index"
CLIP_FILE = "clip.json"
FRAMES_FILE = "frames.npz"
POSES_FILE = "poses.parquet"

SPLITS = ("train", "test")
"""The splits, by area: no test clip shares ground with a training clip."""

CLIP_KINDS = ("vehicle", "pedestrian", "free")
"""What carries the camera: a car, a person on the sidewalk, or a free-flying camera."""

POSE_SCHEMA = pa.schema(
    [
        pa.field("frame", pa.int32(), nullable=False),
        pa.field("t", pa.float64(), nullable=False),
        pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
        *(pa.field(c, pa.float64(), nullable=False) for c in ("x", "y", "z")),
        *(pa.field(c, pa.float64(), nullable=False) for c in ("qw", "qx", "qy", "qz")),
    ]
)
"""Columns of a clip's ``poses.parquet``: camera-to-world pose (ENU, OpenCV camera) per frame."""

INDEX_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("traversal_id", pa.string(), nullable=False),
        pa.field("start_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("weather", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("num_frames", pa.int32(), nullable=False),
        pa.field("fps", pa.float64(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        *(pa.field(c, pa.float64(), nullable=False) for c in ("fx", "fy", "cx", "cy")),
        pa.field("cells", pa.list_(pa.string()), nullable=False),
        *(pa.field(c, pa.float64(), nullable=False) for c in ("xmin", "ymin", "xmax", "ymax")),
        pa.field("seed", pa.int64(), nullable=False),
    ]
)
"""Columns of the clip index (also the keys of each ``clip.json``)."""


# --- the split convention of a generator output -------------------------------------------------
def reference_traversal(time_tag: str, split: str) -> str:
    """Traversal id of one reference capture run's panoramas in one split's areas.

    The generator writes references to a CityDB beside the clip store under these ids, so that a
    consumer can drop test-area references (:func:`split_traversals`).
    """
    return f"ref-{time_tag}-{check_name('split', split, SPLITS)}"


def split_traversals(traversal_ids: Iterable[str], split: str) -> list[str]:
    """The reference traversals of one split's areas among ``traversal_ids``.

    ``split_traversals(db.traversal_ids, "test")`` are what to pass as ``exclude_traversals`` when
    retrieving references for training clips, so no test-area imagery is seen in training.

    Raises:
        UnknownNameError: If ``split`` is not one of :data:`SPLITS`.
    """
    split = check_name("split", split, SPLITS)
    return [t for t in traversal_ids if t.startswith("ref-") and t.endswith(f"-{split}")]


# --- records --------------------------------------------------------------------------------------
def _utc(when: datetime) -> datetime:
    """An aware UTC datetime (naive = UTC)."""
    if when.tzinfo is None:
        return when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc)


@dataclass(frozen=True)
class ClipInfo:
    """One clip's index row, typed.

    Attributes:
        clip_id: Unique id in the store (``clip-<index>``).
        kind: One of :data:`CLIP_KINDS`.
        split: ``"train"`` or ``"test"`` (by area).
        traversal_id: The clip's capture pass; never a reference traversal of the CityDB.
        start_time: World (capture) time of frame 0, aware UTC.
        weather: Weather name (``clear``, ``overcast``, ``wet``, ``fog``).
        caption: Text prompt describing the clip.
        num_frames: Frames ``F``.
        fps: Frame rate.
        camera: Pinhole intrinsics of every frame.
        cells: Area cells the trajectory touches, ``c<ix>_<iy>``.
        bounds: ENU bounding box of the camera positions ``(xmin, ymin, xmax, ymax)``, metres.
        seed: Plan seed the trajectory was drawn from.
    """

    clip_id: str
    kind: str
    split: str
    traversal_id: str
    start_time: datetime
    weather: str
    caption: str
    num_frames: int
    fps: float
    camera: PinholeCamera
    cells: tuple[str, ...]
    bounds: tuple[float, float, float, float]
    seed: int

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ClipInfo:
        """From an index row or ``clip.json`` dict (``start_time`` a datetime or ISO text).

        Raises:
            ClipStoreFormatError: If a column is missing or of the wrong type.
        """
        missing = [name for name in INDEX_SCHEMA.names if name not in row]
        if missing:
            raise ClipStoreFormatError(
                f"expected every index column {INDEX_SCHEMA.names}, got a row without {missing}."
            )
        try:
            start = row["start_time"]
            start = _utc(datetime.fromisoformat(start) if isinstance(start, str) else start)
            camera = PinholeCamera(
                int(row["width"]), int(row["height"]),
                float(row["fx"]), float(row["fy"]), float(row["cx"]), float(row["cy"]),
            )  # fmt: skip
            return cls(
                clip_id=str(row["clip_id"]), kind=str(row["kind"]), split=str(row["split"]),
                traversal_id=str(row["traversal_id"]), start_time=start,
                weather=str(row["weather"]), caption=str(row["caption"]),
                num_frames=int(row["num_frames"]), fps=float(row["fps"]), camera=camera,
                cells=tuple(str(c) for c in row["cells"]),
                bounds=tuple(float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")),
                seed=int(row["seed"]),
            )  # fmt: skip
        except (TypeError, ValueError) as error:
            raise ClipStoreFormatError(
                f"clip {row.get('clip_id')!r}: malformed index row ({error})."
            ) from error

    def to_row(self) -> dict[str, Any]:
        """The index row (keys of :data:`INDEX_SCHEMA`)."""
        cam = self.camera
        xmin, ymin, xmax, ymax = self.bounds
        return {
            "clip_id": self.clip_id, "kind": self.kind, "split": self.split,
            "traversal_id": self.traversal_id, "start_time": self.start_time,
            "weather": self.weather, "caption": self.caption, "num_frames": self.num_frames,
            "fps": self.fps, "width": cam.width, "height": cam.height, "fx": cam.fx,
            "fy": cam.fy, "cx": cam.cx, "cy": cam.cy, "cells": list(self.cells),
            "xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax, "seed": self.seed,
        }  # fmt: skip


@dataclass(frozen=True, eq=False)
class Clip:
    """Frames of one clip (all of them or a selection) read from the store.

    Attributes:
        info: The clip's index row.
        frames: Index in the clip of each frame read, ``(T,)`` int64 (increasing).
        rgb: ``(T, H, W, 3)`` uint8.
        depth: ``(T, H, W)`` float32 metric z-depth, 0 = none; None if not read.
        dynamic: ``(T, H, W)`` bool, true on vehicles and pedestrians; None if not read.
        trajectory: ``T`` camera-to-world poses (ENU world, OpenCV camera); timestamps are
            seconds since the clip's frame 0 (so a window keeps its place in the clip).
        times: ``T`` world (capture) times, aware UTC.
    """

    info: ClipInfo
    frames: np.ndarray
    rgb: np.ndarray
    depth: np.ndarray | None
    dynamic: np.ndarray | None
    trajectory: Trajectory
    times: list[datetime]

    @property
    def camera(self) -> PinholeCamera:
        """Intrinsics of every frame."""
        return self.info.camera

    @property
    def caption(self) -> str:
        """The clip's text prompt."""
        return self.info.caption

    def __len__(self) -> int:
        return len(self.frames)


# --- encodings (the writer in carla_tools.generate.store uses these) ------------------------------
def store_marker(anchor: LocalFrame | None = None) -> str:
    """Contents of ``store.json``; ``anchor``, the city's ENU frame the poses are in, is recorded
    when given (stores written without one read as ``ClipStore.anchor is None``)."""
    marker: dict[str, Any] = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
    if anchor is not None:
        marker["anchor"] = {"lat": anchor.lat, "lon": anchor.lon, "height": anchor.height}
    return json.dumps(marker)


def index_part_name(shard: int, num_shards: int) -> str:
    """File name of one shard's index part under ``index/``."""
    return f"part-{shard:04d}-of-{num_shards:04d}.parquet"


def encode_frames(rgb: np.ndarray, depth: np.ndarray, dynamic: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays of ``frames.npz`` (save with ``np.savez_compressed(path, **arrays)``).

    Args:
        rgb: ``(F, H, W, 3)`` uint8.
        depth: ``(F, H, W)`` float metric z-depth, 0 = none (stored as float16: 11 bits, 1 mm at
            1 m, 6 cm at 100 m).
        dynamic: ``(F, H, W)`` bool (stored bit-packed along W).
    """
    return {
        "rgb": np.ascontiguousarray(rgb, dtype=np.uint8),
        "depth": np.ascontiguousarray(depth, dtype=np.float16),
        "dynamic": np.packbits(np.asarray(dynamic, dtype=bool), axis=-1),
    }


def poses_table(trajectory: Trajectory, start_time: datetime) -> pa.Table:
    """``poses.parquet`` of a clip: ``trajectory`` timestamps are seconds from ``start_time``."""
    q = np.array([[r.w, r.x, r.y, r.z] for r in trajectory.rotations])
    start = _utc(start_time)
    times = [start + timedelta(seconds=float(t)) for t in trajectory.timestamps]
    cols = {
        "frame": np.arange(len(trajectory), dtype=np.int32),
        "t": trajectory.timestamps,
        "time": times,
        "x": trajectory.positions[:, 0],
        "y": trajectory.positions[:, 1],
        "z": trajectory.positions[:, 2],
        "qw": q[:, 0],
        "qx": q[:, 1],
        "qy": q[:, 2],
        "qz": q[:, 3],
    }
    return pa.table(cols, schema=POSE_SCHEMA)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return _utc(value).isoformat()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in {CLIP_FILE}")


def clip_json(row: dict[str, Any]) -> str:
    """Text of a clip's ``clip.json`` from its index row.

    Raises:
        ClipStoreFormatError: If the row lacks an index column or holds a wrong type.
    """
    ClipInfo.from_row(row)  # the one check of a row's columns and types
    return json.dumps(row, default=_json_default, indent=1)


def read_clip_row(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """A clip folder's ``clip.json`` as an index row (``start_time`` an aware datetime).

    Raises:
        ClipNotFoundError: If the folder has no ``clip.json`` (no complete clip).
        ClipStoreFormatError: If it is not valid JSON or lacks a column.
    """
    path = Path(folder) / CLIP_FILE
    try:
        row = json.loads(path.read_text())
        row["start_time"] = _utc(datetime.fromisoformat(row["start_time"]))
    except FileNotFoundError:
        raise ClipNotFoundError(f"no complete clip at {path.parent} (no {CLIP_FILE}).") from None
    except (ValueError, KeyError, TypeError) as error:
        raise ClipStoreFormatError(
            f"expected a JSON index row in {path}, got a malformed file ({error}); "
            "regenerate the clip (delete its folder and rerun the generator)."
        ) from error
    ClipInfo.from_row(row)
    return row


# --- reading frames -------------------------------------------------------------------------------
def _frame_indices(frames: slice | range | Sequence[int] | None, n: int) -> np.ndarray:
    """Frame numbers ``(T,)`` int64 in ``[0, n)`` from a selection (negative counts from the end).

    Raises:
        FrameRangeError: If a frame or a slice bound lies outside the clip.
    """
    if frames is None:
        return np.arange(n, dtype=np.int64)
    if isinstance(frames, slice):
        for bound in (frames.start, frames.stop):
            if bound is not None and not -n <= bound <= n:
                raise FrameRangeError(
                    f"expected frame bounds in [-{n}, {n}] for a clip of {n} frames, got "
                    f"{frames}; list the clip's length with ClipInfo.num_frames."
                )
        return np.arange(n, dtype=np.int64)[frames]
    idx = np.asarray(frames, dtype=np.int64).reshape(-1)
    bad = idx[(idx < -n) | (idx >= n)]
    if bad.size:
        raise FrameRangeError(
            f"expected frames in [0, {n}) for a clip of {n} frames, got {bad.tolist()}; "
            "list the clip's length with ClipInfo.num_frames."
        )
    return np.where(idx < 0, idx + n, idx)


_CHUNK = 1 << 20  # bytes decompressed per read: large reads of a zip member copy quadratically


def _read_exactly(stream: io.BufferedIOBase, out: np.ndarray, where: str) -> None:
    view = memoryview(out.reshape(-1).view(np.uint8))
    done = 0
    while done < len(view):
        chunk = stream.read(min(len(view) - done, _CHUNK))
        if not chunk:
            raise ClipStoreFormatError(f"{where} ends early; the file is truncated.")
        view[done : done + len(chunk)] = chunk
        done += len(chunk)


def _skip(stream: io.BufferedIOBase, count: int, where: str) -> None:
    while count > 0:  # a compressed member cannot seek: decompress and drop
        chunk = stream.read(min(count, _CHUNK))
        if not chunk:
            raise ClipStoreFormatError(f"{where} ends early; the file is truncated.")
        count -= len(chunk)


def _read_npz_frames(
    path: Path, name: str, rows: np.ndarray, shape: tuple[int, ...], dtype: np.dtype
) -> np.ndarray:
    """Rows ``rows`` of one array of an ``.npz`` file, decompressing only up to the last one.

    Args:
        path: The ``.npz`` file.
        name: The array's name in it.
        rows: Row numbers along the first axis, ``(T,)`` int64, any order, in range.
        shape: Expected full shape of the array ``(F, ...)``.
        dtype: Expected dtype.

    Returns:
        ``(T, *shape[1:])`` array of ``dtype``, rows in the order asked.

    Raises:
        ClipStoreFormatError: If the array is missing or its shape or dtype differ.
    """
    where = f"{path}[{name}]"
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:
        raise ClipStoreFormatError(f"expected a .npz archive at {path}, got: {error}") from error
    with archive, _open_member(archive, name, where) as stream:
        version = np.lib.format.read_magic(stream)
        header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        got_shape, fortran, got_dtype = header(stream)
        if tuple(got_shape) != tuple(shape) or got_dtype != dtype or fortran:
            raise ClipStoreFormatError(
                f"expected {where} of shape {tuple(shape)} {np.dtype(dtype)} in C order, got "
                f"{tuple(got_shape)} {got_dtype}{' in Fortran order' if fortran else ''}."
            )
        row_bytes = math.prod(shape[1:]) * np.dtype(dtype).itemsize
        order = np.unique(rows)
        out = np.empty((len(order), *shape[1:]), dtype)
        position = 0
        for j, row in enumerate(order):
            _skip(stream, (int(row) - position) * row_bytes, where)
            _read_exactly(stream, out[j], where)
            position = int(row) + 1
    if len(order) == len(rows) and np.array_equal(order, rows):
        return out
    return out[np.searchsorted(order, rows)]


def _open_member(archive: zipfile.ZipFile, name: str, where: str) -> io.BufferedIOBase:
    try:
        return archive.open(f"{name}.npy")
    except KeyError:
        raise ClipStoreFormatError(
            f"expected an array {name!r} in {where.rpartition('[')[0]}, got only "
            f"{[n.removesuffix('.npy') for n in archive.namelist()]}."
        ) from None


# --- the reader -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Header:
    """What a clip's small files hold: its row, poses and per-frame times."""

    info: ClipInfo
    trajectory: Trajectory
    times: list[datetime]


class ClipStore:
    """A read-only clip store: list clips, read frames, poses, masks and captions.

    Args:
        root: The store folder (``clips/`` of a generator output).
        split: If given, only this split's clips are listed and read; reading another split's
            clip raises :class:`~cityenv.errors.ClipSplitError`. Training opens its store with
            ``split="train"`` so test areas are never read.
        cache_size: Clips whose small files (row, poses, times) are kept in memory.

    Attributes:
        root: The store folder.
        split: The split the store was opened for, or None for all.
        anchor: The city's ENU frame the poses are in (``None`` for a store written without
            one); a CityDB used with the store must have the same anchor.

    Raises:
        ClipStoreNotFoundError: If ``root`` holds no ``store.json``.
        ClipStoreFormatError: If ``store.json`` names another format or version.
        UnknownNameError: If ``split`` is not one of :data:`SPLITS`.
    """

    def __init__(
        self, root: str | os.PathLike[str], *, split: str | None = None, cache_size: int = 256
    ) -> None:
        self.root = Path(root)
        self.split = None if split is None else check_name("split", split, SPLITS)
        marker = _check_marker(self.root)
        self.anchor = _anchor(marker.get("anchor"), self.root)
        self._index: pa.Table | None = None
        self._headers: LRUCache[str, _Header] = LRUCache(cache_size)

    def __repr__(self) -> str:
        return f"ClipStore({str(self.root)!r}, split={self.split!r})"

    # --- listing ----------------------------------------------------------------------------------
    def index(self, *, split: str | None = None, kind: str | None = None) -> pa.Table:
        """The clip index: one row per clip (:data:`INDEX_SCHEMA`), sorted by ``clip_id``.

        Read once (the index parts written at the end of each generator run); reopen the store
        to see a later run's clips.

        Args:
            split: Keep this split's clips only.
            kind: Keep this kind's clips only (one of :data:`CLIP_KINDS`).

        Raises:
            UnknownNameError: For an unknown split or kind.
            ClipSplitError: For a split other than the one the store was opened for.
        """
        split = self._check_split(split)
        if kind is not None:
            check_name("kind", kind, CLIP_KINDS)
        table = self._full_index()
        for column, value in (("split", split), ("kind", kind)):
            if value is not None:
                table = table.filter(pc.equal(table.column(column), value))
        return table

    def clips(self, *, split: str | None = None, kind: str | None = None) -> list[ClipInfo]:
        """Rows of :meth:`index` as :class:`ClipInfo` (same filters)."""
        return [ClipInfo.from_row(r) for r in self.index(split=split, kind=kind).to_pylist()]

    def clip_ids(self, *, split: str | None = None, kind: str | None = None) -> list[str]:
        """Ids of the indexed clips, sorted (same filters as :meth:`index`)."""
        return self.index(split=split, kind=kind).column("clip_id").to_pylist()

    def __len__(self) -> int:
        return len(self.index())

    def has_clip(self, clip_id: str) -> bool:
        """Whether a complete clip with this id is stored (indexed or not, any split)."""
        return (self._clip_dir(clip_id) / CLIP_FILE).is_file()

    # --- one clip ---------------------------------------------------------------------------------
    def info(self, clip_id: str) -> ClipInfo:
        """A clip's row (from its ``clip.json``).

        Raises:
            ClipNotFoundError: If no complete clip has this id.
            ClipSplitError: If the clip is of a split the store was not opened for.
        """
        return self._header(clip_id).info

    def read_trajectory(self, clip_id: str) -> Trajectory:
        """Every frame's camera-to-world pose; timestamps in seconds from frame 0."""
        return self._header(clip_id).trajectory

    def read_times(self, clip_id: str) -> list[datetime]:
        """Every frame's world (capture) time, aware UTC."""
        return list(self._header(clip_id).times)

    def read_frames(
        self, clip_id: str, frames: slice | range | Sequence[int] | None = None
    ) -> np.ndarray:
        """RGB frames, ``(T, H, W, 3)`` uint8.

        Args:
            clip_id: The clip.
            frames: Which frames (a slice, range or list of frame numbers; negative counts
                from the end); all if None. Only frames up to the last one asked are
                decompressed.

        Raises:
            FrameRangeError: For frames outside the clip.
        """
        info = self.info(clip_id)
        rows = _frame_indices(frames, info.num_frames)
        return self._read_array(info, "rgb", rows)

    def read_depth(
        self, clip_id: str, frames: slice | range | Sequence[int] | None = None
    ) -> np.ndarray:
        """Metric z-depth ``(T, H, W)`` float32 (0 = none); ``frames`` as :meth:`read_frames`."""
        info = self.info(clip_id)
        rows = _frame_indices(frames, info.num_frames)
        return self._read_array(info, "depth", rows)

    def read_dynamic(
        self, clip_id: str, frames: slice | range | Sequence[int] | None = None
    ) -> np.ndarray:
        """Moving-object masks ``(T, H, W)`` bool; ``frames`` as :meth:`read_frames`."""
        info = self.info(clip_id)
        rows = _frame_indices(frames, info.num_frames)
        return self._read_array(info, "dynamic", rows)

    def read_clip(
        self,
        clip_id: str,
        frames: slice | range | Sequence[int] | None = None,
        *,
        depth: bool = True,
        dynamic: bool = True,
    ) -> Clip:
        """A clip, or a window of it, with poses and times.

        Args:
            clip_id: The clip.
            frames: Which frames, in increasing order (a slice, range or list; negative counts
                from the end); all if None.
            depth: Read the depth maps (else ``Clip.depth`` is None).
            dynamic: Read the moving-object masks (else ``Clip.dynamic`` is None).

        Raises:
            ClipNotFoundError: If no complete clip has this id.
            ClipSplitError: If the clip is of a split the store was not opened for.
            FrameRangeError: For frames outside the clip, or not increasing.
            ClipStoreFormatError: If a file of the clip is malformed.
        """
        header = self._header(clip_id)
        rows = _frame_indices(frames, header.info.num_frames)
        if len(rows) == 0 or np.any(np.diff(rows) <= 0):
            raise FrameRangeError(
                f"expected one or more increasing frame numbers (a trajectory runs forward), "
                f"got {rows.tolist()}; use read_frames for frames in any order."
            )
        traj = header.trajectory
        window = Trajectory(traj.positions[rows], traj.rotations[rows], traj.timestamps[rows])
        return Clip(
            info=header.info,
            frames=rows,
            rgb=self._read_array(header.info, "rgb", rows),
            depth=self._read_array(header.info, "depth", rows) if depth else None,
            dynamic=self._read_array(header.info, "dynamic", rows) if dynamic else None,
            trajectory=window,
            times=[header.times[i] for i in rows],
        )

    # --- internals --------------------------------------------------------------------------------
    def _clip_dir(self, clip_id: str) -> Path:
        if not isinstance(clip_id, str) or not clip_id or Path(clip_id).name != clip_id:
            raise ClipNotFoundError(f"expected a clip id such as 'clip-00000', got {clip_id!r}.")
        return self.root / CLIPS_DIR / clip_id

    def _check_split(self, split: str | None) -> str | None:
        """The split to list: the one asked (checked) or the store's own."""
        if split is not None:
            check_name("split", split, SPLITS)
        if self.split is None or split in (None, self.split):
            return split if split is not None else self.split
        raise ClipSplitError(
            f"this store was opened for split {self.split!r}, got a request for {split!r}; "
            "open another ClipStore without split= to read it."
        )

    def _full_index(self) -> pa.Table:
        if self._index is None:
            self._index = _read_index(self.root)
        return self._index

    def _header(self, clip_id: str) -> _Header:
        header = self._headers.get(clip_id)
        if header is None:
            header = self._load_header(clip_id)
            self._headers.put(clip_id, header)
        if self.split is not None and header.info.split != self.split:
            raise ClipSplitError(
                f"clip {clip_id!r} is in split {header.info.split!r}, but this store was "
                f"opened for split {self.split!r}; test areas stay out of training."
            )
        return header

    def _load_header(self, clip_id: str) -> _Header:
        folder = self._clip_dir(clip_id)
        if not (folder / CLIP_FILE).is_file():
            raise ClipNotFoundError(
                f"no complete clip {clip_id!r} in the clip store at {self.root}; list the "
                "stored clips with ClipStore.clip_ids()."
            )
        info = ClipInfo.from_row(read_clip_row(folder))
        trajectory, times = _read_poses(folder / POSES_FILE, info)
        return _Header(info, trajectory, times)

    def _read_array(self, info: ClipInfo, name: str, rows: np.ndarray) -> np.ndarray:
        f, h, w = info.num_frames, info.camera.height, info.camera.width
        path = self._clip_dir(info.clip_id) / FRAMES_FILE
        if name == "rgb":
            return _read_npz_frames(path, "rgb", rows, (f, h, w, 3), np.dtype(np.uint8))
        if name == "depth":
            depth = _read_npz_frames(path, "depth", rows, (f, h, w), np.dtype(np.float16))
            return depth.astype(np.float32)
        bits = _read_npz_frames(path, "dynamic", rows, (f, h, (w + 7) // 8), np.dtype(np.uint8))
        return np.unpackbits(bits, axis=-1, count=w).astype(bool)


def _anchor(value: Any, root: Path) -> LocalFrame | None:
    if value is None:
        return None
    try:
        return LocalFrame(float(value["lat"]), float(value["lon"]), float(value["height"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ClipStoreFormatError(
            f"expected store.json's anchor at {root} as {{lat, lon, height}}, got {value!r}."
        ) from error


def _check_marker(root: Path) -> dict[str, Any]:
    marker = root / STORE_FILE
    try:
        info = json.loads(marker.read_text())
    except FileNotFoundError:
        raise ClipStoreNotFoundError(
            f"expected a clip store ({STORE_FILE}) at {root}, found none; generate one with "
            f"python -m carla_tools.generate out=DIR (the store is DIR/clips)."
        ) from None
    except ValueError as error:
        raise ClipStoreFormatError(f"expected JSON in {marker}, got: {error}") from error
    if not isinstance(info, dict) or (info.get("format"), info.get("version")) != (
        FORMAT_NAME,
        FORMAT_VERSION,
    ):
        raise ClipStoreFormatError(
            f"expected a {FORMAT_NAME} v{FORMAT_VERSION} store at {root}, got {info}; "
            "regenerate it with this version of the generator."
        )
    return info


def _read_index(root: Path) -> pa.Table:
    """Every index part concatenated, one row per clip id (first part wins), sorted by id."""
    parts = sorted((root / INDEX_DIR).glob("part-*.parquet"))
    if not parts:
        return INDEX_SCHEMA.empty_table()
    try:
        table = pa.concat_tables([pq.read_table(p, schema=INDEX_SCHEMA) for p in parts])
    except (pa.ArrowInvalid, OSError) as error:
        raise ClipStoreFormatError(
            f"expected index parts of the {FORMAT_NAME} schema under {root / INDEX_DIR}, got: "
            f"{error}"
        ) from error
    ids = table.column("clip_id").to_pylist()
    first = sorted({c: i for i, c in reversed(list(enumerate(ids)))}.items())
    return table.take([i for _, i in first])


def _read_poses(path: Path, info: ClipInfo) -> tuple[Trajectory, list[datetime]]:
    try:
        table = pq.read_table(path, schema=POSE_SCHEMA)
    except (pa.ArrowInvalid, OSError) as error:
        raise ClipStoreFormatError(
            f"expected {path} with columns {POSE_SCHEMA.names}, got: {error}"
        ) from error
    if table.num_rows != info.num_frames:
        raise ClipStoreFormatError(
            f"expected {info.num_frames} poses in {path} (one per frame), got {table.num_rows}."
        )
    cols = table.to_pydict()
    trajectory = Trajectory(
        np.stack([cols["x"], cols["y"], cols["z"]], axis=1),
        np.stack([cols[c] for c in ("qw", "qx", "qy", "qz")], axis=1),
        np.asarray(cols["t"]),
    )
    return trajectory, [_utc(t) for t in cols["time"]]


# --- helpers for consumers (training pairs, evaluation replays) -------------------------------
def resize_frames(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``(T, H, W, 3)`` -> ``(T, size[1], size[0], 3)`` (area filter); as is when equal."""
    if rgb.shape[2] == size[0] and rgb.shape[1] == size[1]:
        return rgb
    import cv2

    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in rgb])


def resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool ``(T, H, W)`` -> ``(T, size[1], size[0])`` (nearest); as is when equal."""
    if masks.shape[2] == size[0] and masks.shape[1] == size[1]:
        return masks
    import cv2

    small = [cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) for m in masks]
    return np.stack(small).astype(bool)


def anchor_mismatch(
    store: ClipStore, frame: LocalFrame, citydb: object = "the CityDB"
) -> str | None:
    """Why ``store``'s poses are not in ``frame`` (a CityDB's ENU frame), or ``None`` when they
    are (or the store, written before anchors were recorded, has none to compare)."""
    anchor = store.anchor
    if anchor is None:
        return None
    a = (anchor.lat, anchor.lon, anchor.height)
    b = (frame.lat, frame.lon, frame.height)
    if np.allclose(a, b, rtol=0.0, atol=1e-7):
        return None
    return (
        f"{citydb} is anchored at (lat, lon, height) {b} but the clip store {store.root} at {a}: "
        "their poses are in different ENU frames; use the CityDB generated with the clips."
    )
