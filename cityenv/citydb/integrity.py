"""Check a CityDB against what was recorded at commit (``verify``), and rebuild a lost manifest
(``repair``).

``verify`` (``python -m cityenv.citydb verify DB [--full]``):

- the manifest: parses, its own SHA-256 matches (an edit by hand does not), settings are sane;
- every part (in a thread pool): the file exists, its SHA-256 matches the manifest, its page
  checksums hold, its row count and id ranges match, its recorded settings (cameras, depth scale,
  anchor) agree with the manifest, its camera columns agree with the manifest's cameras, its blob
  locators lie inside the committed part of existing shards;
- every shard: exists and holds its committed bytes; no two views share bytes;
- ``--full``: every blob, in ranges of about 32 MiB over all shards in a thread pool: its CRC-32
  when recorded, else that it decodes to its camera's size. Blobs whose locators the fast check
  found outside the shards are not read (a flipped length bit could ask for terabytes); they are
  listed in a note.
- depth plausibility (fast and ``--full``): up to 16 depth maps spread evenly over the database are
  decoded with the manifest's ``depth_scale_m``; when the median of their median valid depths lies
  outside a street-scale range (:data:`STREET_DEPTH_RANGE_M`) the depth scale is listed as
  SUSPECT. This catches a depth scale edited x100 or /100 in a database written before the parts
  recorded their settings, where nothing else can.

Checksums a database written before they existed does not have are reported as "not recorded",
never as damage.

``repair`` (``python -m cityenv.citydb repair DB``) rebuilds ``manifest.json`` from the Parquet
parts and the shards: the chain of parts from view id 0, the settings each part records (or given
on the command line for parts written before they were recorded), the cameras from the view rows,
each shard's committed size from the locators that point into it. It deletes nothing: an existing
manifest is kept as ``manifest.json.before-repair-<time>``, parts left out of the chain stay where
they are and are listed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from cityenv.citydb import format as fmt
from cityenv.errors import (
    CityDBError,
    CityDBFormatError,
    CityDBIntegrityError,
    CorruptImageError,
    ManifestNotFoundError,
)
from cityenv.geometry.geodesy import LocalFrame

try:  # the writer's advisory lock: repair must not run beside a writer
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "STREET_DEPTH_RANGE_M",
    "Finding",
    "RepairReport",
    "VerifyReport",
    "depth_scale_problem",
    "repair",
    "verify",
]

_TASK_BYTES = 32 << 20  # blob bytes per --full task: enough tasks to keep every worker busy
# Median valid depth of street views (metres) seen as plausible. Street scenes have medians of a
# few metres to a few tens (the town: 3-11 m per view), so a scale x100 (hundreds of metres) or
# /100 (centimetres) falls outside with a wide margin either way.
STREET_DEPTH_RANGE_M = (0.3, 200.0)
_DEPTH_SAMPLE = 16  # depth maps decoded by verify's plausibility check


# --- reports --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    """One damaged thing.

    Attributes:
        where: What is damaged: a file (``views/part-00001.parquet``) or a view's blob
            (``view 12 image``).
        detail: What was expected and what was found.
    """

    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.where}: {self.detail}"


@dataclass
class VerifyReport:
    """What :func:`verify` checked and found.

    Attributes:
        root: The database folder.
        full: Whether every blob was checked.
        damaged: What is damaged (empty: nothing found).
        suspect: Values that cannot be right though no checksum says so (a depth scale whose
            depths are not street-scale).
        not_recorded: Checks that could not be made because the database predates their
            checksums (``"SHA-256 of 3 part files"``).
        notes: Harmless observations (uncommitted bytes an interrupted writer left).
        parts: Part files checked.
        shards: Shards checked.
        blobs: Blobs checked (``--full``).
        blob_bytes: Bytes of blobs read (``--full``).
        seconds: Wall time.
    """

    root: Path
    full: bool
    damaged: list[Finding] = field(default_factory=list)
    suspect: list[Finding] = field(default_factory=list)
    not_recorded: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    parts: int = 0
    shards: int = 0
    blobs: int = 0
    blob_bytes: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when nothing damaged or suspect was found."""
        return not self.damaged and not self.suspect

    def damaged_views(self) -> list[int]:
        """Ids of the views found damaged (from ``view N ...`` findings), sorted."""
        ids = {int(f.where.split()[1]) for f in self.damaged if f.where.startswith("view ")}
        return sorted(ids)

    def lines(self, limit: int = 50) -> list[str]:
        """The report as text lines (at most ``limit`` damage lines, then a count)."""
        mode = "full (every blob)" if self.full else "fast (manifest, parts, shards)"
        out = [
            f"verify {self.root} [{mode}]: {self.parts} part files, {self.shards} shards"
            + (f", {self.blobs} blobs ({self.blob_bytes / 1e6:.1f} MB)" if self.full else "")
            + f" in {self.seconds:.2f} s"
        ]
        out += [f"DAMAGED {f}" for f in self.damaged[:limit]]
        if len(self.damaged) > limit:
            out.append(f"... and {len(self.damaged) - limit} more damaged")
        out += [f"SUSPECT {f}" for f in self.suspect]
        out += [
            f"not recorded: {n} (written before checksums; cannot check)" for n in self.not_recorded
        ]
        out += [f"note: {n}" for n in self.notes]
        if self.ok:
            out.append("OK: nothing damaged found")
        elif not self.damaged:
            out.append(f"{len(self.suspect)} suspect: see the advice above")
        else:
            out.append(
                f"{len(self.damaged)} damaged: restore the files named from a backup; views "
                "listed are skipped by retrieval (re-ingest their panoramas to replace them)"
            )
        return out


@dataclass
class RepairReport:
    """What :func:`repair` rebuilt.

    Attributes:
        root: The database folder.
        parts: Parts listed in the new manifest.
        views: Views listed.
        panoramas: Panoramas listed.
        shards: Shards listed.
        left_out: Part files found but not listed, with the reason (they stay on disk).
        backup: Where the previous manifest was kept, if there was one.
    """

    root: Path
    parts: int
    views: int
    panoramas: int
    shards: int
    left_out: list[str]
    backup: Path | None

    def lines(self) -> list[str]:
        """The report as text lines."""
        out = [
            f"repaired {self.root}: {self.parts} parts, {self.views} views, "
            f"{self.panoramas} panoramas, {self.shards} shards"
        ]
        if self.backup is not None:
            out.append(f"previous manifest kept as {self.backup}")
        out += [f"left out (kept on disk): {why}" for why in self.left_out]
        out.append(f"next: python -m cityenv.citydb verify {self.root} --full")
        return out


# --- verify -------------------------------------------------------------------------------------
_VIEW_COLUMNS = ("view_id", "panorama_index", "camera_index", *fmt.CAMERA_COLUMNS)


@dataclass
class _PartResult:
    """What checking one part gave: findings, gaps and its blobs for ``--full``."""

    damaged: list[Finding] = field(default_factory=list)
    unrecorded_hashes: int = 0
    unrecorded_crcs: int = 0
    blobs: np.ndarray | None = None  # (n, 6) int64: view_id, kind (0 image, 1 depth), shard,
    # offset, length, crc (-1 = not recorded)
    rejected: np.ndarray | None = None  # (m, 6) blobs whose locators lie outside the shards


def verify(
    path: str | os.PathLike[str],
    *,
    full: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> VerifyReport:
    """Check a database against the checksums and sizes recorded at commit.

    Args:
        path: The database folder.
        full: Also read every blob and check its CRC-32 (or, without one, that it decodes).
        workers: Threads, at least 1 (default: the CPU count, at most 8).
        progress: Show tqdm progress bars.

    Returns:
        The report; ``report.ok`` is False when anything is damaged.

    Raises:
        ManifestNotFoundError: If the folder holds no CityDB (``ManifestLostError`` if it holds
            parts but lost its manifest: run ``repair``).
        CityDBError: If ``workers`` is not a positive integer.
    """
    t0 = time.perf_counter()
    root = Path(path)
    report = VerifyReport(root=root, full=full)
    workers = _check_workers(workers)
    manifest = _verify_manifest(root, report)
    if manifest is not None:
        blobs, rejected = _verify_parts(root, manifest, report, workers, progress)
        _verify_shards(root, manifest, report)
        if blobs.size:
            _verify_overlaps(blobs, report)
            _verify_depth_scale(root, manifest, blobs, report)
        if full:
            _note_rejected(rejected, report)
            _verify_blobs(root, manifest, blobs, report, workers, progress)
    report.seconds = time.perf_counter() - t0
    return report


def _check_workers(workers: int | None) -> int:
    """The thread count: ``workers`` if a positive integer, the default for ``None``."""
    if workers is None:
        return min(8, os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise CityDBError(
            f"workers (--workers) must be a positive integer, got {workers!r}; omit it for one "
            "thread per CPU (at most 8)."
        )
    return workers


def _note_rejected(rejected: np.ndarray, report: VerifyReport) -> None:
    """List the blobs ``--full`` does not read: their locators point outside the shards (a
    flipped length could ask for terabytes), so reading them would fail or exhaust memory."""
    if not rejected.size:
        return
    names = ", ".join(_blob_name(row) for row in rejected[:20])
    more = f" and {len(rejected) - 20} more" if len(rejected) > 20 else ""
    report.notes.append(
        f"--full did not read {len(rejected)} blobs whose locators lie outside the committed "
        f"bytes of the shards (damaged parts): {names}{more}"
    )


def _verify_manifest(root: Path, report: VerifyReport) -> fmt.Manifest | None:
    """Parse the manifest and check its own checksum; ``None`` if it cannot be used at all."""
    path = root / fmt.MANIFEST_NAME
    if not path.is_file():
        fmt.read_manifest(root)  # raises the right "not found" / "lost: repair" error
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        manifest = fmt.Manifest.from_json(data, fmt.MANIFEST_NAME)
        for part in manifest.parts:
            fmt.resolve_inside(root, part.views, "manifest part")
            fmt.resolve_inside(root, part.panoramas, "manifest part")
        for shard in manifest.shards:
            fmt.resolve_inside(root, shard.path, "manifest shard")
    except (UnicodeDecodeError, json.JSONDecodeError, CityDBError) as exc:
        report.damaged.append(Finding(fmt.MANIFEST_NAME, f"cannot be used ({exc})"))
        return None
    recorded = str(data.get("checksum", ""))
    if not recorded:
        report.not_recorded.append("SHA-256 of the manifest")
    elif recorded != fmt.manifest_checksum(data):
        report.damaged.append(
            Finding(
                fmt.MANIFEST_NAME,
                "its content does not hash to the checksum recorded at its last commit: it was "
                "edited or damaged (restore it, or rebuild it with `repair`)",
            )
        )
    return manifest


def _verify_parts(
    root: Path, manifest: fmt.Manifest, report: VerifyReport, workers: int, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Check every part in a thread pool; the ``(n, 6)`` blob table of all views whose locators
    lie inside the shards, and the ``(m, 6)`` table of those that do not."""
    parts = manifest.parts
    with ThreadPoolExecutor(workers) as pool:
        results = list(
            tqdm(
                pool.map(lambda p: _check_part(root, manifest, p), parts),
                total=len(parts),
                desc="parts",
                unit="part",
                disable=not progress,
            )
        )
    report.parts = 2 * len(parts)
    for result in results:
        report.damaged += result.damaged
    hashes = sum(r.unrecorded_hashes for r in results)
    crcs = sum(r.unrecorded_crcs for r in results)
    if hashes:
        report.not_recorded.append(f"SHA-256 of {hashes} part files")
    if crcs:
        report.not_recorded.append(f"CRC-32 of {crcs} blobs")
    return _stack([r.blobs for r in results]), _stack([r.rejected for r in results])


def _stack(tables: list[np.ndarray | None]) -> np.ndarray:
    """The non-empty ``(k, 6)`` blob tables stacked, ``(0, 6)`` when there are none."""
    kept = [t for t in tables if t is not None and t.size]
    return np.concatenate(kept) if kept else np.empty((0, 6), np.int64)


def _check_part(root: Path, manifest: fmt.Manifest, part: fmt.PartInfo) -> _PartResult:
    """Every check of one part (both files); never raises for damage, records it."""
    result = _PartResult()
    for kind in ("views", "panoramas"):
        rel = getattr(part, kind)
        file = root / rel
        if not file.is_file():
            result.damaged.append(Finding(rel, "missing (the manifest lists it)"))
            continue
        recorded = getattr(part, f"{kind}_sha256")
        if not recorded:
            result.unrecorded_hashes += 1
        elif fmt.file_sha256(file) != recorded:
            result.damaged.append(
                Finding(rel, "SHA-256 differs from the one recorded at commit (bytes changed)")
            )
        # the file's SHA-256 covers every page; without one, the page checksums are the check
        pages = not recorded
        try:
            if kind == "views":
                _check_view_table(root, manifest, part, result, pages)
            else:
                _check_panorama_table(file, part, result, pages)
        except (OSError, pa.ArrowException) as exc:
            result.damaged.append(Finding(rel, f"does not read as a Parquet part ({exc})"))
        except CityDBIntegrityError as exc:
            result.damaged.append(Finding(rel, str(exc)))
    return result


def _check_view_table(
    root: Path, manifest: fmt.Manifest, part: fmt.PartInfo, result: _PartResult, pages: bool
) -> None:
    """Row count, ids, settings, cameras and locators of a views file (``pages``: check the
    page checksums of the columns read)."""
    rel = part.views
    names = pq.read_schema(root / rel).names
    crc_columns = [c for c in fmt.CHECKSUM_COLUMNS if c in names]
    table = pq.read_table(
        root / rel,
        columns=[*_VIEW_COLUMNS, *fmt.BLOB_COLUMNS, *crc_columns],
        page_checksum_verification=pages,
    )
    try:
        manifest.check_part_settings(fmt.part_settings(table.schema), rel)
    except CityDBIntegrityError as exc:  # go on: the rows may say which camera is wrong
        result.damaged.append(Finding(rel, str(exc)))
    n = table.num_rows
    if n != part.num_views:
        result.damaged.append(Finding(rel, f"holds {n} rows, the manifest says {part.num_views}"))
        return
    col = {name: table.column(name).to_numpy() for name in (*_VIEW_COLUMNS, *fmt.BLOB_COLUMNS)}
    ids = np.arange(part.first_view_id, part.first_view_id + n)
    if not np.array_equal(col["view_id"], ids):
        result.damaged.append(Finding(rel, f"view_id must run {ids[:1]}..{ids[-1:]}, it does not"))
    pano = col["panorama_index"]
    if n and (pano.min() < 0 or pano.max() >= manifest.num_panoramas):
        result.damaged.append(Finding(rel, "panorama_index points past the panorama table"))
    _check_cameras(manifest, part, col, result)
    blobs = []
    for k, kind in enumerate(("image", "depth")):
        stored = np.flatnonzero(col[f"{kind}_length"] > 0)  # none in an index-only part
        if f"{kind}_crc32" in crc_columns:
            crc = table.column(f"{kind}_crc32").cast(pa.int64()).fill_null(-1).to_numpy()[stored]
        else:
            crc = np.full(stored.size, -1, np.int64)
        result.unrecorded_crcs += int((crc < 0).sum())
        fields = [ids[stored], np.full(stored.size, k)]
        fields += [col[f"{kind}_{c}"][stored] for c in ("shard", "offset", "length")]
        blobs.append(np.stack([*fields, crc], 1).astype(np.int64))
    blobs_all = np.concatenate(blobs)
    outside = _check_locators(manifest, blobs_all, result)
    result.blobs, result.rejected = blobs_all[~outside], blobs_all[outside]


def _check_cameras(
    manifest: fmt.Manifest, part: fmt.PartInfo, col: dict[str, np.ndarray], result: _PartResult
) -> None:
    """The camera columns of every row must equal the manifest camera its index names."""
    cam = col["camera_index"].astype(np.int64)
    if cam.size == 0:
        return
    if cam.min() < 0 or cam.max() >= len(manifest.cameras):
        result.damaged.append(Finding(part.views, "camera_index points past the manifest cameras"))
        return
    cameras = np.asarray(manifest.cameras)
    bad = np.zeros(cam.size, bool)
    for k, name in enumerate(fmt.CAMERA_COLUMNS):  # column by column: no (n, 6) temporaries
        bad |= col[name] != cameras[cam, k]
    wrong = np.flatnonzero(bad)
    if wrong.size:
        first = int(wrong[0])
        row = [float(col[c][first]) for c in fmt.CAMERA_COLUMNS]
        result.damaged.append(
            Finding(
                part.views,
                f"{wrong.size} rows disagree with the manifest camera they name (view "
                f"{part.first_view_id + first}: row {row} vs manifest camera "
                f"{int(cam[first])} {manifest.cameras[int(cam[first])]}); the manifest's "
                "cameras were edited (restore it or `repair`)",
            )
        )


def _check_locators(manifest: fmt.Manifest, blobs: np.ndarray, result: _PartResult) -> np.ndarray:
    """Each blob must lie inside the committed bytes of an existing shard; the ``(n,)`` mask of
    those that do not (``--full`` must not read them)."""
    sizes = np.array([s.size for s in manifest.shards] + [-1], np.int64)
    shard = blobs[:, 2]
    bad_shard = (shard < 0) | (shard >= len(manifest.shards))
    ends = blobs[:, 3] + blobs[:, 4]
    outside = bad_shard | (blobs[:, 3] < 0) | (ends > sizes[np.where(bad_shard, -1, shard)])
    outside |= ends < blobs[:, 3]  # offset + length wrapped past int64 (a flipped high bit)
    for row in blobs[outside][:20]:
        result.damaged.append(
            Finding(
                _blob_name(row),
                f"its locator (shard {row[2]}, bytes {row[3]}..{row[3] + row[4]}) lies outside "
                "the committed bytes of the shards",
            )
        )
    return outside


def _check_panorama_table(file: Path, part: fmt.PartInfo, result: _PartResult, pages: bool) -> None:
    """Row count and index range of a panoramas file."""
    table = pq.read_table(file, columns=["panorama_index"], page_checksum_verification=pages)
    first = part.first_panorama_index
    expected = np.arange(first, first + part.num_panoramas)
    if not np.array_equal(table.column(0).to_numpy(), expected):
        result.damaged.append(
            Finding(
                part.panoramas,
                f"must hold panoramas {first}..{first + part.num_panoramas - 1} in order "
                f"({part.num_panoramas} rows), got {table.num_rows} rows that do not",
            )
        )


def _verify_shards(root: Path, manifest: fmt.Manifest, report: VerifyReport) -> None:
    """Every shard must exist and hold its committed bytes."""
    report.shards = len(manifest.shards)
    for shard in manifest.shards:
        file = root / shard.path
        if not file.is_file():
            report.damaged.append(Finding(shard.path, f"missing ({shard.size} bytes committed)"))
            continue
        size = file.stat().st_size
        if size < shard.size:
            report.damaged.append(
                Finding(shard.path, f"holds {size} bytes, {shard.size} were committed (truncated)")
            )
        elif size > shard.size:
            report.notes.append(
                f"{shard.path}: {size - shard.size} bytes past the committed end (an interrupted "
                "writer's; the next writer moves them to lost+found/)"
            )


def _verify_overlaps(blobs: np.ndarray, report: VerifyReport) -> None:
    """No two blobs may share bytes (a locator pointing at another view's bytes)."""
    order = np.lexsort((blobs[:, 3], blobs[:, 2]))
    b = blobs[order]
    same_shard = b[1:, 2] == b[:-1, 2]
    overlap = np.flatnonzero(same_shard & (b[1:, 3] < b[:-1, 3] + b[:-1, 4]))
    for i in overlap[:20]:
        report.damaged.append(
            Finding(
                _blob_name(b[i + 1]),
                f"shares bytes {b[i + 1, 3]}.. of shard {b[i + 1, 2]} with {_blob_name(b[i])}: "
                "a locator points at another view's bytes",
            )
        )
    if overlap.size > 20:
        report.damaged.append(Finding("blobs", f"{overlap.size - 20} more overlapping blobs"))


def _verify_blobs(
    root: Path,
    manifest: fmt.Manifest,
    blobs: np.ndarray,
    report: VerifyReport,
    workers: int,
    progress: bool,
) -> None:
    """Read every blob (thread pool over ranges of all shards) and check it."""
    tasks = _blob_tasks(blobs)
    check = _BlobChecker(root, manifest)
    bar = tqdm(
        total=int(blobs[:, 4].sum()),
        unit="B",
        unit_scale=True,
        desc="blobs",
        disable=not progress,
    )
    with bar, ThreadPoolExecutor(workers) as pool:
        for found, size in pool.map(check, tasks):
            report.damaged += found
            bar.update(size)
    report.blobs = len(blobs)
    report.blob_bytes = int(blobs[:, 4].sum())


def _blob_tasks(blobs: np.ndarray) -> list[np.ndarray]:
    """Blobs in tasks of about :data:`_TASK_BYTES`, each within one shard, in offset order."""
    order = np.lexsort((blobs[:, 3], blobs[:, 2]))
    b = blobs[order]
    tasks = []
    for shard in np.unique(b[:, 2]):
        rows = b[b[:, 2] == shard]
        bucket = np.cumsum(rows[:, 4]) // _TASK_BYTES
        cuts = np.flatnonzero(np.diff(bucket)) + 1
        tasks += np.split(rows, cuts)
    return tasks


class _BlobChecker:
    """Checks one task of blobs of one shard (callable from a thread)."""

    def __init__(self, root: Path, manifest: fmt.Manifest) -> None:
        self.root = root
        self.manifest = manifest

    def __call__(self, rows: np.ndarray) -> tuple[list[Finding], int]:
        shard = self.manifest.shards[int(rows[0, 2])]
        file = self.root / shard.path
        if not file.is_file():
            return [], int(rows[:, 4].sum())  # reported once as a missing shard
        found = []
        with open(file, "rb", buffering=0) as f:
            for row in rows:
                problem = self._check(f, row)
                if problem:
                    found.append(Finding(_blob_name(row), problem))
        return found, int(rows[:, 4].sum())

    def _check(self, f: IO[bytes], row: np.ndarray) -> str | None:
        view_id, kind, _, offset, length, crc = (int(v) for v in row)
        data = os.pread(f.fileno(), length, offset)
        if len(data) != length:
            return f"{length} bytes at {offset} expected, the shard ends after {len(data)}"
        if crc >= 0:
            actual = fmt.blob_crc32(data)
            if actual != crc:
                return (
                    f"CRC-32 {actual:08x}, {crc:08x} recorded at commit: the bytes were damaged "
                    "or the locator points at other bytes"
                )
            return None
        return self._decodes(data, view_id, kind)

    def _decodes(self, data: bytes, view_id: int, kind: int) -> str | None:
        """Without a recorded CRC: the blob must at least decode (a weaker check)."""
        where = f"view {view_id}"
        try:
            if kind == 0:
                array = fmt.decode_image(data, where)
            else:
                array = fmt.decode_depth(data, self.manifest.depth_scale_m, where)
        except CorruptImageError as exc:
            return str(exc)
        del array
        return None


def _verify_depth_scale(
    root: Path, manifest: fmt.Manifest, blobs: np.ndarray, report: VerifyReport
) -> None:
    """Decode a deterministic sample of depth maps and list the depth scale as SUSPECT when
    their depths are not street-scale (blobs that do not read or decode are skipped: the other
    checks report them)."""
    depth = blobs[(blobs[:, 1] == 1) & (blobs[:, 4] > 0)]
    if not depth.size:
        return  # an index-only database: no depth to judge
    depth = depth[np.argsort(depth[:, 0], kind="stable")]
    rows = depth[np.unique(np.linspace(0, len(depth) - 1, _DEPTH_SAMPLE).round().astype(int))]
    medians = []
    for view_id, _, shard, offset, length, _ in (tuple(int(v) for v in r) for r in rows):
        file = root / manifest.shards[shard].path
        try:
            with open(file, "rb", buffering=0) as f:
                data = os.pread(f.fileno(), length, offset)
            array = fmt.decode_depth(data, manifest.depth_scale_m, f"view {view_id}")
        except (OSError, CorruptImageError):
            continue
        valid = array[array > 0]
        if valid.size:
            medians.append(float(np.median(valid)))
    problem = depth_scale_problem(medians, manifest.depth_scale_m)
    if problem:
        report.suspect.append(Finding(f"{fmt.MANIFEST_NAME} depth_scale_m", problem))


def depth_scale_problem(medians: list[float], scale_m: float) -> str | None:
    """Why the depth scale cannot be right, or ``None`` if the depths look street-scale.

    Args:
        medians: The median valid depth (metres) of each sampled depth map.
        scale_m: The manifest's ``depth_scale_m`` the depths were decoded with.

    Returns:
        A message naming the scale, the observed median and what to do; ``None`` when there is
        nothing to judge or the median of ``medians`` lies in :data:`STREET_DEPTH_RANGE_M`.
    """
    if not medians:
        return None
    median = float(np.median(medians))
    low, high = STREET_DEPTH_RANGE_M
    if low <= median <= high:
        return None
    return (
        f"expected street-scale depths (a median valid depth of {low:g}..{high:g} m), got "
        f"{median:.4g} m over {len(medians)} sampled depth maps decoded with depth_scale_m "
        f"{scale_m:g}: the depth scale was probably edited (restore manifest.json from a backup, "
        "or set depth_scale_m back to the value the database was written with: 0.01 unless "
        "ingested with another) or the depths were ingested in the wrong unit (re-ingest)"
    )


def _blob_name(row: np.ndarray) -> str:
    return f"view {int(row[0])} {'image' if int(row[1]) == 0 else 'depth'}"


# --- repair -------------------------------------------------------------------------------------
@dataclass
class _FoundPart:
    """A pair of part files found on disk, read back."""

    number: int
    views: str
    panoramas: str
    first_view_id: int
    num_views: int
    first_panorama_index: int
    num_panoramas: int
    settings: dict[str, Any] | None


def repair(
    path: str | os.PathLike[str],
    *,
    city: str | None = None,
    anchor: LocalFrame | None = None,
    depth_scale_m: float | None = None,
    image_format: str | None = None,
    progress: bool = True,
) -> RepairReport:
    """Rebuild ``manifest.json`` from the Parquet parts and the shards (deleting nothing).

    Args:
        path: The database folder.
        city: City name, for parts written before they recorded their settings.
        anchor: ENU anchor, likewise.
        depth_scale_m: Metres per depth unit, likewise (the writer's default is 0.01).
        image_format: ``"png"`` or ``"jpeg"``, likewise (default ``"png"``).
        progress: Show a progress bar over the parts.

    Returns:
        What was rebuilt and what was left out.

    Raises:
        ManifestNotFoundError: If the folder holds no parts at all.
        CityDBError: If a writer holds the database, or settings the parts do not record are
            not given.
        CityDBIntegrityError: If a shard the views point into is missing or too short.
    """
    root = Path(path)
    with _writer_lock(root):
        left_out: list[str] = []
        found = _scan_parts(root, left_out, progress)
        chain = _chain(found, left_out)
        settings = _settings(chain, city, anchor, depth_scale_m, image_format)
        views = [pq.read_table(root / p.views, columns=_REPAIR_COLUMNS) for p in chain]
        cameras = settings.get("cameras") or _cameras_from_rows(views)
        shards = _shards_from_rows(root, views)
        manifest = fmt.Manifest(
            city=str(settings["city"]),
            anchor=LocalFrame(**settings["anchor"]),
            depth_scale_m=float(settings["depth_scale_m"]),
            image_format=str(settings["image_format"]),
            cameras=[[float(v) for v in c] for c in cameras],
            parts=[_part_info(root, p) for p in chain],
            shards=shards,
            created=fmt.utc_now_iso(),
            updated=fmt.utc_now_iso(),
        )
        manifest.check_consistency("the repaired manifest")
        backup = _keep_old_manifest(root)
        fmt.write_manifest(root, manifest)
    return RepairReport(
        root=root,
        parts=len(chain),
        views=manifest.num_views,
        panoramas=manifest.num_panoramas,
        shards=len(shards),
        left_out=left_out,
        backup=backup,
    )


_REPAIR_COLUMNS = ["camera_index", *fmt.CAMERA_COLUMNS, *fmt.BLOB_COLUMNS]


@contextmanager
def _writer_lock(root: Path) -> Iterator[None]:
    """Hold the writer's lock (refusing if a writer runs) for the duration."""
    if not root.is_dir():
        raise ManifestNotFoundError(f"expected a CityDB folder at {root}, got no such folder.")
    with open(root / fmt.LOCK_NAME, "ab") as lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                raise CityDBError(
                    f"expected no writer on {root} during repair, got its lock held by another "
                    "process; wait for it to finish."
                ) from exc
        yield


def _scan_parts(root: Path, left_out: list[str], progress: bool) -> list[_FoundPart]:
    """Every readable pair of part files, with its id ranges and recorded settings."""
    views = sorted((root / fmt.VIEWS_DIR).glob(fmt.PART_PATTERN))
    if not views:
        raise ManifestNotFoundError(
            f"expected Parquet parts under {root / fmt.VIEWS_DIR} to rebuild a manifest from, "
            "got none; there is nothing to repair (build the database anew)."
        )
    found = []
    for file in tqdm(views, desc="parts", unit="part", disable=not progress):
        try:
            found.append(_read_found_part(root, file))
        except (OSError, pa.ArrowException, CityDBFormatError, ValueError) as exc:
            left_out.append(f"{fmt.VIEWS_DIR}/{file.name}: unreadable ({exc})")
    return found


def _read_found_part(root: Path, file: Path) -> _FoundPart:
    number = int(file.name.split("-")[1].split(".")[0])
    rel_views = f"{fmt.VIEWS_DIR}/{file.name}"
    rel_panos = f"{fmt.PANORAMAS_DIR}/{file.name}"
    if not (root / rel_panos).is_file():
        raise CityDBFormatError(f"its panoramas file {rel_panos} is missing")
    view_ids = pq.read_table(file, columns=["view_id"]).column(0).to_numpy()
    panos = pq.read_table(root / rel_panos, columns=["panorama_index"]).column(0).to_numpy()
    for name, ids in (("view_id", view_ids), ("panorama_index", panos)):
        if ids.size and not np.array_equal(ids, np.arange(ids[0], ids[0] + ids.size)):
            raise CityDBFormatError(f"its {name} column is not a run of consecutive ids")
    return _FoundPart(
        number=number,
        views=rel_views,
        panoramas=rel_panos,
        first_view_id=int(view_ids[0]) if view_ids.size else -1,
        num_views=int(view_ids.size),
        first_panorama_index=int(panos[0]) if panos.size else -1,
        num_panoramas=int(panos.size),
        settings=fmt.part_settings(pq.read_schema(file)),
    )


def _chain(found: list[_FoundPart], left_out: list[str]) -> list[_FoundPart]:
    """The parts that continue each other from view 0 / panorama 0 (largest first on a tie:
    a compaction's merged part over the small parts it replaced)."""
    chain: list[_FoundPart] = []
    used: set[int] = set()
    view, pano = 0, 0
    while True:
        starts = [
            p
            for p in found
            if (p.first_view_id, p.first_panorama_index) == (view, pano)
            and p.number not in used
            and p.num_views > 0
        ]
        if not starts:
            break
        best = max(starts, key=lambda p: (p.num_views, p.num_panoramas, p.number))
        chain.append(best)
        used.add(best.number)
        view, pano = view + best.num_views, pano + best.num_panoramas
    for p in found:
        if p.number not in used:
            left_out.append(
                f"{p.views}: views {p.first_view_id}..{p.first_view_id + p.num_views - 1} do "
                "not continue the chain from view 0 (a duplicate or a gap before it)"
            )
    return chain


def _settings(
    chain: list[_FoundPart],
    city: str | None,
    anchor: LocalFrame | None,
    depth_scale_m: float | None,
    image_format: str | None,
) -> dict[str, Any]:
    """The database settings: recorded by the newest part, else given; clashes are errors."""
    recorded = next((p.settings for p in reversed(chain) if p.settings), None) or {}
    given = {
        "city": city,
        "anchor": None
        if anchor is None
        else {"lat": anchor.lat, "lon": anchor.lon, "height": anchor.height},
        "depth_scale_m": depth_scale_m,
        "image_format": image_format,
    }
    out: dict[str, Any] = {"cameras": recorded.get("cameras")}
    missing = []
    for key, value in given.items():
        if key in recorded and value is not None and value != recorded[key]:
            raise CityDBError(
                f"repair got {key}={value!r}, but the parts record {recorded[key]!r}; omit "
                f"--{key.replace('_', '-')} to use the recorded value."
            )
        out[key] = recorded.get(key, value)
        if out[key] is None:
            missing.append(key)
    if "image_format" in missing:  # the writer's default, and only a default for new images
        out["image_format"] = "png"
        missing.remove("image_format")
    if missing:
        raise CityDBError(
            f"the parts were written before they recorded their settings, so repair needs "
            f"{', '.join(missing)} from you, got none; pass --city NAME --anchor LAT LON HEIGHT "
            "--depth-scale METRES (0.01 unless the database was made with another)."
        )
    return out


def _cameras_from_rows(views: list[pa.Table]) -> list[list[float]]:
    """The manifest cameras rebuilt from the view rows (``camera_index`` -> its columns)."""
    table = pa.concat_tables(views) if views else None
    if table is None or table.num_rows == 0:
        return []
    index = table.column("camera_index").to_numpy()
    values = np.stack(
        [table.column(c).to_numpy().astype(np.float64) for c in fmt.CAMERA_COLUMNS], 1
    )
    cameras = []
    for cam in range(int(index.max()) + 1):
        rows = np.flatnonzero(index == cam)
        if rows.size == 0:
            raise CityDBError(
                f"camera {cam} is used by no view row, so its intrinsics cannot be rebuilt; "
                "the parts are incomplete."
            )
        cameras.append(values[rows[0]].tolist())
    return cameras


def _shards_from_rows(root: Path, views: list[pa.Table]) -> list[fmt.ShardInfo]:
    """Each shard up to the last one used, committed up to the end of its last blob."""
    ends: dict[int, int] = {}
    for table in views:
        for kind in ("image", "depth"):
            shard = table.column(f"{kind}_shard").to_numpy()
            end = (
                table.column(f"{kind}_offset").to_numpy()
                + table.column(f"{kind}_length").to_numpy()
            )
            stored = table.column(f"{kind}_length").to_numpy() > 0
            for s in np.unique(shard[stored]):
                ends[int(s)] = max(ends.get(int(s), 0), int(end[stored & (shard == s)].max()))
    shards = []
    for s in range(max(ends, default=-1) + 1):
        rel = f"{fmt.BLOBS_DIR}/shard-{s:05d}.bin"
        size = (root / rel).stat().st_size if (root / rel).is_file() else None
        if size is None or size < ends.get(s, 0):
            raise CityDBIntegrityError(
                f"the views point into {rel} up to byte {ends.get(s, 0)}, got "
                f"{'no such file' if size is None else f'{size} bytes'}; restore the shard "
                "before repairing (no manifest was written)."
            )
        shards.append(fmt.ShardInfo(path=rel, size=ends.get(s, 0)))
    return shards


def _part_info(root: Path, part: _FoundPart) -> fmt.PartInfo:
    """The manifest entry of a found part (SHA-256 of the files as they are now)."""
    from cityenv.citydb.writer import _views_at_panorama  # the writer's own rule for the flag

    views = pq.read_table(root / part.views, columns=["panorama_index", "x", "y", "z"])
    panos = pq.read_table(root / part.panoramas, columns=["panorama_index", "x", "y", "z"])
    return fmt.PartInfo(
        views=part.views,
        panoramas=part.panoramas,
        first_view_id=part.first_view_id,
        num_views=part.num_views,
        first_panorama_index=part.first_panorama_index,
        num_panoramas=part.num_panoramas,
        views_at_panorama=_views_at_panorama(views, panos),
        views_sha256=fmt.file_sha256(root / part.views),
        panoramas_sha256=fmt.file_sha256(root / part.panoramas),
    )


def _keep_old_manifest(root: Path) -> Path | None:
    """Copy an existing manifest aside (never deleted; the new one replaces it atomically)."""
    old = root / fmt.MANIFEST_NAME
    if not old.exists():
        return None
    backup = root / f"{fmt.MANIFEST_NAME}.before-repair-{fmt.utc_now_iso().replace(':', '')}"
    shutil.copy2(old, backup)
    return backup
