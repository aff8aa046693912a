"""Registered IDs: every one with data passes the checkers; the others say how to get data."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

import cityenv  # noqa: F401  (registers the IDs)
from cityenv.envs.registration import ENV_IDS
from cityenv.envs.town import TownSpec, build_town_db, town_db_path
from cityenv.errors import CityDataNotFoundError, ConfigError, UnknownNameError

REAL_CITIES = [env_id for env_id, city in ENV_IDS.items() if city != "town"]


def test_ids_are_registered_without_importing_torch():
    code = "import sys, cityenv, gymnasium; print('torch' in sys.modules, " \
        "sorted(k for k in gymnasium.registry if k.startswith('CityWorld')))"  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("False") and all(i in out.stdout for i in ENV_IDS)


@pytest.mark.parametrize("env_id", REAL_CITIES)
def test_real_city_without_data_says_how_to_build_it(town_db, env_id, monkeypatch):
    monkeypatch.delenv("CITYENV_DATA", raising=False)
    with pytest.raises(CityDataNotFoundError, match=r"python -m cityenv.citydb ingest .* city_db="):
        gym.make(env_id)


@pytest.mark.parametrize("env_id", REAL_CITIES)
def test_real_city_with_data_passes_check_env(town_db, env_id, tmp_path, monkeypatch):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    (tmp_path / ENV_IDS[env_id]).symlink_to(town_db, target_is_directory=True)
    monkeypatch.setenv("CITYENV_DATA", str(tmp_path))
    env = gym.make(env_id, width=64, height=64, render_mode="rgb_array")
    gym_check_env(env.unwrapped)
    sb3_check_env(env.unwrapped, warn=False)
    env.close()
    env = gym.make(env_id, city_db=town_db, width=64, height=64)  # or given directly
    assert env.unwrapped.db.root == town_db
    env.close()


def test_unknown_city_suggests_a_name(town_db):
    from cityenv.envs.env import CityWorldEnv

    with pytest.raises(UnknownNameError, match=r"got 'seol'\. Did you mean 'seoul'\?"):
        CityWorldEnv(city="seol")


def test_the_town_comes_from_its_provider_through_the_entry_point():
    """cityenv never imports carla_tools: the "town" provider is found by its entry point."""
    from cityenv.envs.cities import CITY_PROVIDERS

    assert {"town", "seoul", "busan", "annarbor"} <= set(CITY_PROVIDERS.names())
    assert CITY_PROVIDERS.get("town").__module__ == "carla_tools.town_db"


def test_town_options_are_checked_against_town_spec(town_db):
    from cityenv.envs.env import CityWorldEnv

    with pytest.raises(ConfigError, match=r"town option must be one of .*'sise'\. Did you mean"):
        CityWorldEnv(town={"sise": 64})
    with pytest.raises(ConfigError, match=r"blocks must be a pair \[east, north\].*got \(1,\)"):
        CityWorldEnv(town={"blocks": (1,)})
    with pytest.raises(ConfigError, match=r"size must be an integer >= 1, got '64'"):
        CityWorldEnv(city_db=town_db, town={"size": "64"})  # checked whatever the city
    with pytest.raises(ConfigError, match=r"spacing_m must be metres > 0, got -1"):
        TownSpec(spacing_m=-1)
    spec = TownSpec.from_options({"blocks": (1, 1), "size": 64, "progress": False})
    assert spec == TownSpec(blocks=[1, 1], size=64) and spec.blocks == [1, 1]


def test_make_vec_async(town_db, tiny):
    # "spawn": forking a process whose torch has already run (earlier tests did) hangs the
    # children at their first torch op (GNU OpenMP is not fork-safe).
    envs = gym.make_vec(
        "CityWorld-Town-v0",
        num_envs=2,
        vectorization_mode="async",
        vector_kwargs={"context": "spawn"},
        **tiny,
    )
    obs, _ = envs.reset(seed=[0, 1])
    assert obs["frames"].shape == (2, 64, 64, 3)
    for _ in range(2):
        obs, reward, terminated, truncated, info = envs.step(np.array([0, 2]))
    assert obs["pose"].shape == (2, 7) and reward.shape == (2,)
    assert info["references_used"].shape == (2,)
    envs.close()


def test_town_cache_is_reused(town_db):
    assert town_db == town_db_path(TownSpec(blocks=(1, 1), size=64))
    assert town_db.parent.name == "town-seed0-v1-1x1-64px-10m"
    assert TownSpec().folder_name == "town-seed0-v1"
    assert build_town_db(blocks=(1, 1), size=64, progress=False) == town_db  # no rebuild
    assert not list(town_db.parent.glob(".*tmp*"))  # the build left no temporary folder


def test_the_library_needs_neither_moderngl_nor_sb3(town_db, tmp_path):
    """Without the `town` and `rl` extras: a real city and a cached town open; building a new
    town says which extra to install."""
    (tmp_path / "seoul").symlink_to(town_db, target_is_directory=True)
    code = textwrap.dedent(
        """
        import sys
        sys.modules["moderngl"] = sys.modules["stable_baselines3"] = None  # `import` fails
        import gymnasium as gym
        import cityenv
        from cityenv.errors import CityDataNotFoundError

        gym.make("CityWorld-Seoul-v0", width=32, height=32).reset(seed=0)
        town = {"blocks": (1, 1), "size": 64, "progress": False}
        gym.make("CityWorld-Town-v0", town=town, width=32, height=32).reset(seed=0)
        try:
            gym.make("CityWorld-Town-v0", town={**town, "seed": 99})
        except CityDataNotFoundError as err:
            print("ERROR", err)
        """
    )
    env = {
        **os.environ,
        "CITYENV_DATA": str(tmp_path),
        "CITYENV_CACHE": os.environ["CITYENV_CACHE"],
    }
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ERROR the built-in town's database must be built" in done.stdout
    assert "pip install 'cityenv[town]'" in done.stdout
