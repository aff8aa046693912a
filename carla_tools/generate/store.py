"""The clip store: rendered target clips on disk (format: ``docs/clips.md``).

Layout under the store root::

    store.json                         format name and version
    clips/<clip_id>/clip.json          the clip's metadata (one index row)
    clips/<clip_id>/frames.npz         rgb (F, H, W, 3) uint8, depth (F, H, W) float16 metres,
                                       dynamic (F, H, ceil(W / 8)) uint8 bit-packed along W
    clips/<clip_id>/poses.parquet      per frame: frame, t, time, x y z, qw qx qy qz
    index/part-<shard>-of-<n>.parquet  one row per clip (the clip.json fields)

A clip folder is written under ``clips/.tmp-<clip_id>-<pid>`` and renamed into place when
complete, so a clip folder that exists is whole; leftovers of an interrupted run are removed by
:meth:`ClipStore.clean`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Trajectory

FORMAT_NAME = "cityenv-clips"
FORMAT_VERSION = 1

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


@dataclass(frozen=True)
class Clip:
    """One clip read back from the store.

    Attributes:
        meta: The clip's index row (keys of :data:`INDEX_SCHEMA`).
        rgb: ``(F, H, W, 3)`` uint8.
        depth: ``(F, H, W)`` float32 metric z-depth, 0 = none.
        dynamic: ``(F, H, W)`` bool, true on vehicles and pedestrians.
        trajectory: ``F`` camera-to-world poses with timestamps in seconds from the first frame.
        times: ``F`` world times (UTC).
        camera: The intrinsics of every frame.
    """

    meta: dict[str, Any]
    rgb: np.ndarray
    depth: np.ndarray
    dynamic: np.ndarray
    trajectory: Trajectory
    times: list[datetime]
    camera: PinholeCamera


def _poses_table(trajectory: Trajectory, start: datetime) -> pa.Table:
    q = np.array([[r.w, r.x, r.y, r.z] for r in trajectory.rotations])
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
        return value.astimezone(timezone.utc).isoformat()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in clip.json")


class ClipStore:
    """Reader and writer of a clip store folder (created if missing).

    Args:
        root: The store folder.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        (self.root / "clips").mkdir(parents=True, exist_ok=True)
        (self.root / "index").mkdir(exist_ok=True)
        marker = self.root / "store.json"
        if marker.exists():
            info = json.loads(marker.read_text())
            if info.get("format") != FORMAT_NAME or info.get("version") != FORMAT_VERSION:
                raise ValueError(
                    f"expected a {FORMAT_NAME} v{FORMAT_VERSION} store at {self.root}, got {info}."
                )
        else:
            _atomic_write(marker, json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION}))

    def clip_dir(self, clip_id: str) -> Path:
        """Folder of a clip (it exists only once the clip is complete)."""
        return self.root / "clips" / clip_id

    def has_clip(self, clip_id: str) -> bool:
        """Whether a complete clip with this id is stored."""
        return (self.clip_dir(clip_id) / "clip.json").exists()

    def clean(self) -> int:
        """Remove partial clip folders left by an interrupted run; returns how many."""
        stale = [p for p in (self.root / "clips").iterdir() if p.name.startswith(".tmp-")]
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
        return len(stale)

    def write_clip(
        self,
        meta: dict[str, Any],
        rgb: np.ndarray,
        depth: np.ndarray,
        dynamic: np.ndarray,
        trajectory: Trajectory,
    ) -> Path:
        """Write one clip atomically (a rerun that finds it skips it).

        Args:
            meta: Index row; keys of :data:`INDEX_SCHEMA` (``clip_id``, ``start_time``, ...).
            rgb: ``(F, H, W, 3)`` uint8.
            depth: ``(F, H, W)`` float metric z-depth, 0 = none (stored as float16).
            dynamic: ``(F, H, W)`` bool.
            trajectory: ``F`` poses, timestamps in seconds from ``meta["start_time"]``.

        Returns:
            The clip's folder.
        """
        f = len(trajectory)
        if rgb.shape[0] != f or depth.shape[:1] != (f,) or dynamic.shape[:1] != (f,):
            raise ValueError(
                f"expected {f} frames of rgb, depth and dynamic (one per pose), got "
                f"{rgb.shape}, {depth.shape}, {dynamic.shape}."
            )
        final = self.clip_dir(meta["clip_id"])
        tmp = final.with_name(f".tmp-{meta['clip_id']}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        np.savez_compressed(
            tmp / "frames.npz",
            rgb=rgb,
            depth=depth.astype(np.float16),
            dynamic=np.packbits(dynamic.astype(bool), axis=-1),
        )
        pq.write_table(_poses_table(trajectory, meta["start_time"]), tmp / "poses.parquet")
        (tmp / "clip.json").write_text(json.dumps(meta, default=_json_default, indent=1))
        if final.exists():  # an older complete copy: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final

    def read_meta(self, clip_id: str) -> dict[str, Any]:
        """A clip's metadata (``start_time`` as an aware datetime)."""
        meta = json.loads((self.clip_dir(clip_id) / "clip.json").read_text())
        meta["start_time"] = datetime.fromisoformat(meta["start_time"])
        return meta

    def read_clip(self, clip_id: str) -> Clip:
        """Load a whole clip (frames decoded, poses as a Trajectory)."""
        folder = self.clip_dir(clip_id)
        meta = self.read_meta(clip_id)
        with np.load(folder / "frames.npz") as z:
            rgb, depth, bits = z["rgb"], z["depth"].astype(np.float32), z["dynamic"]
        dynamic = np.unpackbits(bits, axis=-1, count=rgb.shape[2]).astype(bool)
        poses = pq.read_table(folder / "poses.parquet").to_pydict()
        traj = Trajectory(
            np.stack([poses["x"], poses["y"], poses["z"]], axis=1),
            np.stack([poses[c] for c in ("qw", "qx", "qy", "qz")], axis=1),
            np.asarray(poses["t"]),
        )
        camera = PinholeCamera(
            meta["width"], meta["height"], meta["fx"], meta["fy"], meta["cx"], meta["cy"]
        )
        return Clip(meta, rgb, depth, dynamic, traj, poses["time"], camera)

    def clip_ids(self) -> list[str]:
        """Ids of every complete clip in the folder, sorted."""
        return sorted(
            p.name
            for p in (self.root / "clips").iterdir()
            if not p.name.startswith(".") and (p / "clip.json").exists()
        )

    def write_index(self, clip_ids: Iterable[str], shard: int = 0, num_shards: int = 1) -> Path:
        """Write the index part of one shard from its clips' ``clip.json`` files."""
        rows = [self.read_meta(c) for c in clip_ids]
        table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
        path = self.root / "index" / f"part-{shard:04d}-of-{num_shards:04d}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return path

    def index(self) -> pa.Table:
        """The clip index: every part concatenated, one row per clip id, sorted by id."""
        parts = sorted((self.root / "index").glob("part-*.parquet"))
        if not parts:
            return INDEX_SCHEMA.empty_table()
        table = pa.concat_tables([pq.read_table(p, schema=INDEX_SCHEMA) for p in parts])
        ids = table.column("clip_id").to_pylist()
        first = sorted({c: i for i, c in reversed(list(enumerate(ids)))}.items())
        return table.take([i for _, i in first])


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
