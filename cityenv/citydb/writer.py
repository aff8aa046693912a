"""Append views and panoramas to a CityDB, crash-safely.

A writer session encodes images and depths into the current blob shard as they come and keeps the
view/panorama rows in memory; :meth:`CityDBWriter.commit` fsyncs the shard, writes one new Parquet
part per table and then atomically replaces ``manifest.json``. Until that replacement nothing of
the session is visible, so a crash at any point leaves the previous commit readable; the next
writer moves what the manifest does not list (part files, shards, shard tails) to
``lost+found/<time>/`` and goes on from the committed state.

A writer never deletes data it did not write itself in the same run: a folder holding parts or
shards but no manifest is refused (:class:`~cityenv.errors.ManifestLostError`; ``python -m
cityenv.citydb repair`` rebuilds the manifest), and leftovers are moved aside, not removed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import quaternion

from cityenv.citydb import format as fmt
from cityenv.citydb.format import ViewRecords, to_utc_micros
from cityenv.errors import (
    CityDBError,
    CityDBFormatError,
    CityDBIntegrityError,
    ManifestLostError,
    ShapeMismatchError,
    check_name,
)
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.geodesy import LocalFrame
from cityenv.geometry.pose import Pose

try:  # advisory single-writer lock; released by the OS when the process dies
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["CityDBWriter", "ViewRecords", "to_utc_micros"]

_PART_RE = re.compile(r"^part-\d{5,}\.parquet(\.tmp)?$")
_PART_NUMBER = re.compile(r"part-(\d+)\.parquet$")
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.bin$")
_KNOWN_ENTRIES = {fmt.VIEWS_DIR, fmt.PANORAMAS_DIR, fmt.BLOBS_DIR, fmt.LOCK_NAME, fmt.LOST_DIR}
_LOG = logging.getLogger(__name__)


def _as_pose(pose: Pose | np.ndarray) -> Pose:
    """A :class:`Pose` from a Pose or a camera-to-world ``(4, 4)`` matrix."""
    return pose if isinstance(pose, Pose) else Pose.from_matrix(pose)


class _Pending:
    """Rows of the current session that are not yet committed (column name -> values)."""

    def __init__(self) -> None:
        self.views: dict[str, list[Any]] = {f.name: [] for f in fmt.VIEW_SCHEMA}
        self.panoramas: dict[str, list[Any]] = {f.name: [] for f in fmt.PANORAMA_SCHEMA}
        self.panorama_index: dict[str, int] = {}

    @property
    def num_views(self) -> int:
        return len(self.views["view_id"])

    @property
    def num_panoramas(self) -> int:
        return len(self.panoramas["panorama_index"])


class CityDBWriter:
    """Append views and panoramas to a CityDB (creating it if needed); a context manager.

    One writer may hold a database at a time (an advisory lock). Rerunning an interrupted job is
    safe: :meth:`add_panorama` skips panoramas that are already committed, so a rerun resumes.

    Args:
        path: Database folder. It is created if missing; an existing folder must be a CityDB or
            empty.
        city: City name; required for a new database, checked against an existing one.
        frame: The city's ENU frame; required for a new database, checked against an existing one.
        image_format: ``"png"`` (lossless) or ``"jpeg"`` for this session's images; ``None`` uses
            the database's default (``"png"`` for a new one).
        jpeg_quality: JPEG quality 1-100.
        depth_scale_m: Metres per stored depth unit for a new database (default 0.01: 1 cm steps,
            up to 655.35 m); checked against an existing one if given.
        commit_every: Commit after this many new panoramas.
        max_shard_bytes: Start a new blob shard when the current one would grow past this.

    Raises:
        CityDBError: If another writer holds the database, the folder is not a CityDB and not
            empty, or a new database lacks ``city``/``frame``.
        ManifestLostError: If the folder holds parts or shards but no manifest (nothing is
            touched; ``python -m cityenv.citydb repair PATH`` rebuilds the manifest).
        CityDBFormatError: If ``city``, ``frame`` or ``depth_scale_m`` contradict the database.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        city: str | None = None,
        frame: LocalFrame | None = None,
        image_format: str | None = None,
        jpeg_quality: int = 95,
        depth_scale_m: float | None = None,
        commit_every: int = 100,
        max_shard_bytes: int = 2**31,
    ) -> None:
        if image_format is not None:
            check_name("image_format", image_format, fmt.IMAGE_FORMATS, error=CityDBError)
        if commit_every < 1 or max_shard_bytes < 1:
            raise CityDBError(
                f"commit_every and max_shard_bytes must be >= 1, got {commit_every} and "
                f"{max_shard_bytes}."
            )
        self.root = Path(path)
        self._lock_file: IO[bytes] | None = None
        self._shard_file: IO[bytes] | None = None
        self._closed = False
        self.commit_every = int(commit_every)
        self.max_shard_bytes = int(max_shard_bytes)
        self.jpeg_quality = int(jpeg_quality)
        self._prepare_folder()
        self._acquire_lock()
        try:
            self.manifest = self._load_or_create(city, frame, depth_scale_m, image_format)
            self.image_format = image_format or self.manifest.image_format
            self._recover()
        except BaseException:
            self._release_lock()
            raise
        self._cameras = {tuple(c): i for i, c in enumerate(self.manifest.cameras)}
        self._shard_sizes = [s.size for s in self.manifest.shards]
        self._pending = _Pending()
        self._committed: dict[str, int] | None = None

    # --- setup ----------------------------------------------------------------------------------
    def _prepare_folder(self) -> None:
        """Create the folder, refusing a non-empty folder that is not a CityDB.

        A folder with parts or shards but no manifest lost its manifest: starting a new database
        there would hide (and the recovery would move away) every committed view, so it is
        refused before anything is written.
        """
        if self.root.exists() and not (self.root / fmt.MANIFEST_NAME).exists():
            found = fmt.committed_files(self.root)
            if found:
                raise ManifestLostError(
                    f"expected an empty folder or a CityDB at {self.root}, got "
                    f"{fmt.describe_files(found)} and no {fmt.MANIFEST_NAME}: its manifest was "
                    "lost. Nothing was changed. Rebuild the manifest from the parts with "
                    f"`python -m cityenv.citydb repair {self.root}`, then write again."
                )
            extra = sorted(p.name for p in self.root.iterdir() if p.name not in _KNOWN_ENTRIES)
            if extra:
                raise CityDBError(
                    f"expected an empty folder or a CityDB at {self.root}, got a folder holding "
                    f"{extra[:5]} and no {fmt.MANIFEST_NAME}; choose a new or empty folder."
                )
        for sub in ("", fmt.VIEWS_DIR, fmt.PANORAMAS_DIR, fmt.BLOBS_DIR):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def _acquire_lock(self) -> None:
        self._lock_file = open(self.root / fmt.LOCK_NAME, "ab")  # noqa: SIM115 - held open
        if fcntl is None:  # pragma: no cover
            return
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock_file.close()
            self._lock_file = None
            raise CityDBError(
                f"expected to be the only writer of {self.root}, got a lock held by another "
                "process; wait for it to finish (readers may open the database meanwhile)."
            ) from exc

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            if fcntl is not None:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def _load_or_create(
        self,
        city: str | None,
        frame: LocalFrame | None,
        depth_scale_m: float | None,
        image_format: str | None,
    ) -> fmt.Manifest:
        """Read the existing manifest (checking the arguments) or write an empty one."""
        if (self.root / fmt.MANIFEST_NAME).exists():
            manifest = fmt.read_manifest(self.root)
            _check_matches(manifest, city, frame, depth_scale_m)
            return manifest
        if city is None or frame is None:
            raise CityDBError(
                f"a new CityDB at {self.root} needs city= and frame= (a LocalFrame anchor), got "
                f"city={city!r}, frame={frame!r}; pass both, e.g. frame=LocalFrame(lat, lon)."
            )
        now = fmt.utc_now_iso()
        manifest = fmt.Manifest(
            city=city,
            anchor=frame,
            depth_scale_m=fmt.DEFAULT_DEPTH_SCALE_M if depth_scale_m is None else depth_scale_m,
            image_format=image_format or "png",
            created=now,
            updated=now,
        )
        manifest.check_consistency("new manifest")
        fmt.write_manifest(self.root, manifest)
        return manifest

    def _recover(self) -> None:
        """Move aside what a crashed writer left: unlisted part files and shards, shard tails.

        They were never committed, so readers ignore them; they go to ``lost+found/<time>/``
        rather than away, because a manifest restored from an older copy would make committed
        data look uncommitted too.
        """
        lost = _LostAndFound(self.root)
        listed = {
            str(Path(p)) for part in self.manifest.parts for p in (part.views, part.panoramas)
        }
        for sub in (fmt.VIEWS_DIR, fmt.PANORAMAS_DIR):
            for entry in (self.root / sub).iterdir():
                rel = str(Path(sub) / entry.name)
                if _PART_RE.match(entry.name) and rel not in listed:
                    lost.move(entry, rel)
        shard_paths = {str(Path(s.path)) for s in self.manifest.shards}
        for entry in (self.root / fmt.BLOBS_DIR).iterdir():
            rel = str(Path(fmt.BLOBS_DIR) / entry.name)
            if _SHARD_RE.match(entry.name) and rel not in shard_paths:
                lost.move(entry, rel)
        for shard in self.manifest.shards:
            path = fmt.resolve_inside(self.root, shard.path, "manifest shard")
            if not path.exists() or path.stat().st_size < shard.size:
                raise CityDBFormatError(
                    f"shard {shard.path} must hold at least its committed {shard.size} bytes, got "
                    f"{path.stat().st_size if path.exists() else 'no file'}; the blob file was "
                    "truncated or deleted, restore it."
                )
            if path.stat().st_size > shard.size:
                lost.keep_tail(path, shard.size, shard.path)
                os.truncate(path, shard.size)

    # --- public API -----------------------------------------------------------------------------
    @property
    def frame(self) -> LocalFrame:
        """The database's ENU frame."""
        return self.manifest.anchor

    @property
    def num_views(self) -> int:
        """Views in the database, committed and pending."""
        return self.manifest.num_views + self._pending.num_views

    @property
    def num_panoramas(self) -> int:
        """Panoramas in the database, committed and pending."""
        return self.manifest.num_panoramas + self._pending.num_panoramas

    def has_panorama(self, panorama_id: str) -> bool:
        """Whether ``panorama_id`` is committed or pending in this session."""
        return panorama_id in self._pending.panorama_index or panorama_id in self._committed_ids()

    def register_camera(self, camera: PinholeCamera) -> int:
        """The ``camera_index`` of ``camera``'s intrinsics, adding them if new."""
        key = (
            float(camera.width),
            float(camera.height),
            float(camera.fx),
            float(camera.fy),
            float(camera.cx),
            float(camera.cy),
        )
        if key not in self._cameras:
            self._cameras[key] = len(self._cameras)
        return self._cameras[key]

    def add_view(
        self,
        *,
        image: np.ndarray,
        depth: np.ndarray | None,
        camera: PinholeCamera,
        pose: Pose | np.ndarray,
        panorama_id: str,
        traversal_id: str,
        capture_time: datetime,
        source: str = "",
        view_index: int = 0,
    ) -> int:
        """Append one pinhole view (committed with the next :meth:`commit`).

        A view whose ``panorama_id`` is new starts a panorama (whose position, time and traversal
        are this view's); before that, the writer commits if ``commit_every`` panoramas are
        pending, so views of one panorama added back to back stay in one commit.

        Args:
            image: RGB image, shape ``(H, W, 3)`` uint8, ``(H, W)`` the camera's.
            depth: Metric z-depth, shape ``(H, W)`` float, ``>= 0`` (0 = none), or ``None``.
            camera: Intrinsics of the image.
            pose: Camera-to-world pose in the city's ENU frame (a Pose or ``(4, 4)`` matrix).
            panorama_id: Id of the panorama the view belongs to.
            traversal_id: Id of the capture pass (drive, walk, render run).
            capture_time: Capture time (UTC; a naive datetime is taken as UTC).
            source: Free-form provenance (e.g. "carla", "streetview:vendor").
            view_index: Index of the view within its panorama.

        Returns:
            The new view's id.

        Raises:
            ShapeMismatchError: If image or depth do not match the camera, or the image is not
                ``(H, W, 3)`` uint8.
            InvalidDepthError: If the depth has negative or non-finite values.
            InvalidPoseError: If the pose is not finite (from :class:`Pose`).
        """
        self._check_open()
        record = self._encode(image, depth, camera, _as_pose(pose))
        if not self.has_panorama(panorama_id) and (
            self._pending.num_panoramas >= self.commit_every
        ):
            self.commit()
        return self._append(record, panorama_id, traversal_id, capture_time, source, view_index)

    def add_panorama(
        self,
        *,
        panorama_id: str,
        images: Sequence[np.ndarray],
        depths: Sequence[np.ndarray | None],
        cameras: PinholeCamera | Sequence[PinholeCamera],
        poses: Sequence[Pose | np.ndarray],
        traversal_id: str,
        capture_time: datetime,
        source: str = "",
    ) -> list[int]:
        """Append the views of one panorama (usually 8), or skip it if it is already present.

        All views are validated before any is written. After the panorama, the writer commits if
        ``commit_every`` panoramas are pending.

        Args:
            panorama_id: Id of the panorama; if it is committed or pending, nothing is written.
            images: RGB images, each ``(H, W, 3)`` uint8.
            depths: Metric z-depth maps, each ``(H, W)`` float ``>= 0`` (or ``None``).
            cameras: One camera for all views or one per view.
            poses: Camera-to-world pose of each view (ENU).
            traversal_id: Id of the capture pass.
            capture_time: Capture time (UTC).
            source: Free-form provenance.

        Returns:
            The new view ids in order, or ``[]`` if the panorama was already present.

        Raises:
            ShapeMismatchError: If the sequences differ in length or an array mismatches.
            InvalidDepthError: If a depth map has negative or non-finite values.
            InvalidPoseError: If a pose is not finite.
        """
        self._check_open()
        if self.has_panorama(panorama_id):
            return []
        count = len(images)
        cams = [cameras] * count if isinstance(cameras, PinholeCamera) else list(cameras)
        if not (len(depths) == len(cams) == len(poses) == count) or count == 0:
            raise ShapeMismatchError(
                f"panorama {panorama_id!r} needs as many depths, cameras and poses as images "
                f"(at least one), got {count} images, {len(depths)} depths, {len(cams)} "
                f"cameras, {len(poses)} poses; pass one of each per view."
            )
        records = [
            self._encode(im, d, c, _as_pose(p))
            for im, d, c, p in zip(images, depths, cams, poses, strict=True)
        ]
        ids = [
            self._append(rec, panorama_id, traversal_id, capture_time, source, k)
            for k, rec in enumerate(records)
        ]
        if self._pending.num_panoramas >= self.commit_every:
            self.commit()
        return ids

    def append_views(self, records: ViewRecords) -> range:
        """Commit the index rows of a block of panoramas as one part, with no images.

        The typed path for index-only databases (benchmarks, tests, imports of external
        indices): the writer numbers the rows after :attr:`num_views` / :attr:`num_panoramas`,
        registers the cameras and builds the :data:`~cityenv.citydb.format.VIEW_SCHEMA` and
        :data:`~cityenv.citydb.format.PANORAMA_SCHEMA` rows
        (:func:`~cityenv.citydb.format.index_tables`). Pending rows are committed first.

        Args:
            records: The panoramas and views, validated typed arrays.

        Returns:
            The new view ids, in the order of ``records``' views.

        Raises:
            CityDBError: If the writer is closed.
        """
        self._check_open()
        self.commit()
        first = self.num_views
        views, panoramas = fmt.index_tables(
            records,
            first_view_id=first,
            first_panorama_index=self.num_panoramas,
            camera_index=[self.register_camera(c) for c in records.cameras],
            frame=self.frame,
        )
        at_panorama = records.view_positions is None or _views_at_panorama(views, panoramas)
        self._write_part(views, panoramas, at_panorama)
        return range(first, first + records.num_views)

    def append_index(self, views: pa.Table, panoramas: pa.Table) -> None:
        """Commit prebuilt view and panorama tables as one part, with no images (index only).

        The low-level path under :meth:`append_views`, for tables built elsewhere: rows must
        follow :data:`~cityenv.citydb.format.VIEW_SCHEMA` and
        :data:`~cityenv.citydb.format.PANORAMA_SCHEMA`, continue the view ids and panorama
        indices, and use ``camera_index`` values from :meth:`register_camera`. Blob lengths of 0
        mean "no image"/"no depth". Pending rows are committed first.

        Args:
            views: ``V`` view rows.
            panoramas: ``P`` panorama rows.

        Raises:
            CityDBFormatError: If the tables do not fit the schema or do not continue the ids.
        """
        self._check_open()
        self.commit()
        views = _conform(views, fmt.VIEW_SCHEMA, "views")
        panoramas = _conform(panoramas, fmt.PANORAMA_SCHEMA, "panoramas")
        self._check_index_rows(views, panoramas)
        self._write_part(views, panoramas, _views_at_panorama(views, panoramas))

    def commit(self) -> None:
        """Make every pending view durable and visible (no-op if nothing is pending)."""
        self._check_open()
        if self._pending.num_views == 0 and self._pending.num_panoramas == 0:
            return
        if self._shard_file is not None:
            self._shard_file.flush()
            os.fsync(self._shard_file.fileno())
        views, panoramas = self._pending_tables()
        self._write_part(views, panoramas, _views_at_panorama(views, panoramas))
        if self._committed is not None:
            self._committed.update(self._pending.panorama_index)
        self._pending = _Pending()

    def compact(self, max_views_per_part: int = 2_000_000) -> int:
        """Merge runs of consecutive small parts into parts of up to ``max_views_per_part`` views.

        Many small commits (an ingestion commits every ``commit_every`` panoramas) mean many
        files for :meth:`CityDB.open` to read; compaction rewrites the view and panorama tables
        (never the blobs) and swaps them in with one manifest replacement, so a crash leaves
        either the old or the new parts. Old part files are deleted afterwards.

        Args:
            max_views_per_part: Size limit of a merged part (a part already larger stays).

        Returns:
            The number of parts after compaction.
        """
        self.commit()
        groups: list[list[fmt.PartInfo]] = []
        for part in self.manifest.parts:
            last = groups[-1] if groups else None
            if last and sum(p.num_views for p in last) + part.num_views <= max_views_per_part:
                last.append(part)
            else:
                groups.append([part])
        if len(groups) == len(self.manifest.parts):
            return len(groups)
        number = self._next_part_number()
        merged = []
        for group in groups:
            if len(group) == 1:
                merged.append(group[0])
                continue
            views, panoramas = (
                pa.concat_tables([self._read_part(p, kind) for p in group])
                for kind in ("views", "panoramas")
            )
            first = (group[0].first_view_id, group[0].first_panorama_index)
            at_panorama = all(p.views_at_panorama for p in group)
            merged.append(self._write_part_files(views, panoramas, number, first, at_panorama))
            number += 1
        old_parts = self.manifest.parts
        self.manifest.parts = merged
        self.manifest.updated = fmt.utc_now_iso()
        try:
            fmt.write_manifest(self.root, self.manifest)
        except BaseException:
            self.manifest.parts = old_parts
            raise
        kept = {p.views for p in merged} | {p.panoramas for p in merged}
        for part in old_parts:
            for rel in (part.views, part.panoramas):
                if rel not in kept:
                    (self.root / rel).unlink(missing_ok=True)
        return len(merged)

    def close(self) -> None:
        """Commit what is pending, close the shard and release the lock (idempotent)."""
        if self._closed:
            return
        try:
            self.commit()
        finally:
            self._closed = True
            if self._shard_file is not None:
                self._shard_file.close()
                self._shard_file = None
            self._release_lock()

    def __enter__(self) -> CityDBWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Pending rows are complete views whatever went wrong later, so they are committed.
        self.close()

    # --- internals ------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise CityDBError(f"the writer of {self.root} is closed; open a new CityDBWriter.")

    def _read_part(self, part: fmt.PartInfo, kind: str) -> pa.Table:
        """A committed part file in the current schema (older parts gain null checksums)."""
        path = fmt.resolve_inside(self.root, getattr(part, kind), "manifest part")
        try:  # page checksums: a damaged part is not copied into a merged one
            table = pq.read_table(path, page_checksum_verification=True).replace_schema_metadata()
        except (OSError, pa.ArrowInvalid) as exc:
            raise CityDBIntegrityError(
                f"{path} must read as the part committed there, got {exc}; nothing was "
                f"compacted. Restore it (`python -m cityenv.citydb verify {self.root}` lists "
                "the damage)."
            ) from exc
        if kind == "views":
            return fmt.with_checksum_columns(table).select(fmt.VIEW_SCHEMA.names)
        return table

    def _committed_ids(self) -> dict[str, int]:
        """Committed panorama id -> index, read from the panorama parts on first use."""
        if self._committed is None:
            self._committed = {}
            for part in self.manifest.parts:
                path = fmt.resolve_inside(self.root, part.panoramas, "manifest part")
                ids = pq.read_table(path, columns=["panorama_id"]).column(0).to_pylist()
                start = part.first_panorama_index
                self._committed.update(zip(ids, range(start, start + len(ids)), strict=True))
        return self._committed

    def _encode(
        self, image: np.ndarray, depth: np.ndarray | None, camera: PinholeCamera, pose: Pose
    ) -> dict[str, Any]:
        """Validate one view and encode its blobs (nothing is written yet)."""
        image = np.asarray(image)
        camera.check_image(image, "image")
        image_bytes = fmt.encode_image(image, self.image_format, self.jpeg_quality)
        depth_bytes = b""
        if depth is not None:
            depth = np.asarray(depth)
            camera.check_image(depth, "depth")
            if depth.ndim != 2:
                raise ShapeMismatchError(
                    f"depth must have shape (H, W) = {camera.shape}, got {depth.shape}; pass a "
                    "single-channel metric z-depth map."
                )
            depth_bytes = fmt.encode_depth(depth, self.manifest.depth_scale_m)
        return {
            "image": image_bytes,
            "depth": depth_bytes,
            "camera": camera,
            "pose": pose,
        }

    def _append(
        self,
        record: dict[str, Any],
        panorama_id: str,
        traversal_id: str,
        capture_time: datetime,
        source: str,
        view_index: int,
    ) -> int:
        """Write a view's blobs and add its row (and its panorama's row if new)."""
        micros = to_utc_micros(capture_time)
        pose: Pose = record["pose"]
        image_loc = self._write_blob(record["image"])
        depth_loc = self._write_blob(record["depth"])
        pano_index = self._panorama_index(panorama_id, traversal_id, micros, pose.position)
        camera: PinholeCamera = record["camera"]
        view_id = self.num_views
        q = quaternion.as_float_array(pose.rotation)
        row = {
            "view_id": view_id,
            "panorama_index": pano_index,
            "view_index": int(view_index),
            "panorama_id": str(panorama_id),
            "traversal_id": str(traversal_id),
            "capture_time": micros,
            "x": pose.position[0],
            "y": pose.position[1],
            "z": pose.position[2],
            "qw": q[0],
            "qx": q[1],
            "qy": q[2],
            "qz": q[3],
            "camera_index": self.register_camera(camera),
            "image_width": camera.width,
            "image_height": camera.height,
            "fx": camera.fx,
            "fy": camera.fy,
            "cx": camera.cx,
            "cy": camera.cy,
            "source": str(source),
            "image_shard": image_loc[0],
            "image_offset": image_loc[1],
            "image_length": image_loc[2],
            "depth_shard": depth_loc[0],
            "depth_offset": depth_loc[1],
            "depth_length": depth_loc[2],
            # CRC-32 of the stored bytes: loads and `verify --full` check it
            "image_crc32": fmt.blob_crc32(record["image"]) if record["image"] else None,
            "depth_crc32": fmt.blob_crc32(record["depth"]) if record["depth"] else None,
        }
        for name, value in row.items():
            self._pending.views[name].append(value)
        return view_id

    def _panorama_index(
        self, panorama_id: str, traversal_id: str, micros: int, position: np.ndarray
    ) -> int:
        """Index of an existing panorama, or a new pending panorama row."""
        pending = self._pending.panorama_index
        if panorama_id in pending:
            return pending[panorama_id]
        committed = self._committed_ids()
        if panorama_id in committed:
            return committed[panorama_id]
        index = self.num_panoramas
        pending[panorama_id] = index
        row = {
            "panorama_index": index,
            "panorama_id": str(panorama_id),
            "traversal_id": str(traversal_id),
            "capture_time": micros,
            "x": position[0],
            "y": position[1],
            "z": position[2],
        }
        for name, value in row.items():
            self._pending.panoramas[name].append(value)
        return index

    def _write_blob(self, data: bytes) -> tuple[int, int, int]:
        """Append ``data`` to the current shard; ``(shard, offset, length)``, length 0 = none."""
        if not data:
            return (0, 0, 0)
        shard = self._current_shard(len(data))
        offset = self._shard_sizes[shard]
        assert self._shard_file is not None
        self._shard_file.write(data)
        self._shard_sizes[shard] = offset + len(data)
        return (shard, offset, len(data))

    def _current_shard(self, incoming: int) -> int:
        """The shard to append to, rolling over to a new one when the current would overflow."""
        shard = len(self._shard_sizes) - 1
        full = shard < 0 or (
            self._shard_sizes[shard] > 0
            and self._shard_sizes[shard] + incoming > self.max_shard_bytes
        )
        if full:
            if self._shard_file is not None:
                self._shard_file.flush()
                os.fsync(self._shard_file.fileno())
                self._shard_file.close()
            self._shard_sizes.append(0)
            shard += 1
            self._shard_file = open(self._shard_path(shard), "wb")  # noqa: SIM115
        elif self._shard_file is None:
            self._shard_file = open(self._shard_path(shard), "r+b")  # noqa: SIM115
            self._shard_file.seek(self._shard_sizes[shard])
        return shard

    def _shard_path(self, shard: int) -> Path:
        return self.root / fmt.BLOBS_DIR / f"shard-{shard:05d}.bin"

    def _pending_tables(self) -> tuple[pa.Table, pa.Table]:
        """The pending rows as Arrow tables (geodetic columns computed from ENU in one batch)."""
        views, panoramas = self._pending.views, self._pending.panoramas
        for cols in (views, panoramas):
            enu = np.stack([cols["x"], cols["y"], cols["z"]], axis=-1).reshape(-1, 3)
            lat, lon, height = self.frame.enu_to_geodetic(enu)
            cols["lat"], cols["lon"], cols["height"] = (
                np.atleast_1d(v) for v in (lat, lon, height)
            )
        return _table(views, fmt.VIEW_SCHEMA), _table(panoramas, fmt.PANORAMA_SCHEMA)

    def _check_index_rows(self, views: pa.Table, panoramas: pa.Table) -> None:
        """Raise unless prebuilt rows continue the ids and reference known panoramas/cameras."""
        v0, p0 = self.manifest.num_views, self.manifest.num_panoramas
        view_ids = views.column("view_id").to_numpy()
        pano_rows = panoramas.column("panorama_index").to_numpy()
        pano_refs = views.column("panorama_index").to_numpy()
        cams = views.column("camera_index").to_numpy()
        problems = []
        if not np.array_equal(view_ids, np.arange(v0, v0 + len(view_ids))):
            problems.append(f"view_id must run {v0}..{v0 + len(view_ids) - 1}")
        if not np.array_equal(pano_rows, np.arange(p0, p0 + len(pano_rows))):
            problems.append(f"panorama_index must run {p0}..{p0 + len(pano_rows) - 1}")
        if len(pano_refs) and (pano_refs.min() < 0 or pano_refs.max() >= p0 + len(pano_rows)):
            problems.append("views must reference existing panoramas")
        if len(cams) and (cams.min() < 0 or cams.max() >= len(self._cameras)):
            problems.append("camera_index must come from register_camera")
        if problems:
            raise CityDBFormatError(
                f"append_index got rows that do not continue the database: {'; '.join(problems)}; "
                "number new rows after CityDBWriter.num_views / num_panoramas."
            )

    def _next_part_number(self) -> int:
        """One past the highest part number the manifest uses (names are never reused)."""
        numbers = [int(_PART_NUMBER.search(p.views).group(1)) for p in self.manifest.parts]
        return max(numbers, default=-1) + 1

    def _write_part_files(
        self,
        views: pa.Table,
        panoramas: pa.Table,
        number: int,
        first: tuple[int, int],
        at_panorama: bool,
    ) -> fmt.PartInfo:
        """Write a part's two files durably; their entry for the manifest (with SHA-256s).

        Each file records the database settings of this commit in its key-value metadata
        (cameras as registered so far), which ``repair`` reads back if the manifest is lost.
        """
        settings = self.manifest.settings()
        settings["cameras"] = [list(key) for key in sorted(self._cameras, key=self._cameras.get)]
        metadata = {fmt.PART_METADATA_KEY: json.dumps(settings).encode("utf-8")}
        rel = [f"{sub}/part-{number:05d}.parquet" for sub in (fmt.VIEWS_DIR, fmt.PANORAMAS_DIR)]
        hashes = [
            _write_parquet(table.replace_schema_metadata(metadata), self.root / path)
            for table, path in zip((views, panoramas), rel, strict=True)
        ]
        fmt.fsync_dir(self.root / fmt.VIEWS_DIR)
        fmt.fsync_dir(self.root / fmt.PANORAMAS_DIR)
        return fmt.PartInfo(
            views=rel[0],
            panoramas=rel[1],
            first_view_id=first[0],
            num_views=views.num_rows,
            first_panorama_index=first[1],
            num_panoramas=panoramas.num_rows,
            views_at_panorama=at_panorama,
            views_sha256=hashes[0],
            panoramas_sha256=hashes[1],
        )

    def _write_part(self, views: pa.Table, panoramas: pa.Table, at_panorama: bool) -> None:
        """Write a part's two files (temp + rename) and commit them in the manifest."""
        first = (self.manifest.num_views, self.manifest.num_panoramas)
        part = self._write_part_files(
            views, panoramas, self._next_part_number(), first, at_panorama
        )
        manifest = self.manifest
        old = (list(manifest.parts), list(manifest.shards), list(manifest.cameras))
        manifest.parts.append(part)
        manifest.shards = [
            fmt.ShardInfo(path=f"{fmt.BLOBS_DIR}/shard-{i:05d}.bin", size=size)
            for i, size in enumerate(self._shard_sizes)
        ]
        manifest.cameras = [list(key) for key in sorted(self._cameras, key=self._cameras.get)]
        manifest.updated = fmt.utc_now_iso()
        try:
            fmt.write_manifest(self.root, manifest)
        except BaseException:
            manifest.parts, manifest.shards, manifest.cameras = old
            raise


def _check_matches(
    manifest: fmt.Manifest,
    city: str | None,
    frame: LocalFrame | None,
    depth_scale_m: float | None,
) -> None:
    """Raise :class:`CityDBFormatError` if writer arguments contradict an existing database."""
    clashes = []
    if city is not None and city != manifest.city:
        clashes.append(f"city {city!r} vs {manifest.city!r}")
    if frame is not None and frame != manifest.anchor:
        clashes.append(f"frame {frame} vs {manifest.anchor}")
    if depth_scale_m is not None and depth_scale_m != manifest.depth_scale_m:
        clashes.append(f"depth_scale_m {depth_scale_m} vs {manifest.depth_scale_m}")
    if clashes:
        raise CityDBFormatError(
            f"the writer arguments must match the existing database, got {'; '.join(clashes)} "
            "(given vs stored); omit them to use the stored values or choose a new folder."
        )


def _views_at_panorama(views: pa.Table, panoramas: pa.Table) -> bool:
    """Whether every view row sits exactly at its panorama's position, all in ``panoramas``."""
    if views.num_rows == 0:
        return True
    first = panoramas.column("panorama_index").to_numpy()[:1]
    local = views.column("panorama_index").to_numpy().astype(np.int64) - (
        first[0] if first.size else 0
    )
    if local.min() < 0 or local.max() >= panoramas.num_rows:
        return False  # views of panoramas committed earlier: positions are checked per view
    return all(
        np.array_equal(views.column(c).to_numpy(), panoramas.column(c).to_numpy()[local])
        for c in fmt.VIEW_POSITION_COLUMNS
    )


def _table(columns: dict[str, list[Any]], schema: pa.Schema) -> pa.Table:
    """Build an Arrow table from column lists (capture times as UTC microseconds)."""
    arrays = []
    for f in schema:
        values = columns[f.name]
        if pa.types.is_timestamp(f.type):
            arrays.append(pa.array(np.asarray(values, dtype=np.int64)).cast(f.type))
        else:
            arrays.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _conform(table: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    """Select and cast ``table``'s columns to ``schema`` or raise :class:`CityDBFormatError`."""
    if schema is fmt.VIEW_SCHEMA:  # checksums are optional (index-only rows have no blobs)
        table = fmt.with_checksum_columns(table)
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise CityDBFormatError(
            f"{name} table must have the columns of the CityDB {name} schema, got it without "
            f"{missing}; build it with cityenv.citydb.format.{name.upper()[:-1]}_SCHEMA."
        )
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise CityDBFormatError(
            f"{name} table columns must cast to the CityDB schema, got {exc}; fix the column "
            "types or nulls."
        ) from exc


def _write_parquet(table: pa.Table, path: Path) -> str:
    """Write a Parquet file durably (temp name, fsync, rename over ``path``); its SHA-256."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        # one chunk: full row groups of ROW_GROUP_SIZE rows (chunk edges would split them)
        pq.write_table(table.combine_chunks(), f, **fmt.parquet_write_options(table.schema))
        f.flush()
        os.fsync(f.fileno())
    digest = fmt.file_sha256(tmp)  # read back from the page cache: the bytes as committed
    os.replace(tmp, path)
    return digest


class _LostAndFound:
    """``lost+found/<UTC time>/`` of one writer session, created on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._dir: Path | None = None

    def _target(self, rel: str) -> Path:
        if self._dir is None:
            stamp = fmt.utc_now_iso().replace(":", "")
            self._dir = self.root / fmt.LOST_DIR / stamp
            _LOG.warning(
                "%s: moving the uncommitted leftovers of an interrupted writer to %s (readers "
                "never saw them; delete the folder when you do not need it).",
                self.root,
                self._dir,
            )
        target = self._dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def move(self, path: Path, rel: str) -> None:
        """Move a whole file (a part or shard no manifest lists)."""
        os.replace(path, self._target(rel))

    def keep_tail(self, path: Path, start: int, rel: str) -> None:
        """Copy a shard's bytes from ``start`` on (before the writer truncates it there)."""
        target = self._target(f"{rel}.tail-from-{start}")
        with open(path, "rb") as src, open(target, "wb") as dst:
            src.seek(start)
            shutil.copyfileobj(src, dst, 1 << 22)
            dst.flush()
            os.fsync(dst.fileno())
