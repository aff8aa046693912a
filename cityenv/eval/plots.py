"""Matplotlib for the bench's figures: drawing to files only, one way to save them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["pyplot", "save_figure"]


def pyplot() -> Any:
    """matplotlib's pyplot drawing to files only (no display on a bench machine).

    Raises:
        ModuleNotFoundError: Saying how to install matplotlib when it is missing.
    """
    try:
        import matplotlib
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "plots of the bench need matplotlib, got none installed; pip install matplotlib."
        ) from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out, save (100 dpi, parent folders made) and close ``fig``; returns the path."""
    plt = pyplot()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
