"""Benchmark ``python -m cityenv.citydb verify``: fast at city scale, ``--full`` on a town.

Two databases:

- the 1.2M-panorama index of ``benchmarks/bench_retrieval.py`` (index-only, 9.6M views, ~1.8 GB
  of Parquet parts), built with its ``build`` (``--index PATH`` reuses one): the fast check
  (manifest, SHA-256 of every part, page checksums and ids/cameras/locators of the columns it
  reads); also ``CityDB.open`` time (it verifies the page checksums of what it reads);
- a copy of a generated town database (default: the cached ``town-seed0-v1``; the copy is
  verified, the cache is never touched) with ``--full`` (every blob: its CRC-32, or a decode for
  blobs written before CRCs were recorded) and the fast check; then the same views written anew by
  today's writer (so with CRC-32s and hashes), ``--full`` again.

Prints the median and the spread of ``--repeats`` runs of each (page cache warm after the first).

Usage::

    python benchmarks/bench_verify.py                                  # builds the index in /tmp
    python benchmarks/bench_verify.py --index /data/benchdb --town /data/town/citydb
    python benchmarks/bench_verify.py --panoramas 100000 --repeats 3   # quick run
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cityenv.citydb import format as fmt
from cityenv.citydb.integrity import verify
from cityenv.citydb.reader import CityDB
from cityenv.citydb.writer import CityDBWriter

DEFAULT_TOWN = Path.home() / ".cache" / "cityenv" / "town-seed0-v1" / "citydb"


def timed(fn, repeats: int) -> tuple[list[float], object]:
    """Wall seconds of ``repeats`` calls of ``fn`` and the last result."""
    seconds, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - t0)
    return seconds, result


def row(name: str, seconds: list[float], extra: str = "") -> None:
    med = float(np.median(seconds))
    print(f"{name:<52} {med:>8.2f} s  (min {min(seconds):.2f}, max {max(seconds):.2f})  {extra}")


def ensure_index(path: Path, panoramas: int) -> None:
    """Build the retrieval benchmark's index-only database at ``path`` unless it exists."""
    if (path / fmt.MANIFEST_NAME).exists():
        return
    script = Path(__file__).with_name("bench_retrieval.py")
    cmd = [sys.executable, str(script), "--build-only", "--path", str(path)]
    t0 = time.perf_counter()
    subprocess.run([*cmd, "--panoramas", str(panoramas)], check=True)
    print(f"built the index ({panoramas:,} panoramas) in {time.perf_counter() - t0:.1f} s")


def bench_index(path: Path, repeats: int, workers: int | None) -> None:
    size = sum(f.stat().st_size for f in path.rglob("*.parquet"))
    seconds, report = timed(lambda: verify(path, workers=workers, progress=False), repeats)
    assert report.ok, report.lines()
    db = CityDB.open(path)
    print(f"\nindex {path}: {len(db):,} views, {db.num_panoramas:,} panoramas, {size / 1e9:.2f} GB")
    row("verify (fast: manifest + parts)", seconds, f"{size / 1e6 / np.median(seconds):.0f} MB/s")
    if report.not_recorded:
        print(f"  (not recorded: {'; '.join(report.not_recorded)})")
    del db
    open_s, _ = timed(lambda: CityDB.open(path), repeats)
    row("CityDB.open (page checksums checked)", open_s)


def bench_town(source: Path, repeats: int, workers: int | None) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-verify-town-") as tmp:
        town = Path(shutil.copytree(source, Path(tmp) / "citydb"))
        blob_bytes = sum(f.stat().st_size for f in (town / fmt.BLOBS_DIR).iterdir())
        full_s, report = timed(
            lambda: verify(town, full=True, workers=workers, progress=False), repeats
        )
        assert report.ok, report.lines()
        print(
            f"\ntown copy of {source}: {report.blobs:,} blobs, {blob_bytes / 1e6:.1f} MB of shards"
        )
        rate = blob_bytes / 1e6 / np.median(full_s)
        row("verify --full (every blob)", full_s, f"{rate:.0f} MB/s")
        if report.not_recorded:
            print(f"  (not recorded: {'; '.join(report.not_recorded)}: blobs decoded instead)")
        fast_s, _ = timed(lambda: verify(town, workers=workers, progress=False), repeats)
        row("verify (fast)", fast_s)
        fresh = rewrite(town, Path(tmp) / "rewritten")
        full_s, report = timed(
            lambda: verify(fresh, full=True, workers=workers, progress=False), repeats
        )
        assert report.ok and not report.not_recorded, report.lines()
        row(
            "verify --full, same views with CRC-32s",
            full_s,
            f"{blob_bytes / 1e6 / np.median(full_s):.0f} MB/s",
        )


def rewrite(source: Path, target: Path) -> Path:
    """The views of ``source`` written anew by today's writer (with every checksum)."""
    db = CityDB.open(source)
    with CityDBWriter(target, city=db.city, frame=db.frame, depth_scale_m=db.depth_scale_m) as w:
        for view_id in range(len(db)):
            view = db.load_view(view_id)
            meta = view.metadata
            w.add_view(
                image=view.image, depth=view.depth, camera=view.camera, pose=view.pose,
                panorama_id=meta.panorama_id, traversal_id=meta.traversal_id,
                capture_time=meta.capture_time, source=meta.source, view_index=meta.view_index,
            )  # fmt: skip
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--index", type=Path, help="the retrieval benchmark's database (built if missing)"
    )
    parser.add_argument("--panoramas", type=int, default=1_200_000, help="panoramas of a new index")
    parser.add_argument("--town", type=Path, default=DEFAULT_TOWN, help="a town CityDB to copy")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each measurement")
    parser.add_argument("--workers", type=int, default=None, help="verify threads (default: CPUs)")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    print(
        f"bench_verify: {os.cpu_count()} cores visible, load average {load:.2f}, "
        f"{args.repeats} repeats"
    )
    temp = None
    index = args.index
    if index is None:
        temp = tempfile.mkdtemp(prefix="bench-verify-index-")
        index = Path(temp) / "db"
    try:
        ensure_index(index, args.panoramas)
        bench_index(index, args.repeats, args.workers)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    if (args.town / fmt.MANIFEST_NAME).exists():
        bench_town(args.town, args.repeats, args.workers)
    else:
        print(
            f"\nno town database at {args.town}; build one (`python -m cityenv.rollout`) "
            "or pass --town"
        )
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
