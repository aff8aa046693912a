"""Command line: ``python -m cityenv.citydb {ingest,ingest-photos,info,compact,verify,repair} ...``.

Examples::

    python -m cityenv.citydb ingest panoramas.csv seoul.citydb --city seoul
    python -m cityenv.citydb ingest-photos walk/ my.citydb --city mine --refine sfm --depth sfm
    python -m cityenv.citydb info seoul.citydb
    python -m cityenv.citydb compact seoul.citydb
    python -m cityenv.citydb verify seoul.citydb --full   # exit 1 when something is damaged
    python -m cityenv.citydb repair seoul.citydb          # rebuild a lost manifest.json
"""

from __future__ import annotations

import argparse
import json
import sys

from cityenv.errors import CityEnvError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cityenv.citydb", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ingest = sub.add_parser("ingest", help="cut CSV-listed panoramas into views and store them")
    ingest.add_argument("csv", help="panorama CSV (image, lat, lon, height, heading, ...)")
    ingest.add_argument("db", help="database folder (created or resumed)")
    ingest.add_argument("--city", help="city name (required for a new database)")
    ingest.add_argument(
        "--anchor",
        nargs=3,
        type=float,
        metavar=("LAT", "LON", "HEIGHT"),
        help="ENU anchor of a new database (default: the first panorama)",
    )
    ingest.add_argument("--views", type=int, default=8, help="pinhole views per panorama")
    ingest.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("W", "H"))
    ingest.add_argument("--fov", type=float, default=90.0, help="horizontal FOV of a view, deg")
    ingest.add_argument("--jpeg", action="store_true", help="store JPEG instead of lossless PNG")
    ingest.add_argument("--commit-every", type=int, default=100, help="panoramas per commit")
    ingest.add_argument("--source", default="streetview", help="provenance stored per view")
    ingest.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_photos_parser(sub)
    info = sub.add_parser("info", help="print a summary of a database")
    info.add_argument("db", help="database folder")
    compact = sub.add_parser("compact", help="merge small table parts (faster opening)")
    compact.add_argument("db", help="database folder")
    compact.add_argument("--max-views", type=int, default=2_000_000, help="views per part")
    _add_integrity_commands(sub)
    return parser


def _add_photos_parser(sub: argparse._SubParsersAction) -> None:
    photos = sub.add_parser(
        "ingest-photos", help="store geotagged perspective photos as posed views (+ depth)"
    )
    photos.add_argument("source", help="folder of geotagged photos, photo CSV or Mapillary JSON")
    photos.add_argument("db", help="database folder (created or appended to)")
    photos.add_argument("--city", help="city name (required for a new database)")
    photos.add_argument("--anchor", nargs=3, type=float, metavar=("LAT", "LON", "HEIGHT"))
    photos.add_argument("--refine", choices=("none", "sfm"), default="none", help="pose refinement")
    photos.add_argument("--depth", default="none", help="depth source: none, sfm, depth-anything")
    photos.add_argument("--depth-model", help="local model folder of --depth depth-anything")
    photos.add_argument("--geoid-undulation", type=float, help="N in metres (h = altitude + N)")
    photos.add_argument("--max-sfm-residual", type=float, default=3.0, help="SfM gate, metres")
    photos.add_argument("--jpeg", action="store_true", help="store JPEG instead of lossless PNG")
    photos.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _ingest_photos(args: argparse.Namespace) -> None:
    from cityenv.citydb.photos import ingest_photos
    from cityenv.geometry.geodesy import LocalFrame

    report = ingest_photos(
        args.source,
        args.db,
        city=args.city,
        frame=LocalFrame(*args.anchor) if args.anchor else None,
        refine=args.refine,
        depth=args.depth,
        depth_options={"model": args.depth_model} if args.depth_model else None,
        geoid=args.geoid_undulation,
        max_sfm_residual_m=args.max_sfm_residual,
        image_format="jpeg" if args.jpeg else None,
        progress=not args.no_progress,
    )
    print(report.summary())


def _add_integrity_commands(sub: argparse._SubParsersAction) -> None:
    verify = sub.add_parser("verify", help="check checksums and sizes; exit 1 if damaged")
    verify.add_argument("db", help="database folder")
    verify.add_argument("--full", action="store_true", help="also read and check every blob")
    verify.add_argument("--workers", type=int, default=None, help="threads (default: CPUs, <= 8)")
    verify.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    repair = sub.add_parser("repair", help="rebuild manifest.json from the parts and shards")
    repair.add_argument("db", help="database folder")
    repair.add_argument("--city", help="city name (only for parts that do not record it)")
    repair.add_argument("--anchor", nargs=3, type=float, metavar=("LAT", "LON", "HEIGHT"))
    repair.add_argument("--depth-scale", type=float, help="metres per depth unit (e.g. 0.01)")
    repair.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _verify(args: argparse.Namespace) -> int:
    from cityenv.citydb.integrity import verify

    report = verify(args.db, full=args.full, workers=args.workers, progress=not args.no_progress)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _repair(args: argparse.Namespace) -> None:
    from cityenv.citydb.integrity import repair
    from cityenv.geometry.geodesy import LocalFrame

    report = repair(
        args.db,
        city=args.city,
        anchor=LocalFrame(*args.anchor) if args.anchor else None,
        depth_scale_m=args.depth_scale,
        progress=not args.no_progress,
    )
    print("\n".join(report.lines()))


def _ingest(args: argparse.Namespace) -> None:
    from cityenv.citydb.ingest import ingest_panoramas
    from cityenv.geometry.geodesy import LocalFrame

    stats = ingest_panoramas(
        args.csv,
        args.db,
        city=args.city,
        frame=LocalFrame(*args.anchor) if args.anchor else None,
        num_views=args.views,
        size=tuple(args.size),
        fov_deg=args.fov,
        image_format="jpeg" if args.jpeg else None,
        commit_every=args.commit_every,
        source=args.source,
        progress=not args.no_progress,
    )
    print(stats.summary())


def _info(args: argparse.Namespace) -> None:
    from cityenv.citydb.reader import CityDB

    print(json.dumps(CityDB.open(args.db).info(), indent=2))


def _compact(args: argparse.Namespace) -> None:
    from cityenv.citydb.writer import CityDBWriter

    with CityDBWriter(args.db) as writer:
        before = len(writer.manifest.parts)
        after = writer.compact(args.max_views)
    print(f"{before} parts -> {after} parts")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad input, 1 for damage found by
    ``verify``)."""
    args = _parser().parse_args(argv)
    command = {
        "ingest": _ingest,
        "ingest-photos": _ingest_photos,
        "info": _info,
        "compact": _compact,
        "verify": _verify,
        "repair": _repair,
    }
    try:
        status = command[args.command](args)
    except CityEnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
