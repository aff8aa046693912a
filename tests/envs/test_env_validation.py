"""Bad input to the environment is a typed error that says what was expected (issue 15, part 4).

Each row is one hole found by probing: a real environment on the tiny town, the bad value, the
error class and the part of its message that says what to do.
"""

from __future__ import annotations

import numpy as np
import pytest

from cityenv.envs.actions import DiscreteActions, TrajectoryActions, VelocityActions
from cityenv.envs.validation import check_reset_options, finite_number, whole_number
from cityenv.errors import (
    InvalidActionError,
    InvalidOptionError,
    ShapeMismatchError,
    UnknownOptionError,
)

# --- the constructor --------------------------------------------------------------------------
CONSTRUCTOR = [
    ({"width": 63.7}, r"width must be a whole number >= 1, got 63.7; pass e\.g\. 63"),
    ({"height": "64"}, r"height must be a real number, got str '64'"),
    ({"chunk_length": 0}, r"chunk_length must be a whole number >= 1, got 0"),
    ({"max_speed": -5}, r"max_speed must be a finite number > 0, got -5"),
    ({"max_speed": 1 + 2j}, r"max_speed must be a real number, got complex"),
    ({"camera_height": float("nan")}, r"camera_height must be a finite number > 0, got nan"),
    ({"fov_deg": 180}, r"fov_deg must be a horizontal field of view in \(0, 180\)"),
    ({"fps": True}, r"fps must be a real number, got bool True"),
    ({"start_radius_m": float("inf")}, r"start_radius_m must be a finite number > 0, got inf"),
    ({"world_model_options": ["tiny"]}, r"world_model_options must be a mapping .* got list"),
    ({"retrieval": 5}, r"retrieval must be a mapping .* got int 5"),
    ({"action_options": {"speed": -1.0}}, r"speed must be a finite number >= 0, got -1\.0"),
]


@pytest.mark.parametrize(("kwargs", "match"), CONSTRUCTOR, ids=[str(k) for k, _ in CONSTRUCTOR])
def test_bad_constructor_arguments_are_refused_before_anything_is_built(make_env, kwargs, match):
    with pytest.raises(InvalidOptionError, match=match):
        make_env(**kwargs)


def test_a_whole_float_is_taken(make_env):
    env = make_env(width=64.0, height=np.int64(48))
    assert env.observation_space["frames"].shape == (48, 64, 3)


# --- actions ------------------------------------------------------------------------------------
L = 12


def _trajectory() -> np.ndarray:
    """A valid (L, 4) chunk: 0.5 m forward per frame."""
    a = np.zeros((L, 4), np.float32)
    a[:, 1] = 0.5 * np.arange(1, L + 1)
    return a


ACTIONS = [
    ("trajectory", _trajectory().T.copy(), r"shape \(4, 12\), expected \(12, 4\) \(a transposed"),
    ("trajectory", _trajectory().reshape(-1), r"shape \(48,\), expected \(12, 4\)"),
    ("trajectory", np.zeros((L, 4), bool), r"dtype bool, expected real numbers"),
    ("velocity", ["1", "0"], r"dtype <U1, expected real numbers"),
    ("velocity", np.array([1 + 1j, 0]), r"dtype complex128, expected real numbers"),
    ("velocity", np.array([1.0, 0.0], object), r"dtype object, expected real numbers"),
    ("velocity", [[1.0], [0.0, 2.0]], r"not an array of numbers"),
    ("discrete", "1", r"expected one integer"),
    ("discrete", True, r"expected one integer"),
]


@pytest.mark.parametrize(("mode", "action", "match"), ACTIONS)
def test_actions_are_not_converted_or_reshaped_into_something_else(make_env, mode, action, match):
    env = make_env(action_mode=mode, task="free")
    env.reset(seed=0)
    with pytest.raises(InvalidActionError, match=match):
        env.step(action)


def test_a_batch_of_one_is_the_action_itself(make_env):
    env = make_env(action_mode="trajectory", task="free", full_info=True)
    env.reset(seed=0)
    *_, info = env.step(_trajectory()[None])
    moved = np.linalg.norm(np.diff(info["trajectory"].positions[:, :2], axis=0), axis=1)
    np.testing.assert_allclose(moved, 0.5, atol=1e-4)  # the path itself, not a scrambled one


def test_a_long_box_is_described_by_its_shape():
    adapter = TrajectoryActions(L, 10.0)
    with pytest.raises(InvalidActionError, match=r"Box\(shape=\(12, 4\), float32; bounds in") as e:
        adapter.check(np.zeros((4, L)))
    assert len(str(e.value)) < 400


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: VelocityActions(L, 10.0, max_speed=-5), r"max_speed must be a finite number > 0"),
        (lambda: TrajectoryActions(L, 10.0, max_speed=0), r"max_speed must be a finite number > 0"),
        (lambda: DiscreteActions(L, 10.0, speed=-2.5), r"speed must be a finite number >= 0"),
        (lambda: DiscreteActions(L, 0.0), r"fps must be a finite number > 0, got 0"),
        (lambda: DiscreteActions(4.5, 10.0), r"chunk_length must be a whole number"),
    ],
)
def test_adapters_refuse_speeds_that_would_drive_backwards(make, match):
    with pytest.raises(InvalidOptionError, match=match):
        make()


# --- reset options ------------------------------------------------------------------------------
RESET = [
    ([("prompt", "x")], InvalidOptionError, r"reset options must be a dict with keys from"),
    ({"promt": "x"}, UnknownOptionError, r"got 'promt'\. Did you mean 'prompt'\?"),
    ({"seed": 3}, UnknownOptionError, r"reset option must be one of .* got 'seed'"),
    ({"start": "abc"}, InvalidOptionError, r"start must be a Pose, a road-graph node id"),
    ({"start": True}, InvalidOptionError, r"start must be .* got bool True"),
    ({"start": [1.0, 2.0, 3.0, 4.0]}, InvalidOptionError, r"\[x, y\] or \[x, y, z\]"),
    ({"goal": [np.nan, 0.0]}, InvalidOptionError, r"goal must be a road-graph node id .*nan"),
    ({"heading_deg": "north"}, InvalidOptionError, r"heading_deg must be a real number, got str"),
    ({"heading_deg": np.inf}, InvalidOptionError, r"heading_deg must be a finite number"),
    ({"prompt": 123}, InvalidOptionError, r"prompt must be a string or None, got int 123"),
    (
        {"start_image": np.zeros((0, 0, 3), np.uint8)},
        ShapeMismatchError,
        r"start_image must be an RGB uint8 image .* h, w >= 1, got uint8 \(0, 0, 3\)",
    ),
    (
        {"start_image": np.zeros((8, 8), np.uint8)},
        ShapeMismatchError,
        r"start_image must be an RGB uint8 image",
    ),
]


@pytest.mark.parametrize(("options", "error", "match"), RESET, ids=[str(r[0])[:40] for r in RESET])
def test_bad_reset_options_are_typed_errors(make_env, options, error, match):
    env = make_env()
    with pytest.raises(error, match=match):
        env.reset(seed=0, options=options)


def test_set_prompt_takes_strings_only(make_env):
    env = make_env()
    env.reset(seed=0)
    with pytest.raises(InvalidOptionError, match="prompt must be a string or None, got int"):
        env.set_prompt(123)
    env.set_prompt(None)


def test_good_reset_options_pass_unchanged_in_meaning(make_env):
    env = make_env(task="free", full_info=True)
    _, info = env.reset(seed=0, options={"start": np.int64(3), "heading_deg": np.float32(90)})
    assert info["start_node"] == 3 and info["pose"].heading_deg == pytest.approx(90.0)
    assert check_reset_options(None) == {}


def test_the_number_helpers():
    assert whole_number("n", 3.0) == 3 and finite_number("x", np.float32(2.5)) == 2.5
    with pytest.raises(InvalidOptionError, match=r"x must be a finite number >= 0, got -1"):
        finite_number("x", -1, low=0.0)
