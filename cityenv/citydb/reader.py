"""Open a CityDB: an in-memory retrieval index plus lazy access to rows, images and depths.

:meth:`CityDB.open` reads the manifest, the numeric columns retrieval needs (panorama positions,
times and traversals; view -> panorama, rotations and camera indices) and builds a
KD-tree over panorama positions. It reads no image, no string column of the view table and no
blob locator; those are read per part or per row group when a view is loaded.

Integrity: opening checks the manifest's own checksum, that every shard holds its committed bytes,
the page checksums of the columns it reads and that each part's recorded settings (cameras, depth
scale, anchor) agree with the manifest; loading a view checks its blobs' CRC-32. Damage found while
loading raises :class:`~cityenv.errors.CorruptImageError` (or
:class:`~cityenv.errors.CityDBIntegrityError` for a damaged part); retrieval and reference loading
skip such a view and record it in :attr:`CityDB.damaged`.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.spatial import cKDTree

from cityenv.cache import LRUCache
from cityenv.citydb import format as fmt
from cityenv.citydb.integrity import depth_scale_problem
from cityenv.errors import (
    CityDBFormatError,
    CityDBIntegrityError,
    CorruptImageError,
    DamagedViewWarning,
    ViewNotFoundError,
)
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.geodesy import LocalFrame
from cityenv.geometry.pose import Pose, rotation_matrix_column

__all__ = ["DAMAGE_ERRORS", "CityDB", "DamageLog", "View", "ViewMetadata"]

DAMAGE_ERRORS = (CorruptImageError, CityDBFormatError)
"""What loading a view raises when its stored bytes or its part are damaged (skip the view)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_OPEN_DEPTH_SAMPLE = 8  # depth maps decoded at open when the parts record no settings
_ROW_GROUP_CACHE = 8  # decoded row groups kept per database (metadata / load_view reads)


@dataclass(frozen=True)
class ViewMetadata:
    """Everything stored about a view besides its pixels, camera and pose.

    Attributes:
        view_id: The view's id.
        panorama_id: Id of its panorama.
        panorama_index: Dense index of its panorama (row of the panorama table).
        view_index: Index of the view within its panorama.
        traversal_id: Id of the capture pass.
        capture_time: Capture time, timezone-aware UTC.
        lat: WGS84 latitude of the camera centre, degrees.
        lon: WGS84 longitude of the camera centre, degrees.
        height: WGS84 ellipsoidal height of the camera centre, metres.
        source: Free-form provenance.
    """

    view_id: int
    panorama_id: str
    panorama_index: int
    view_index: int
    traversal_id: str
    capture_time: datetime
    lat: float
    lon: float
    height: float
    source: str


@dataclass(frozen=True)
class View:
    """One stored pinhole view.

    Attributes:
        view_id: The view's id.
        image: RGB image, shape ``(H, W, 3)`` uint8.
        depth: Metric z-depth, shape ``(H, W)`` float32, 0 = none.
        camera: Intrinsics of ``image``.
        pose: Camera-to-world pose in the city's ENU frame.
        metadata: Ids, capture time, geodetic position and provenance.
    """

    view_id: int
    image: np.ndarray
    depth: np.ndarray
    camera: PinholeCamera
    pose: Pose
    metadata: ViewMetadata


class DamageLog:
    """The views found damaged while reading a database: skipped, warned about once each.

    Retrieval and reference loading :meth:`report` a view they could not read and go on without
    it; the environment puts ``len(db.damaged)`` in its ``info`` as ``skipped_views``.

    Args:
        root: The database folder (named in the warnings).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._reasons: dict[int, str] = {}

    def report(self, view_id: int, error: BaseException) -> None:
        """Record a damaged view; the first report of an id issues a :class:`DamagedViewWarning`."""
        view_id = int(view_id)
        if view_id in self._reasons:
            return
        self._reasons[view_id] = str(error)
        warnings.warn(
            f"CityDB {self.root}: skipping damaged view {view_id} ({error}); find everything "
            f"damaged with `python -m cityenv.citydb verify {self.root} --full`.",
            DamagedViewWarning,
            stacklevel=3,
        )

    def __contains__(self, view_id: object) -> bool:
        return view_id in self._reasons

    def __len__(self) -> int:
        return len(self._reasons)

    @property
    def view_ids(self) -> np.ndarray:
        """Ids of the damaged views found so far, shape ``(n,)`` int64 (in order found)."""
        return np.fromiter(self._reasons, np.int64, len(self._reasons))

    @property
    def reasons(self) -> dict[int, str]:
        """View id -> the error that made it skipped."""
        return dict(self._reasons)


@dataclass
class _Index:
    """The arrays :meth:`CityDB.open` loads (``V`` views, ``P`` panoramas)."""

    view_panorama: np.ndarray  # (V,) int32
    own_positions: dict[int, np.ndarray]  # part -> (3, n) float64 ENU, parts whose views do not
    # all sit at their panorama (elsewhere a view's position is its panorama's)
    view_wxyz: np.ndarray  # (4, V) float32 camera-to-world quaternion components
    view_camera: np.ndarray  # (V,) int32 into manifest.cameras
    panorama_positions: np.ndarray  # (P, 3) float64 ENU
    panorama_times: np.ndarray  # (P,) int64 microseconds since the epoch, UTC
    panorama_traversal: np.ndarray  # (P,) int32 into traversal_ids
    traversal_ids: list[str]


class CityDB:
    """A read-only street-view database; create with :meth:`CityDB.open`.

    Attributes:
        root: The database folder.
        manifest: The parsed manifest (as of opening).
        kdtree: ``scipy.spatial.cKDTree`` over :attr:`panorama_positions`.
        damaged: The views found damaged so far (skipped by retrieval and reference loading).
    """

    def __init__(self, root: Path, manifest: fmt.Manifest, index: _Index) -> None:
        self.root = root
        self.manifest = manifest
        self._index = index
        self.kdtree = cKDTree(index.panorama_positions, balanced_tree=False, compact_nodes=False)
        self._part_starts = [p.first_view_id for p in manifest.parts]
        self._cameras = [manifest.camera(i) for i in range(len(manifest.cameras))]
        self._shard_paths = [
            fmt.resolve_inside(root, s.path, "manifest shard") for s in manifest.shards
        ]
        self._fds: dict[int, int] = {}
        self._locators: dict[int, np.ndarray] = {}
        self._row_groups = LRUCache[tuple[int, int], pa.Table](_ROW_GROUP_CACHE)
        self._row_group_starts: dict[int, np.ndarray] = {}
        self.damaged = DamageLog(root)

    # --- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> CityDB:
        """Open a database folder: read its index (no images) and build the KD-tree.

        Args:
            path: The database folder (holding ``manifest.json``).

        Returns:
            The opened database, a snapshot of the last commit.

        Raises:
            ManifestNotFoundError: If the folder has no manifest
                (:class:`~cityenv.errors.ManifestLostError` if it holds parts: run ``repair``).
            CityDBFormatError: If the manifest or a table is malformed.
            CityDBIntegrityError: If the manifest was edited since its commit, a shard is missing
                or shorter than committed, a page checksum fails, a part's recorded settings
                contradict the manifest, or (parts that record no settings) a sample of depth
                maps is not street-scale under the manifest's depth scale.
            UnsafePathError: If the manifest names a file outside the folder.
        """
        root = Path(path)
        manifest = fmt.read_manifest(root)
        _check_shards(root, manifest)
        city = cls(root, manifest, _load_index(root, manifest))
        if len(city) and not _records_settings(root, manifest):
            _check_depth_scale(city)
        return city

    def close(self) -> None:
        """Close the shard files (the object stays usable; files reopen on demand)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> CityDB:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        fds = getattr(self, "_fds", {})
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)

    # --- index --------------------------------------------------------------------------------
    @property
    def city(self) -> str:
        """Name of the city."""
        return self.manifest.city

    @property
    def frame(self) -> LocalFrame:
        """The city's ENU frame (anchor on WGS84)."""
        return self.manifest.anchor

    @property
    def depth_scale_m(self) -> float:
        """Metres per stored depth unit."""
        return self.manifest.depth_scale_m

    def __len__(self) -> int:
        return int(self._index.view_panorama.shape[0])

    @property
    def num_panoramas(self) -> int:
        """Number of panoramas ``P``."""
        return int(self._index.panorama_positions.shape[0])

    @cached_property
    def positions(self) -> np.ndarray:
        """Camera centre of every view, shape ``(V, 3)`` float64 ENU metres (row = view id).

        Built on first use (``V x 24`` bytes); :meth:`view_positions` serves a few ids cheaply.
        """
        return self.view_positions(np.arange(len(self)))

    def view_positions(self, view_ids: np.ndarray) -> np.ndarray:
        """Camera centres of some views.

        Args:
            view_ids: View ids, shape ``(n,)`` int.

        Returns:
            Shape ``(n, 3)`` float64 ENU metres.
        """
        ids = np.asarray(view_ids, dtype=np.int64)
        out = self._index.panorama_positions[self._index.view_panorama[ids]]
        if self._index.own_positions:  # parts storing positions apart from their panoramas'
            part = np.searchsorted(self._part_starts, ids, side="right") - 1
            for p, xyz in self._index.own_positions.items():
                sel = np.flatnonzero(part == p)
                out[sel] = xyz[:, ids[sel] - self._part_starts[p]].T
        return out

    @property
    def rotations(self) -> np.ndarray:
        """Camera-to-world rotation of every view, shape ``(V, 4)`` float32 ``(w, x, y, z)``."""
        return self._index.view_wxyz.T

    @property
    def view_panorama(self) -> np.ndarray:
        """Panorama index of every view, shape ``(V,)`` int32."""
        return self._index.view_panorama

    @property
    def view_camera_index(self) -> np.ndarray:
        """Camera index of every view into :attr:`cameras`, shape ``(V,)`` int32."""
        return self._index.view_camera

    @property
    def cameras(self) -> list[PinholeCamera]:
        """Distinct intrinsics in the database (``view_camera_index`` points here)."""
        return list(self._cameras)

    @property
    def panorama_positions(self) -> np.ndarray:
        """Position of every panorama, shape ``(P, 3)`` float64 ENU metres."""
        return self._index.panorama_positions

    @property
    def panorama_times(self) -> np.ndarray:
        """Capture time of every panorama, shape ``(P,)`` int64 microseconds since 1970, UTC."""
        return self._index.panorama_times

    @property
    def panorama_traversal(self) -> np.ndarray:
        """Traversal of every panorama as an index into :attr:`traversal_ids`, ``(P,)`` int32."""
        return self._index.panorama_traversal

    @property
    def traversal_ids(self) -> list[str]:
        """Distinct traversal ids (``panorama_traversal`` points here)."""
        return list(self._index.traversal_ids)

    @cached_property
    def view_forwards(self) -> np.ndarray:
        """World direction of every view's optical axis, shape ``(V, 3)`` float32 unit vectors."""
        # view_wxyz is component-major (4, V) float32; its transpose is the (V, 4) layout, no copy
        return rotation_matrix_column(self._index.view_wxyz.T, 2)

    @cached_property
    def _panorama_csr(self) -> tuple[np.ndarray | None, np.ndarray]:
        """``(order, offsets)``: views of panorama ``p`` are ``order[offsets[p]:offsets[p+1]]``
        (``order`` is ``None`` when view ids are already grouped by panorama)."""
        pano = self._index.view_panorama
        counts = np.bincount(pano, minlength=self.num_panoramas)
        offsets = np.zeros(self.num_panoramas + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        if pano.size < 2 or bool(np.all(pano[1:] >= pano[:-1])):
            return None, offsets
        return np.argsort(pano, kind="stable"), offsets

    @cached_property
    def views_per_panorama(self) -> int | None:
        """``c`` when panorama ``p`` holds exactly views ``c*p .. c*p + c - 1`` (the usual layout
        of panoramas written whole), else ``None``."""
        order, offsets = self._panorama_csr
        if order is not None or self.num_panoramas == 0:
            return None
        c = int(offsets[1])
        if c == 0 or len(self) != c * self.num_panoramas:
            return None
        return c if bool(np.all(np.diff(offsets) == c)) else None

    def panorama_views(self, panoramas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """View ids of a set of panoramas.

        Args:
            panoramas: Panorama indices, shape ``(n,)`` int.

        Returns:
            ``(view_ids, owner)``: int64 ``(m,)`` view ids and, for each, its position in
            ``panoramas`` (int64 ``(m,)``), grouped by panorama in input order.
        """
        order, offsets = self._panorama_csr
        panoramas = np.asarray(panoramas, dtype=np.int64)
        starts = offsets[panoramas]
        counts = offsets[panoramas + 1] - starts
        owner = np.repeat(np.arange(panoramas.size), counts)
        ids = np.arange(int(counts.sum()), dtype=np.int64)
        ids += np.repeat(starts - (np.cumsum(counts) - counts), counts)
        return (ids if order is None else order[ids]), owner

    def traversal_index(self, traversal_id: str) -> int:
        """Index of ``traversal_id`` in :attr:`traversal_ids`, or -1 if absent."""
        lookup = self._traversal_lookup
        return lookup.get(traversal_id, -1)

    @cached_property
    def _traversal_lookup(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self._index.traversal_ids)}

    def camera(self, view_id: int) -> PinholeCamera:
        """Intrinsics of a view."""
        return self._cameras[int(self._index.view_camera[self._check_id(view_id)])]

    def pose(self, view_id: int) -> Pose:
        """Camera-to-world pose of a view (rotation from the float32 in-memory index)."""
        i = self._check_id(view_id)
        position = self.view_positions(np.array([i]))[0]
        return Pose(position, self._index.view_wxyz[:, i].astype(np.float64))

    # --- rows, images, depths -----------------------------------------------------------------
    @property
    def views(self) -> pa.Table:
        """The whole view table (all parts, all columns); reads every part file, so it is slow
        and large for a city-scale database."""
        tables = [
            fmt.with_checksum_columns(
                pq.read_table(fmt.resolve_inside(self.root, p.views, "manifest part"))
            ).select(fmt.VIEW_SCHEMA.names)
            for p in self.manifest.parts
        ]
        return (
            pa.concat_tables(tables, promote_options="permissive")
            if tables
            else fmt.VIEW_SCHEMA.empty_table()
        )

    @property
    def panoramas(self) -> pa.Table:
        """The whole panorama table (all parts, all columns)."""
        tables = [
            pq.read_table(fmt.resolve_inside(self.root, p.panoramas, "manifest part"))
            for p in self.manifest.parts
        ]
        return pa.concat_tables(tables) if tables else fmt.PANORAMA_SCHEMA.empty_table()

    def metadata(self, view_id: int) -> ViewMetadata:
        """Ids, time, geodetic position and provenance of a view (reads one row group)."""
        row = self._row(view_id)
        return ViewMetadata(
            view_id=int(row["view_id"]),
            panorama_id=row["panorama_id"],
            panorama_index=int(row["panorama_index"]),
            view_index=int(row["view_index"]),
            traversal_id=row["traversal_id"],
            capture_time=row["capture_time"].astimezone(timezone.utc),
            lat=row["lat"],
            lon=row["lon"],
            height=row["height"],
            source=row["source"],
        )

    def load_view(self, view_id: int) -> View:
        """Load a view's image, depth, camera, exact pose and metadata.

        Args:
            view_id: Id in ``[0, len(db))``.

        Returns:
            The view: image ``(H, W, 3)`` uint8, depth ``(H, W)`` float32 (zeros if none stored).

        Raises:
            ViewNotFoundError: If the id is out of range.
            CorruptImageError: If the image or depth cannot be decoded or lies outside the
                committed part of its shard.
        """
        row = self._row(view_id)
        camera = PinholeCamera(
            row["image_width"], row["image_height"], row["fx"], row["fy"], row["cx"], row["cy"]
        )
        pose = Pose([row["x"], row["y"], row["z"]], [row["qw"], row["qx"], row["qy"], row["qz"]])
        return View(
            view_id=int(view_id),
            image=self.load_image(view_id),
            depth=self.load_depth(view_id),
            camera=camera,
            pose=pose,
            metadata=self.metadata(view_id),
        )

    def load_image(self, view_id: int) -> np.ndarray:
        """A view's RGB image, shape ``(H, W, 3)`` uint8.

        Raises:
            ViewNotFoundError: If the id is out of range.
            CorruptImageError: If the image is missing, truncated, fails its CRC-32 or does not
                decode.
        """
        shard, offset, length, _, _, _, crc, _ = self._locator(view_id)
        where = self._where(view_id, "image", shard, offset)
        if length == 0:
            raise CorruptImageError(
                f"{where}: expected a stored image, got none (an index-only row); load images "
                "only from databases written with images."
            )
        image = fmt.decode_image(self._read_blob(shard, offset, length, where, crc), where)
        self._check_decoded(image, view_id, where)
        return image

    def load_depth(self, view_id: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """A view's metric z-depth, optionally resampled (nearest pixel centre, never blended).

        Args:
            view_id: Id in ``[0, len(db))``.
            size: ``(w, h)`` to resample to (pair it with ``db.camera(id).rescaled(w, h)``), or
                ``None`` for the stored resolution.

        Returns:
            Depth of shape ``(h, w)`` float32 metres, 0 = none (all zeros if none is stored).

        Raises:
            ViewNotFoundError: If the id is out of range.
            CorruptImageError: If the depth map is truncated, fails its CRC-32 or does not decode.
        """
        *_, shard, offset, length, _, crc = self._locator(view_id)
        camera = self.camera(view_id)
        if length == 0:
            depth = np.zeros(camera.shape, dtype=np.float32)
        else:
            where = self._where(view_id, "depth", shard, offset)
            data = self._read_blob(shard, offset, length, where, crc)
            depth = fmt.decode_depth(data, self.manifest.depth_scale_m, where)
            self._check_decoded(depth, view_id, where)
        return depth if size is None else resample_nearest(depth, size)

    def info(self) -> dict[str, Any]:
        """A summary: city, anchor, counts, traversals, cameras, on-disk size."""
        size = sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())
        times = self._index.panorama_times
        span = None
        if times.size:
            span = [_micros_to_datetime(int(t)).isoformat() for t in (times.min(), times.max())]
        return {
            "path": str(self.root),
            "city": self.city,
            "anchor": {"lat": self.frame.lat, "lon": self.frame.lon, "height": self.frame.height},
            "format_version": self.manifest.format_version,
            "views": len(self),
            "panoramas": self.num_panoramas,
            "traversals": len(self._index.traversal_ids),
            "parts": len(self.manifest.parts),
            "shards": len(self.manifest.shards),
            "cameras": [list(c) for c in self.manifest.cameras],
            "capture_time_range": span,
            "depth_scale_m": self.depth_scale_m,
            "bytes_on_disk": size,
        }

    def __repr__(self) -> str:
        return f"CityDB({str(self.root)!r}, city={self.city!r}, views={len(self)})"

    # --- internals ------------------------------------------------------------------------------
    def _check_id(self, view_id: int) -> int:
        i = int(view_id)
        if not 0 <= i < len(self):
            raise ViewNotFoundError(
                f"view id must be in [0, {len(self)}) for {self.root}, got {view_id}; ids come "
                "from CityDBWriter.add_view or from retrieval results."
            )
        return i

    def _part_of(self, view_id: int) -> tuple[int, int]:
        """``(part number, row within the part)`` of a view id."""
        i = self._check_id(view_id)
        part = bisect.bisect_right(self._part_starts, i) - 1
        return part, i - self._part_starts[part]

    def _part_file(self, part: int) -> Path:
        return fmt.resolve_inside(self.root, self.manifest.parts[part].views, "manifest part")

    def _row(self, view_id: int) -> dict[str, Any]:
        """All columns of one view row (its row group is cached, a few at a time)."""
        part, local = self._part_of(view_id)
        starts = self._row_group_starts.get(part)
        if starts is None:
            with self._part_errors(part), pq.ParquetFile(self._part_file(part)) as f:
                sizes = [f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)]
            starts = self._row_group_starts[part] = np.cumsum([0, *sizes])
        group = int(np.searchsorted(starts, local, side="right")) - 1
        row = local - int(starts[group])
        table = self._row_groups.get_or_create(
            (part, group), lambda: self._read_row_group(part, group)
        )
        return table.slice(row, 1).to_pylist()[0]

    def _read_row_group(self, part: int, group: int) -> pa.Table:
        with (
            self._part_errors(part),
            pq.ParquetFile(self._part_file(part), page_checksum_verification=True) as f,
        ):
            return f.read_row_group(group)

    @contextlib.contextmanager
    def _part_errors(self, part: int) -> Iterator[None]:
        """Turn a failed read of a part file into :class:`CityDBIntegrityError` naming it."""
        try:
            yield
        except (OSError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise CityDBIntegrityError(
                f"{self.manifest.parts[part].views} of {self.root} must read as the Parquet part "
                f"committed there, got an error ({exc}); it was damaged after its commit. "
                f"Restore it; `python -m cityenv.citydb verify {self.root}` lists the damage."
            ) from exc

    def _locator(self, view_id: int) -> tuple[int, int, int, int, int, int, int, int]:
        """Image and depth ``(shard, offset, length)`` and their CRC-32s (-1 = not recorded).

        Returns:
            ``(image_shard, image_offset, image_length, depth_shard, depth_offset,
            depth_length, image_crc32, depth_crc32)``.
        """
        part, local = self._part_of(view_id)
        table = self._locators.get(part)
        if table is None:
            table = self._locators[part] = self._read_locators(part)
        return tuple(int(v) for v in table[local])  # type: ignore[return-value]

    def _read_locators(self, part: int) -> np.ndarray:
        """The blob columns of a part, ``(n, 8)`` int64 (CRCs -1 where null or absent)."""
        path = self._part_file(part)
        with self._part_errors(part):
            names = pq.read_schema(path).names
            wanted = [*fmt.BLOB_COLUMNS, *(c for c in fmt.CHECKSUM_COLUMNS if c in names)]
            cols = pq.read_table(path, columns=wanted, page_checksum_verification=True)
        out = np.full((cols.num_rows, 8), -1, np.int64)
        for k, name in enumerate((*fmt.BLOB_COLUMNS, *fmt.CHECKSUM_COLUMNS)):
            if name in cols.column_names:
                out[:, k] = (
                    cols.column(name).cast(pa.int64()).fill_null(-1).to_numpy().astype(np.int64)
                )
        return out

    def _where(self, view_id: int, what: str, shard: int, offset: int) -> str:
        name = self.manifest.shards[shard].path if 0 <= shard < len(self.manifest.shards) else "?"
        return f"view {view_id} {what} (shard {shard} {name!r} at byte {offset})"

    def _read_blob(self, shard: int, offset: int, length: int, where: str, crc: int = -1) -> bytes:
        """Read ``length`` committed bytes at ``offset`` of a shard, checking their CRC-32."""
        shards = self.manifest.shards
        if not 0 <= shard < len(shards) or offset < 0 or offset + length > shards[shard].size:
            raise CorruptImageError(
                f"{where}: expected {length} bytes inside the committed part of a shard, got a "
                f"locator past its end (committed size "
                f"{shards[shard].size if 0 <= shard < len(shards) else 'n/a'}); the view table "
                "or manifest is damaged, rebuild the database."
            )
        try:
            fd = self._fds.get(shard)
            if fd is None:
                fd = os.open(self._shard_paths[shard], os.O_RDONLY)
                self._fds[shard] = fd
            data = os.pread(fd, length, offset)
        except OSError as exc:  # the shard went away (or unreadable) after opening
            raise CorruptImageError(
                f"{where}: expected a readable shard file, got {exc}; restore it."
            ) from exc
        if len(data) != length:
            raise CorruptImageError(
                f"{where}: expected {length} bytes, got {len(data)} (the shard file is "
                "truncated); restore it or rebuild the database."
            )
        if crc >= 0 and fmt.blob_crc32(data) != crc:
            raise CorruptImageError(
                f"{where}: expected {length} bytes with the CRC-32 {crc:08x} recorded at commit, "
                f"got {fmt.blob_crc32(data):08x}: the shard bytes were damaged or the view "
                "table's locator points at other bytes; restore the shard or re-ingest the "
                "panorama (`python -m cityenv.citydb verify DB --full` lists every such view)."
            )
        return data

    def _check_decoded(self, array: np.ndarray, view_id: int, where: str) -> None:
        camera = self.camera(view_id)
        if array.shape[:2] != camera.shape:
            raise CorruptImageError(
                f"{where}: expected shape {camera.shape} from the view's camera, got "
                f"{array.shape[:2]}; the shard or view table is damaged, rebuild the database."
            )


# --- loading the index ------------------------------------------------------------------------
def _load_index(root: Path, manifest: fmt.Manifest) -> _Index:
    """Read the numeric retrieval columns of every part into preallocated arrays."""
    num_v, num_p = manifest.num_views, manifest.num_panoramas
    index = _Index(
        view_panorama=np.empty(num_v, np.int32),
        own_positions={},
        view_wxyz=np.empty((4, num_v), np.float32),
        view_camera=np.empty(num_v, np.int32),
        panorama_positions=np.empty((num_p, 3), np.float64),
        panorama_times=np.empty(num_p, np.int64),
        panorama_traversal=np.empty(num_p, np.int32),
        traversal_ids=[],
    )
    lookup: dict[str, int] = {}
    for number, part in enumerate(manifest.parts):
        columns = fmt.VIEW_INDEX_COLUMNS
        if not part.views_at_panorama:
            columns += fmt.VIEW_POSITION_COLUMNS
        views = _read_part(root, part.views, columns, part.num_views, manifest)
        _fill_views(index, views, part)
        if not part.views_at_panorama:
            index.own_positions[number] = np.stack(
                [_column(views, c, np.float64) for c in fmt.VIEW_POSITION_COLUMNS]
            )
        panos = _read_part(
            root, part.panoramas, fmt.PANORAMA_INDEX_COLUMNS, part.num_panoramas, manifest
        )
        _fill_panoramas(index, panos, part, lookup)
    _check_index(index, manifest, root)
    return index


def _check_shards(root: Path, manifest: fmt.Manifest) -> None:
    """Raise :class:`CityDBIntegrityError` unless every shard holds its committed bytes."""
    for shard in manifest.shards:
        path = fmt.resolve_inside(root, shard.path, "manifest shard")
        size = path.stat().st_size if path.is_file() else None
        if size is None or size < shard.size:
            got = "no file (it was deleted)" if size is None else f"{size} bytes (truncated)"
            raise CityDBIntegrityError(
                f"shard {shard.path} of {root} must hold the {shard.size} bytes committed to it, "
                f"got {got}; restore it from a backup (the views stored in it cannot be loaded "
                f"without it). `python -m cityenv.citydb verify {root}` lists all damage."
            )


def _records_settings(root: Path, manifest: fmt.Manifest) -> bool:
    """Whether the newest part records the commit's settings (then ``_read_part`` has checked
    the depth scale against them)."""
    path = fmt.resolve_inside(root, manifest.parts[-1].views, "manifest part")
    try:
        return fmt.part_settings(pq.read_schema(path)) is not None
    except (OSError, pa.ArrowException):
        return False


def _check_depth_scale(city: CityDB) -> None:
    """Raise :class:`CityDBIntegrityError` if a few depth maps spread over the database are not
    street-scale (a depth scale edited x100 in a database that records no settings; about 9 ms
    on the 1,504-view town). Views that cannot be read are skipped: loading reports them."""
    medians = []
    for view_id in np.unique(np.linspace(0, len(city) - 1, _OPEN_DEPTH_SAMPLE).round()):
        try:
            depth = city.load_depth(int(view_id))
        except DAMAGE_ERRORS:
            continue
        valid = depth[depth > 0]
        if valid.size:
            medians.append(float(np.median(valid)))
    problem = depth_scale_problem(medians, city.manifest.depth_scale_m)
    if problem:
        raise CityDBIntegrityError(
            f"{city.root / fmt.MANIFEST_NAME}: {problem}. "
            f"`python -m cityenv.citydb verify {city.root}` checks the whole database."
        )


def _read_part(
    root: Path, rel: str, columns: tuple[str, ...], rows: int, manifest: fmt.Manifest
) -> pa.Table:
    """Read some columns of a part file, checking its row count and settings against the manifest.

    The pages read are checked against their CRC-32 (parts written before page checksums are
    read unchecked).
    """
    path = fmt.resolve_inside(root, rel, "manifest part")
    try:
        table = pq.read_table(
            path,
            columns=list(columns),
            memory_map=True,
            read_dictionary=["traversal_id"],
            page_checksum_verification=True,
        )
    except (OSError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise CityDBIntegrityError(
            f"{path} must be a CityDB Parquet part with columns {list(columns)}, got an error "
            f"reading it ({exc}); restore the file or rebuild the database."
        ) from exc
    if table.num_rows != rows:
        raise CityDBFormatError(
            f"{path} must hold {rows} rows as the manifest says, got {table.num_rows}; restore "
            "the file or rebuild the database."
        )
    manifest.check_part_settings(fmt.part_settings(table.schema), str(path))
    return table


def _column(table: pa.Table, name: str, dtype: type) -> np.ndarray:
    return table.column(name).to_numpy().astype(dtype, copy=False)


def _fill_views(index: _Index, table: pa.Table, part: fmt.PartInfo) -> None:
    s = slice(part.first_view_id, part.first_view_id + part.num_views)
    index.view_panorama[s] = _column(table, "panorama_index", np.int32)
    index.view_camera[s] = _column(table, "camera_index", np.int32)
    for k, name in enumerate(("qw", "qx", "qy", "qz")):
        index.view_wxyz[k, s] = _column(table, name, np.float64)


def _fill_panoramas(
    index: _Index, table: pa.Table, part: fmt.PartInfo, lookup: dict[str, int]
) -> None:
    s = slice(part.first_panorama_index, part.first_panorama_index + part.num_panoramas)
    for k, name in enumerate(("x", "y", "z")):
        index.panorama_positions[s, k] = _column(table, name, np.float64)
    times = table.column("capture_time").cast(pa.int64())
    index.panorama_times[s] = times.to_numpy()
    codes = []
    for chunk in table.column("traversal_id").chunks:
        names = chunk.dictionary.to_pylist()
        remap = np.array([lookup.setdefault(n, len(lookup)) for n in names], dtype=np.int32)
        codes.append(remap[chunk.indices.to_numpy()] if len(names) else np.empty(0, np.int32))
    index.panorama_traversal[s] = np.concatenate(codes) if codes else np.empty(0, np.int32)
    index.traversal_ids[:] = list(lookup)


def _check_index(index: _Index, manifest: fmt.Manifest, root: Path) -> None:
    """Raise :class:`CityDBFormatError` if views point at missing panoramas or cameras."""
    pano, cams = index.view_panorama, index.view_camera
    bad = []
    if pano.size and (pano.min() < 0 or pano.max() >= manifest.num_panoramas):
        bad.append(f"panorama_index in [{pano.min()}, {pano.max()}] vs {manifest.num_panoramas}")
    if cams.size and (cams.min() < 0 or cams.max() >= len(manifest.cameras)):
        bad.append(f"camera_index in [{cams.min()}, {cams.max()}] vs {len(manifest.cameras)}")
    if bad:
        raise CityDBFormatError(
            f"the view table of {root} must reference existing panoramas and cameras, got "
            f"{'; '.join(bad)} (indices vs counts); rebuild the database."
        )


def _micros_to_datetime(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def resample_nearest(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resample a depth map by taking the source pixel under each target pixel centre.

    Never blends neighbours, so no depth is invented across an edge; pairs with
    ``PinholeCamera.rescaled(w, h)``.

    Args:
        depth: Depth map, shape ``(H, W)``.
        size: Target ``(w, h)``.

    Returns:
        Depth map of shape ``(h, w)``, same dtype.
    """
    w, h = size
    height, width = depth.shape
    if (h, w) == (height, width):
        return depth
    rows = ((np.arange(h) + 0.5) * (height / h)).astype(np.intp)
    cols = ((np.arange(w) + 0.5) * (width / w)).astype(np.intp)
    return depth[np.ix_(np.minimum(rows, height - 1), np.minimum(cols, width - 1))]
