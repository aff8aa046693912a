"""The clip store writer: the generator's rendered target clips onto disk.

The format (names, version, schemas, encodings) and the reader live in the library,
:mod:`cityenv.citydb.clips` (``docs/clips.md``); this module only writes. A clip folder is
written under ``clips/.tmp-<clip_id>-<pid>`` and renamed into place when complete, so a clip
folder that exists is whole; leftovers of an interrupted run are removed by
:meth:`ClipStoreWriter.clean`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cityenv.citydb.clips import (
    CLIP_FILE,
    CLIPS_DIR,
    FORMAT_NAME,
    FORMAT_VERSION,
    FRAMES_FILE,
    INDEX_DIR,
    INDEX_SCHEMA,
    POSES_FILE,
    STORE_FILE,
    clip_json,
    encode_frames,
    index_part_name,
    poses_table,
    read_clip_row,
    store_marker,
)
from cityenv.errors import ClipStoreFormatError, ShapeMismatchError
from cityenv.geometry.geodesy import LocalFrame
from cityenv.geometry.pose import Trajectory

__all__ = ["ClipStoreWriter"]


class ClipStoreWriter:
    """Writes clips and index parts into a clip store folder (created if missing).

    Several processes may write clips into one store at once (each clip folder is renamed into
    place atomically); each shard writes its own index part. Read the store with
    :class:`cityenv.citydb.clips.ClipStore`.

    Args:
        root: The store folder.
        anchor: The city's ENU frame the poses are in (recorded in ``store.json``).

    Raises:
        ClipStoreFormatError: If the folder holds a store of another format or version.
    """

    def __init__(self, root: str | os.PathLike[str], anchor: LocalFrame | None = None) -> None:
        self.root = Path(root)
        (self.root / CLIPS_DIR).mkdir(parents=True, exist_ok=True)
        (self.root / INDEX_DIR).mkdir(exist_ok=True)
        marker = self.root / STORE_FILE
        if marker.exists():
            info = json.loads(marker.read_text())
            if info.get("format") != FORMAT_NAME or info.get("version") != FORMAT_VERSION:
                raise ClipStoreFormatError(
                    f"expected a {FORMAT_NAME} v{FORMAT_VERSION} store at {self.root}, got "
                    f"{info}; write into a new folder."
                )
        else:
            _atomic_write(marker, store_marker(anchor))

    def clip_dir(self, clip_id: str) -> Path:
        """Folder of a clip (it exists only once the clip is complete)."""
        return self.root / CLIPS_DIR / clip_id

    def has_clip(self, clip_id: str) -> bool:
        """Whether a complete clip with this id is stored."""
        return (self.clip_dir(clip_id) / CLIP_FILE).exists()

    def clean(self) -> int:
        """Remove partial clip folders left by an interrupted run; returns how many."""
        stale = [p for p in (self.root / CLIPS_DIR).iterdir() if p.name.startswith(".tmp-")]
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
            meta: Index row; keys of :data:`~cityenv.citydb.clips.INDEX_SCHEMA` (``clip_id``,
                ``start_time``, ...).
            rgb: ``(F, H, W, 3)`` uint8.
            depth: ``(F, H, W)`` float metric z-depth, 0 = none (stored as float16).
            dynamic: ``(F, H, W)`` bool.
            trajectory: ``F`` poses, timestamps in seconds from ``meta["start_time"]``.

        Returns:
            The clip's folder.

        Raises:
            ShapeMismatchError: If the arrays do not hold one frame per pose.
            ClipStoreFormatError: If ``meta`` lacks an index column.
        """
        f = len(trajectory)
        if rgb.shape[0] != f or depth.shape[:1] != (f,) or dynamic.shape[:1] != (f,):
            raise ShapeMismatchError(
                f"expected {f} frames of rgb, depth and dynamic (one per pose), got "
                f"{rgb.shape}, {depth.shape}, {dynamic.shape}."
            )
        text = clip_json(meta)
        final = self.clip_dir(meta["clip_id"])
        tmp = final.with_name(f".tmp-{meta['clip_id']}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        np.savez_compressed(tmp / FRAMES_FILE, **encode_frames(rgb, depth, dynamic))
        pq.write_table(poses_table(trajectory, meta["start_time"]), tmp / POSES_FILE)
        (tmp / CLIP_FILE).write_text(text)
        if final.exists():  # an older complete copy: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final

    def write_index(self, clip_ids: Iterable[str], shard: int = 0, num_shards: int = 1) -> Path:
        """Write the index part of one shard from its clips' ``clip.json`` files."""
        rows = [read_clip_row(self.clip_dir(c)) for c in clip_ids]
        table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
        path = self.root / INDEX_DIR / index_part_name(shard, num_shards)
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
