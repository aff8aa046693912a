"""The environment with the diffusion world model (the tiny preset, random weights)."""

from __future__ import annotations

import numpy as np
import pytest

from cityenv.errors import ShapeMismatchError
from cityenv.worldmodel.diffusion import DiffusionWorldModel

OPTIONS = {"preset": "tiny", "device": "cpu"}


def test_episode_with_the_diffusion_world_model(make_env) -> None:
    with pytest.warns(UserWarning, match="random weights of the 'tiny' preset"):
        env = make_env(
            world_model="diffusion", world_model_options=OPTIONS, chunk_length=8, observe="chunk"
        )
    assert isinstance(env.world_model, DiffusionWorldModel)
    obs, info = env.reset(seed=0, options={"prompt": "a flooded street"})
    assert obs["frames"].shape == (8, 64, 64, 3)
    for _ in range(2):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs["frames"].shape == (8, 64, 64, 3) and obs["frames"].dtype == np.uint8
        assert np.isfinite(reward)
    output = env.last_step.output
    assert output.info["references_used"] > 0 and output.info["prompt_used"]
    assert output.info["history"] == 3
    assert output.warps.shape == (8, 64, 64, 3)
    assert output.masks.any()  # the nearest reference was splatted: geometric referencing ran


def test_same_seed_same_episode(make_env) -> None:
    runs = []
    for _ in range(2):
        with pytest.warns(UserWarning):
            env = make_env(world_model="diffusion", world_model_options=OPTIONS, chunk_length=4)
        env.reset(seed=5)
        env.action_space.seed(5)
        runs.append(env.step(env.action_space.sample())[0]["frames"])
    np.testing.assert_array_equal(runs[0], runs[1])


def test_chunk_length_must_fit_the_vae(make_env) -> None:
    with pytest.warns(UserWarning), pytest.raises(ShapeMismatchError, match="chunk_length to 4, 8"):
        make_env(world_model="diffusion", world_model_options=OPTIONS, chunk_length=6)
    with pytest.warns(UserWarning), pytest.raises(ShapeMismatchError, match="got 72x64"):
        make_env(world_model="diffusion", world_model_options=OPTIONS, width=72)


def test_a_start_image_starts_the_episode(make_env) -> None:
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with pytest.warns(UserWarning):
        env = make_env(world_model="diffusion", world_model_options=OPTIONS, chunk_length=4)
    obs, _ = env.reset(seed=0, options={"start_image": image})
    np.testing.assert_array_equal(obs["frames"], image)
    assert env.world_model.reset_info["source"] == "start_image"
    plain = make_env(chunk_length=4)  # the warp model too
    obs, _ = plain.reset(seed=0, options={"start_image": image})
    np.testing.assert_array_equal(obs["frames"], image)


def test_gymnasium_check_env_passes_with_the_diffusion_model(town_db, tiny) -> None:
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    with pytest.warns(UserWarning, match="random weights"):
        env = gym.make(
            "CityWorld-Town-v0",
            render_mode="rgb_array",
            world_model="diffusion",
            world_model_options=OPTIONS,
            chunk_length=4,
            **tiny,
        )
    check_env(env.unwrapped, skip_render_check=False)  # seeded resets and steps repeat exactly
    env.close()


# --- the world model's own frame size (width=None, height=None) -----------------------------------
@pytest.fixture(scope="module")
def recording_model(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random model saved as if trained on 48 x 32 frames in 8-frame chunks."""
    from cityenv.worldmodel.checkpoint import TrainedOn

    model = DiffusionWorldModel.from_preset("tiny", device="cpu")
    model.trained = TrainedOn(frame_size=(48, 32), chunk_frames=8, stage="transformer", steps=1)
    return model.save_pretrained(tmp_path_factory.mktemp("recording") / "wm")


def test_unset_size_is_the_trained_size_of_a_recording_model(make_env, recording_model) -> None:
    options = {"path": str(recording_model), "device": "cpu", "num_inference_steps": 1}
    env = make_env(
        world_model="diffusion",
        world_model_options=options,
        width=None,
        height=None,
        chunk_length=8,
    )
    assert (env.camera.width, env.camera.height) == (48, 32)
    assert env.observation_space["frames"].shape == (32, 48, 3)
    obs, _ = env.reset(seed=0)
    assert obs["frames"].shape == (32, 48, 3)
    obs, *_ = env.step(env.action_space.sample())
    assert obs["frames"].shape == (32, 48, 3)


def test_a_recording_model_refuses_the_env_at_another_size(make_env, recording_model) -> None:
    options = {"path": str(recording_model), "device": "cpu"}
    with pytest.raises(
        ShapeMismatchError,
        match=r"trained on 48 x 32 frames in 8-frame chunks; got 64 x 64 frames: make the env "
        r"with width=48, height=32",
    ):
        make_env(world_model="diffusion", world_model_options=options, chunk_length=8)
    with pytest.raises(ShapeMismatchError, match=r"got 12-frame chunks: .* chunk_length=8\.$"):
        make_env(
            world_model="diffusion", world_model_options=options, width=None, height=None
        )  # chunk_length 12 by default


def test_unset_size_is_256_for_the_warp_and_a_random_preset(make_env) -> None:
    env = make_env(width=None, height=None)
    assert (env.camera.width, env.camera.height) == (256, 256)
    assert env.world_model.native_size is None
    with pytest.warns(UserWarning, match="random weights"):
        env = make_env(
            world_model="diffusion", world_model_options=OPTIONS, width=None, height=None
        )
    assert (env.camera.width, env.camera.height) == (256, 256)
    half = make_env(width=None, height=64)  # each unset side on its own
    assert (half.camera.width, half.camera.height) == (256, 64)


def test_the_registered_ids_default_to_the_native_size(town_db) -> None:
    import gymnasium as gym

    env = gym.make("CityWorld-Town-v0", city_db=town_db)
    assert (env.unwrapped.camera.width, env.unwrapped.camera.height) == (256, 256)
    env.close()
