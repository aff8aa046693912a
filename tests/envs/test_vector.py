"""Vector environments with per-environment keyword arguments: what may vary, and the typed
error when the environments would get different spaces."""

from __future__ import annotations

import numpy as np
import pytest

from cityenv.envs.vector import check_vector_kwargs, make_vec
from cityenv.errors import UnknownNameError, VectorEnvMismatchError


def test_mismatched_space_kwargs_raise_expected_vs_got():
    with pytest.raises(VectorEnvMismatchError, match=r"'width' differs: expected 64 .* got 32"):
        check_vector_kwargs([{"width": 64}, {"width": 32}])
    with pytest.raises(VectorEnvMismatchError, match=r"'observe' differs: expected 'chunk'"):
        check_vector_kwargs([{"observe": "chunk"}, {}])
    with pytest.raises(VectorEnvMismatchError, match="expected 3, got 2"):
        make_vec("CityWorld-Town-v0", 3, per_env=[{}, {}])
    with pytest.raises(UnknownNameError, match="vector mode"):
        make_vec("CityWorld-Town-v0", 2, mode="threads")
    check_vector_kwargs([{"width": 64, "seed": 1}, {"width": 64, "seed": 2}])  # may vary


def test_per_env_kwargs_that_keep_the_spaces_step_together(town_db, tiny):
    per_env = [
        {"task_options": {"min_goal_m": 10.0, "max_goal_m": 40.0}},
        {"task_options": {"min_goal_m": 40.0, "max_goal_m": 90.0}},
    ]
    envs = make_vec("CityWorld-Town-v0", per_env=per_env, mode="sync", **tiny)
    obs, info = envs.reset(seed=[0, 0])
    assert obs["frames"].shape == (2, 64, 64, 3)
    assert info["distance_to_goal"][0] <= 40.5 and info["distance_to_goal"][1] >= 39.5
    obs, reward, *_ = envs.step(np.array([0, 0]))
    assert reward.shape == (2,) and np.isfinite(reward).all()
    envs.close()
