"""Fixtures for the environment tests: a tiny town database built once per session.

The town is 1 x 1 block with 64 x 64 references every 10 m (about 2 s to build), cached in a
temporary ``CITYENV_CACHE`` so the user's cache is never touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

TINY_TOWN = {"blocks": (1, 1), "size": 64, "spacing_m": 10.0, "progress": False}


@pytest.fixture(scope="session")
def town_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny town's CityDB folder; ``CITYENV_CACHE`` points at its cache for the session."""
    from cityenv.envs.town import build_town_db

    patch = pytest.MonkeyPatch()
    patch.setenv("CITYENV_CACHE", str(tmp_path_factory.mktemp("cityenv-cache")))
    patch.delenv("CITYENV_DATA", raising=False)
    yield build_town_db(**TINY_TOWN)
    patch.undo()


@pytest.fixture
def tiny() -> dict[str, Any]:
    """Keyword arguments of ``gym.make("CityWorld-Town-v0", ...)`` for the tiny town."""
    return {"town": dict(TINY_TOWN), "width": 64, "height": 64}


@pytest.fixture
def make_env(town_db: Path):
    """``make_env(**kwargs)``: a CityWorldEnv on the tiny town at 64 x 64 (closed afterwards)."""
    from cityenv.envs.env import CityWorldEnv

    made = []

    def make(**kwargs: Any) -> CityWorldEnv:
        env = CityWorldEnv(town_db, **{"width": 64, "height": 64, **kwargs})
        made.append(env)
        return env

    yield make
    for env in made:
        env.close()
