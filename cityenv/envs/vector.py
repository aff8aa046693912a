"""Vector environments of CityWorld IDs, each environment with its own keyword arguments.

``gym.make_vec(id, num_envs, ...)`` gives every environment the same keyword arguments. To vary
what does not change the spaces (another town seed, world model or goal range per worker), use
:func:`make_vec` with ``per_env``; keyword arguments that set the observation or action spaces
(:data:`SPACE_KEYS`: frame size, ``observe``, action mode, ...) must agree, or Gymnasium would
fail later with a message that names no key: :func:`check_vector_kwargs` says which key differs,
expected (the first environment's) against got.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import gymnasium as gym

from cityenv.errors import VectorEnvMismatchError

__all__ = ["SPACE_KEYS", "check_vector_kwargs", "make_vec"]

SPACE_KEYS = (
    "width",
    "height",
    "observe",
    "chunk_length",
    "action_mode",
    "action_options",
)
"""Keyword arguments of :class:`~cityenv.envs.env.CityWorldEnv` that shape its spaces."""


def check_vector_kwargs(per_env: Sequence[Mapping[str, Any]]) -> None:
    """Raise if the environments' keyword arguments would give them different spaces.

    Args:
        per_env: One mapping of keyword arguments per environment.

    Raises:
        VectorEnvMismatchError: If a key of :data:`SPACE_KEYS` differs between environments
            (a key given to some and not to others counts as differing).
    """
    if not per_env:
        raise VectorEnvMismatchError(
            "a vector environment needs keyword arguments for at least one environment, got "
            "an empty list; give one mapping per environment."
        )
    first = per_env[0]
    for i, kwargs in enumerate(per_env[1:], start=1):
        for key in SPACE_KEYS:
            expected, got = first.get(key, "<default>"), kwargs.get(key, "<default>")
            if expected != got:
                raise VectorEnvMismatchError(
                    f"the environments of a vector environment must share their spaces, but "
                    f"{key!r} differs: expected {expected!r} (environment 0), got {got!r} "
                    f"(environment {i}); give every environment the same {key!r} (only keys "
                    f"outside {list(SPACE_KEYS)} may vary)."
                )


def make_vec(
    env_id: str,
    num_envs: int | None = None,
    *,
    per_env: Sequence[Mapping[str, Any]] | None = None,
    mode: str = "async",
    wrappers: Sequence[Callable[[gym.Env], gym.Env]] = (),
    vector_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> gym.vector.VectorEnv:
    """A vector environment of ``env_id``; ``per_env`` adds keyword arguments per environment.

    Args:
        env_id: Gymnasium id.
        num_envs: Number of environments (``None``: ``len(per_env)``).
        per_env: One mapping per environment, merged over ``kwargs``.
        mode: ``"async"`` (a worker process each, started with ``spawn``: torch is not
            fork-safe) or ``"sync"``.
        wrappers: Applied to each environment, in order.
        vector_kwargs: Keyword arguments of the vector class (``autoreset_mode``, ...).
        **kwargs: Keyword arguments of every environment (``max_episode_steps`` included).

    Raises:
        VectorEnvMismatchError: If ``per_env`` has another length than ``num_envs`` or its
            environments would get different spaces (:func:`check_vector_kwargs`).
    """
    if mode not in ("async", "sync"):
        from cityenv.errors import unknown_name

        raise unknown_name("vector mode", mode, ["async", "sync"])
    per_env = list(per_env) if per_env is not None else [{}] * int(num_envs or 1)
    if num_envs is not None and len(per_env) != num_envs:
        raise VectorEnvMismatchError(
            f"per_env must hold one mapping per environment: expected {num_envs}, got "
            f"{len(per_env)}; give num_envs={len(per_env)} or as many mappings as environments."
        )
    merged = [{**kwargs, **dict(extra)} for extra in per_env]
    check_vector_kwargs(merged)
    # A worker process per environment already uses the cores; torch's own threads on top of it
    # spin for each other (measured: 100 ms of CPU per 64 x 64 step with 2 threads against 11 ms
    # with one), so async workers run torch on one thread.
    one_thread = mode == "async"
    fns = [partial(_make, env_id, tuple(wrappers), kw, one_thread) for kw in merged]
    options = dict(vector_kwargs or {})
    if mode == "async":
        options.setdefault("context", "spawn")
        return gym.vector.AsyncVectorEnv(fns, **options)
    return gym.vector.SyncVectorEnv(fns, **options)


def _make(
    env_id: str, wrappers: tuple[Callable, ...], kwargs: dict[str, Any], one_thread: bool
) -> gym.Env:
    import cityenv  # noqa: F401  (registers the ids in a spawned worker)

    if one_thread:
        import torch

        torch.set_num_threads(1)

    env = gym.make(env_id, **kwargs)
    for wrap in wrappers:
        env = wrap(env)
    return env
