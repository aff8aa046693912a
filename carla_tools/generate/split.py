"""Train / test split by area: square cells of the ENU plane, each assigned to one split.

A cell ``(ix, iy)`` covers ``[ix * size, (ix + 1) * size) x [iy * size, (iy + 1) * size)`` metres
of the world's ENU plane. Each cell goes to ``test`` when a hash of ``(seed, ix, iy)`` falls below
``test_fraction``, else to ``train``. A clip's area is the set of cells its camera positions
touch; the generator keeps only clips whose cells all share one split, so no test clip overlaps
a training area. References carry the split of their cell in their traversal id
(``ref-<time>-<split>``, :func:`cityenv.citydb.clips.reference_traversal`), so a training
consumer drops every test-area reference with
``Retriever.retrieve(..., exclude_traversals=split_traversals(db.traversal_ids, "test"))``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

# the split names and the reference traversal ids are part of the data format: consumers in the
# library (training, evaluation) read them too
from cityenv.citydb.clips import SPLITS, reference_traversal, split_traversals

__all__ = [
    "SPLITS",
    "AreaSplit",
    "cell_name",
    "cell_score",
    "cells_of",
    "reference_traversal",
    "split_traversals",
]

_OFFSET = 1 << 30  # cell indices are shifted so the hash seed is non-negative


def cells_of(points: np.ndarray, cell_size: float) -> np.ndarray:
    """Cell index of each point, ``(N, 2)`` int64, from ENU points ``(N, 2+)`` metres."""
    return np.floor(np.asarray(points)[:, :2] / cell_size).astype(np.int64)


def cell_name(cell: Iterable[int]) -> str:
    """A cell's printable id, e.g. ``"c-1_2"`` for ``(-1, 2)``."""
    ix, iy = (int(c) for c in cell)
    return f"c{ix}_{iy}"


def cell_score(seed: int, cell: tuple[int, int]) -> float:
    """The cell's uniform hash in ``[0, 1)``; the same for a seed on every machine."""
    rng = np.random.default_rng([int(seed), cell[0] + _OFFSET, cell[1] + _OFFSET, 0x5B17])
    return float(rng.uniform())


@dataclass(frozen=True)
class AreaSplit:
    """Assignment of area cells to train / test.

    Attributes:
        cell_size: Cell edge, metres.
        seed: Seed of the cell hash.
        test_fraction: Expected fraction of test cells.
        forced_test: Cells put in ``test`` whatever their hash (see :meth:`with_a_test_cell`).
    """

    cell_size: float = 100.0
    seed: int = 0
    test_fraction: float = 0.2
    forced_test: frozenset[tuple[int, int]] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.cell_size <= 0 or not 0.0 <= self.test_fraction <= 1.0:
            raise ValueError(
                "cell_size must be > 0 and test_fraction in [0, 1], got "
                f"{self.cell_size} and {self.test_fraction}."
            )

    def split_of_cell(self, cell: tuple[int, int]) -> str:
        """``"test"`` or ``"train"`` for one cell."""
        cell = (int(cell[0]), int(cell[1]))
        if cell in self.forced_test or cell_score(self.seed, cell) < self.test_fraction:
            return "test"
        return "train"

    def area(self, points: np.ndarray) -> list[tuple[int, int]]:
        """Sorted distinct cells touched by ENU points ``(N, 2+)``."""
        return sorted({(int(a), int(b)) for a, b in cells_of(points, self.cell_size)})

    def split_of(self, points: np.ndarray) -> str | None:
        """The split of the area of points ``(N, 2+)``, or None if it spans both splits."""
        splits = {self.split_of_cell(c) for c in self.area(points)}
        return splits.pop() if len(splits) == 1 else None

    def with_a_test_cell(self, points: np.ndarray) -> AreaSplit:
        """This split, forcing the lowest-hash cell of ``points`` ``(N, 2+)`` into test if none
        of their cells is a test cell (small towns would otherwise get no test area)."""
        cells = self.area(points)
        if self.test_fraction <= 0 or any(self.split_of_cell(c) == "test" for c in cells):
            return self
        lowest = min(cells, key=lambda c: cell_score(self.seed, c))
        return AreaSplit(self.cell_size, self.seed, self.test_fraction, frozenset({lowest}))
