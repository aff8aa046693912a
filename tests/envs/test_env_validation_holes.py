"""More bad input to the environment, found by review: each is a typed error naming what to do.

A real environment on the tiny town; the bad value; the error class and the message's advice.
"""

from __future__ import annotations

import pytest

from cityenv.envs.validation import MAX_FRAME_SIDE
from cityenv.errors import (
    CityEnvError,
    InvalidOptionError,
    ResetNeededError,
    UnknownOptionError,
)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (
            {"start": 10**9},
            r"reset option start must be a road-graph node id in \[0, \d+\), got 1000000000",
        ),
        ({"start": -1}, r"reset option start must be a road-graph node id in \[0, \d+\), got -1"),
        (
            {"goal": 10**9},
            r"reset option goal must be a road-graph node id in \[0, \d+\), got 1000000000",
        ),
    ],
    ids=["start-huge", "start-negative", "goal-huge"],
)
def test_a_node_id_outside_the_graph_is_a_typed_error(make_env, options, match):
    env = make_env()
    with pytest.raises(InvalidOptionError, match=match):
        env.reset(seed=0, options=options)


def test_an_unknown_retrieval_option_is_named(make_env):
    with pytest.raises(UnknownOptionError, match=r"retrieval option must be one of .*got 'bogus'"):
        make_env(retrieval={"bogus": 1})
    with pytest.raises(UnknownOptionError, match=r"got 'radus'\. Did you mean 'radius'\?"):
        make_env(retrieval={"radus": 30.0})


def test_known_retrieval_options_still_reach_the_retriever(make_env):
    env = make_env(retrieval={"k": 3, "radius": 30.0, "exclude_traversals": "t0"})
    assert (env.retrieval_k, env.exclude_traversals, env.retriever.radius) == (3, ("t0",), 30.0)


def test_step_before_reset_says_to_reset(make_env):
    env = make_env()
    with pytest.raises(ResetNeededError, match=r"reset before step\(\); call env\.reset\(\) first"):
        env.step(env.action_space.sample())
    assert issubclass(ResetNeededError, CityEnvError) and issubclass(ResetNeededError, RuntimeError)


@pytest.mark.parametrize(
    "kwargs", [{"width": 10**6, "height": 10**6}, {"height": MAX_FRAME_SIDE + 1}]
)
def test_absurd_frame_sizes_are_refused_before_anything_is_built(make_env, kwargs):
    name = "width" if "width" in kwargs else "height"
    match = rf"{name} must be a frame size in pixels <= {MAX_FRAME_SIDE}, got {kwargs[name]}"
    with pytest.raises(InvalidOptionError, match=match):
        make_env(**kwargs)
