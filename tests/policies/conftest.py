"""Fixtures for the policy tests: a tiny built-in town cached in a temporary folder.

The town (1 x 1 block, 64-pixel references) builds in a few seconds, once per test session;
``CITYENV_CACHE`` points at it for every test of this folder so nothing touches ``~/.cache``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest

import cityenv  # noqa: F401  (registers CityWorld-Town-v0)
from cityenv.envs.town import build_town_db

TINY_TOWN: dict[str, Any] = {"blocks": (1, 1), "size": 64, "progress": False}
"""``town=`` options of the tiny town."""


@pytest.fixture(scope="session")
def town_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the tiny town's database."""
    cache = tmp_path_factory.mktemp("cityenv-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CITYENV_CACHE", str(cache))
        build_town_db(**TINY_TOWN)
    return cache


@pytest.fixture
def make_town_env(town_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``make_town_env(**kwargs)``: CityWorld-Town-v0 on the tiny town at 32 x 32 pixels."""
    monkeypatch.setenv("CITYENV_CACHE", str(town_cache))
    made: list[gym.Env] = []

    def make(**kwargs: Any) -> gym.Env:
        options = {"width": 32, "height": 32, "town": TINY_TOWN, **kwargs}
        env = gym.make("CityWorld-Town-v0", **options)
        made.append(env)
        return env

    yield make
    for env in made:
        env.close()


@pytest.fixture
def tiny_town(town_cache: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The tiny town's ``town=`` options, with ``CITYENV_CACHE`` pointing at its cache."""
    monkeypatch.setenv("CITYENV_CACHE", str(town_cache))
    return dict(TINY_TOWN)
