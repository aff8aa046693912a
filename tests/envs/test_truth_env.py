"""CityWorld-TownTrue-v0: the town's true renders in place of the world model, with the same
task, spaces and reward as CityWorld-Town-v0."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from cityenv.errors import UnknownNameError
from cityenv.worldmodel.truth import RENDERERS, TrueRenderWorldModel


def test_true_render_env_has_the_spaces_and_rewards_of_the_model_env(town_db, tiny):
    model = gym.make("CityWorld-Town-v0", chunk_length=4, **tiny)
    truth = gym.make("CityWorld-TownTrue-v0", chunk_length=4, **tiny)
    assert isinstance(truth.unwrapped.world_model, TrueRenderWorldModel)
    assert truth.observation_space == model.observation_space
    assert truth.action_space == model.action_space
    obs_m, info_m = model.reset(seed=4)
    obs_t, info_t = truth.reset(seed=4)
    assert info_m["goal_node"] == info_t["goal_node"]
    for action in (0, 2, 0, 0):
        obs_m, r_m, *_ = model.step(action)
        obs_t, r_t, *_ = truth.step(action)
        assert r_t == pytest.approx(r_m)  # the task sees poses only
        np.testing.assert_allclose(obs_t["pose"], obs_m["pose"])
    # the frames are the town's own render, not the warp of the references
    assert obs_t["frames"].shape == obs_m["frames"].shape
    assert not np.array_equal(obs_t["frames"], obs_m["frames"])
    assert obs_t["frames"].std() > 5  # a real picture, not a blank
    model.close()
    truth.close()


def test_an_unknown_renderer_is_a_typed_error():
    with pytest.raises(UnknownNameError, match="ground-truth renderer"):
        TrueRenderWorldModel.create(renderer="tonw")
    assert "town" in RENDERERS.names()
