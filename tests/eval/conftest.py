"""Evaluation data: a tiny generated town, and a CityDB made of its test clips' own frames."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from carla_tools.generate import (
    ClipSettings,
    GenerateSettings,
    ReferenceSettings,
    SimSettings,
    generate,
)
from cityenv.citydb.clips import ClipStore
from cityenv.citydb.writer import CityDBWriter

NOON = datetime(2024, 5, 1, 3, 0, tzinfo=timezone.utc)
AFTERNOON = datetime(2024, 5, 1, 4, 0, tzinfo=timezone.utc)  # an hour later: outside 30 min

#: The tiny town of the prompt-adherence and long-route tests: 1 x 1 block, 64 px references.
TINY_TOWN = {"blocks": (1, 1), "size": 64, "spacing_m": 10.0}


def make_eval_data(out: Path, clips: int = 6, frames: int = 17, size: int = 64) -> Path:
    """A 1 x 1-block town: references every 20 m at noon, clips an hour later (about 2 s)."""
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
                times=(AFTERNOON,),
                kinds=("vehicle", "pedestrian", "free"),
            ),
            cell_m=50.0,
            test_fraction=0.3,
            progress=False,
        )
    )
    return out


def make_mirror_db(clips: Path, out: Path) -> Path:
    """A CityDB whose views are the test clips' own frames (RGB, depth, pose), captured a day
    earlier under another traversal: replaying a clip against it is nearly the identity."""
    store = ClipStore(clips, split="test")
    with CityDBWriter(out, city="mirror", frame=store.anchor, image_format="png") as writer:
        for info in store.clips():
            clip = store.read_clip(info.clip_id, depth=True, dynamic=False)
            for i in range(len(clip)):
                writer.add_view(
                    image=clip.rgb[i],
                    depth=clip.depth[i],
                    camera=info.camera,
                    pose=clip.trajectory[i],
                    panorama_id=f"{info.clip_id}-{i:03d}",
                    traversal_id="mirror",
                    capture_time=info.start_time - timedelta(days=1),
                )
        writer.commit()
    return out


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory) -> Path:
    """A generator output folder (citydb/ + clips/) with test clips and day-time references."""
    return make_eval_data(tmp_path_factory.mktemp("eval-data"))


@pytest.fixture(scope="session")
def mirror_db(eval_data, tmp_path_factory) -> Path:
    """A CityDB of the test clips' own frames (see :func:`make_mirror_db`)."""
    return make_mirror_db(eval_data / "clips", tmp_path_factory.mktemp("mirror") / "citydb")


@pytest.fixture(scope="module")
def town_db(tmp_path_factory):
    """The tiny town's CityDB (clear noon references), in a temporary cache."""
    from cityenv.envs.town import build_town_db

    patch = pytest.MonkeyPatch()
    patch.setenv("CITYENV_CACHE", str(tmp_path_factory.mktemp("town-cache")))
    yield build_town_db(**TINY_TOWN, progress=False)
    patch.undo()


@pytest.fixture(scope="module")
def renderer():
    """The tiny town's ground-truth renderer."""
    from carla_tools.eval_render import town_renderer
    from cityenv.envs.town import TownSpec

    with contextlib.closing(town_renderer(TownSpec(blocks=list(TINY_TOWN["blocks"])))) as r:
        yield r


@pytest.fixture(scope="module")
def references(town_db):
    """References of trajectory chunks from the tiny town's CityDB (K = 3)."""
    from cityenv.eval.longroute import RouteReferences

    return RouteReferences(town_db, num_references=3)
