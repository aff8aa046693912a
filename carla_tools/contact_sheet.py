"""A contact sheet of generated data: reference captures and clip frames across times and weathers.

``python -m carla_tools.contact_sheet DATA_DIR --out docs/contact_sheet.png`` where ``DATA_DIR``
is a generator output folder (``citydb/`` and ``clips/``). The sheet shows a few reference
captures (all 8 views each) and, for clips of different weathers and times of day, frames
spread over each clip with its caption, so a person can check at a glance that the data reads as
a street.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from cityenv.citydb.clips import ClipInfo, ClipStore
from cityenv.citydb.reader import CityDB

_BG = (24, 24, 24)
_FG = (235, 235, 235)


def _tile(image: np.ndarray, size: int) -> np.ndarray:
    """An RGB image ``(H, W, 3)`` resized to ``(size, size, 3)``."""
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def _label(text: str, width: int, height: int = 22) -> np.ndarray:
    """A strip ``(height, width, 3)`` with ``text`` written on it."""
    strip = np.full((height, width, 3), _BG, np.uint8)
    cv2.putText(strip, text, (6, height - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, _FG, 1, cv2.LINE_AA)
    return strip


def _row(images: list[np.ndarray], size: int, columns: int) -> np.ndarray:
    """Tiles side by side, padded to ``columns`` tiles, ``(size, columns * size, 3)``."""
    tiles = [_tile(im, size) for im in images[:columns]]
    tiles += [np.full((size, size, 3), _BG, np.uint8)] * (columns - len(tiles))
    return np.concatenate(tiles, axis=1)


def reference_rows(db: CityDB, count: int, size: int, columns: int) -> list[np.ndarray]:
    """Label and view rows for ``count`` panoramas spread over the database."""
    table = db.panoramas.to_pydict()
    rows = []
    picks = np.linspace(0, len(table["panorama_id"]) - 1, count).round().astype(int)
    for p in picks:
        views, _ = db.panorama_views(np.array([table["panorama_index"][p]]))
        images = [db.load_image(int(v)) for v in views]
        when = table["capture_time"][p].strftime("%Y-%m-%d %H:%MZ")
        text = f"reference {table['panorama_id'][p]}  ({when}, 8 views at 45 deg steps)"
        rows += [_label(text, columns * size), _row(images, size, columns)]
    return rows


def _pick_clips(clips: list[ClipInfo], count: int) -> list[ClipInfo]:
    """``count`` clips, greedily covering as many weathers, kinds and start hours as possible."""
    picked: list[ClipInfo] = []
    seen: dict[str, set] = {"weather": set(), "kind": set(), "hour": set()}
    rest = list(clips)
    while rest and len(picked) < count:

        def gain(info: ClipInfo) -> int:
            return (
                4 * (info.weather not in seen["weather"])
                + 2 * (info.kind not in seen["kind"])
                + (info.start_time.hour not in seen["hour"])
            )

        best = max(rest, key=gain)
        rest.remove(best)
        picked.append(best)
        seen["weather"].add(best.weather)
        seen["kind"].add(best.kind)
        seen["hour"].add(best.start_time.hour)
    return picked


def clip_rows(store: ClipStore, count: int, size: int, columns: int) -> list[np.ndarray]:
    """Label and frame rows for ``count`` clips of varied weather and kind."""
    rows = []
    for info in _pick_clips(store.clips(), count):
        # only the frames shown are kept in memory
        frames = np.linspace(0, info.num_frames - 1, columns).round().astype(int)
        rgb = store.read_frames(info.clip_id, frames)
        when = info.start_time.strftime("%H:%MZ")
        text = f"{info.clip_id} [{info.split}] {when}: {info.caption}"
        rows += [_label(text, columns * size), _row(list(rgb), size, columns)]
    return rows


def contact_sheet(
    data_dir: str | Path, *, references: int = 2, clips: int = 8, size: int = 160, columns: int = 8
) -> np.ndarray:
    """Build the sheet.

    Args:
        data_dir: Generator output folder.
        references: Number of reference captures shown.
        clips: Number of clips shown.
        size: Tile edge, pixels.
        columns: Tiles per row.

    Returns:
        The sheet, RGB uint8 ``(H, columns * size, 3)``.
    """
    data_dir = Path(data_dir)
    with CityDB.open(data_dir / "citydb") as db:
        rows = reference_rows(db, references, size, columns)
    rows += clip_rows(ClipStore(data_dir / "clips"), clips, size, columns)
    return np.concatenate(rows, axis=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m carla_tools.contact_sheet", description=__doc__
    )
    parser.add_argument("data_dir", type=Path, help="generator output folder")
    parser.add_argument("--out", type=Path, default=Path("docs/contact_sheet.png"))
    parser.add_argument("--references", type=int, default=2)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--size", type=int, default=160, help="tile edge in pixels")
    args = parser.parse_args(argv)
    sheet = contact_sheet(
        args.data_dir, references=args.references, clips=args.clips, size=args.size
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out} ({sheet.shape[1]} x {sheet.shape[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
