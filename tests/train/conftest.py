"""Training data for the training tests: a tiny generated town (references + clips), made once."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from carla_tools.generate import (
    ClipSettings,
    GenerateSettings,
    ReferenceSettings,
    SimSettings,
    generate,
)

NOON = datetime(2024, 5, 1, 3, 0, tzinfo=timezone.utc)
DUSK = datetime(2024, 5, 1, 10, 10, tzinfo=timezone.utc)

#: The tiny preset cut down to what the tiny data can fill: 4-frame chunks, 1 history latent.
TINY_SAMPLING = {"chunk_frames": 4, "history": 1, "max_references": 2}


def make_town_data(out: Path, clips: int = 6, frames: int = 17, size: int = 64) -> Path:
    """A 1 x 1-block town: references every 20 m at noon, clips at dusk (about 10 s)."""
    generate(
        GenerateSettings(
            out=out,
            sim=SimSettings("town", {"seed": 1, "blocks": [1, 1]}),
            references=ReferenceSettings(spacing_m=20.0, size=size, times=(NOON,)),
            clips=ClipSettings(
                count=clips,
                num_frames=frames,
                fps=10.0,
                width=size,
                height=size,
                times=(DUSK,),
                kinds=("vehicle", "pedestrian", "free"),
            ),  # fmt: skip
            cell_m=50.0,
            test_fraction=0.3,
            progress=False,
        )
    )
    return out


@pytest.fixture(scope="session")
def town_data(tmp_path_factory) -> Path:
    """A generator output folder (citydb/ + clips/) shared by the training tests."""
    return make_town_data(tmp_path_factory.mktemp("town-data"))
