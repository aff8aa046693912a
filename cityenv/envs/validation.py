"""Checks of what a user hands the environment: its constructor's arguments and ``reset`` options.

One place for them, so ``env.py`` keeps one call per entry point and every message reads alike:
what was expected, what came, what to do. Numbers are taken as numbers only (``bool``,
strings and complex values are refused, not converted), sizes as whole numbers (``63.7`` pixels
is refused, ``64.0`` is 64), and everything finite. Errors:

- :class:`~cityenv.errors.InvalidOptionError` (a ``ConfigError``, a ``TypeError`` and a
  ``ValueError``) for a constructor argument or a ``reset`` option of the wrong type or range;
- :class:`~cityenv.errors.UnknownOptionError` for an unknown ``reset`` option ("Did you mean");
- :class:`~cityenv.errors.ShapeMismatchError` for a ``start_image`` that is not an image.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from cityenv.citydb.retrieval import Retriever
from cityenv.errors import InvalidOptionError, ShapeMismatchError, UnknownOptionError, unknown_name
from cityenv.geometry.pose import Pose

__all__ = [
    "MAX_FRAME_SIDE",
    "RESET_OPTIONS",
    "check_env_arguments",
    "check_node",
    "check_prompt",
    "check_reset_options",
    "check_retrieval_options",
    "finite_number",
    "whole_number",
]

RESET_OPTIONS = ("prompt", "start", "heading_deg", "goal", "start_image")
"""The keys ``CityWorldEnv.reset(options=...)`` reads."""

MAX_FRAME_SIDE = 8192
"""Largest frame width or height, pixels: beyond it the frame buffers alone exhaust memory."""


# --- single values ------------------------------------------------------------------------------
def finite_number(
    name: str, value: Any, *, low: float | None = None, low_open: bool = False
) -> float:
    """``value`` as a float if it is a real, finite number (not a bool) ``>= low``.

    Args:
        name: The argument, for the message.
        value: What came.
        low: Smallest allowed value (``None``: no bound).
        low_open: ``low`` itself is not allowed (``> low``).

    Raises:
        InvalidOptionError: If ``value`` is not a real number, not finite, or below ``low``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidOptionError(
            f"{name} must be a real number, got {type(value).__name__} {value!r}; pass a "
            "float (strings, bools and complex numbers are not converted)."
        )
    number = float(value)
    bad_low = low is not None and (number <= low if low_open else number < low)
    if not math.isfinite(number) or bad_low:
        bound = "" if low is None else f" {'>' if low_open else '>='} {low:g}"
        raise InvalidOptionError(f"{name} must be a finite number{bound}, got {value!r}.")
    return number


def whole_number(name: str, value: Any, *, low: int = 1) -> int:
    """``value`` as an int if it is a whole number ``>= low`` (``64.0`` is 64; ``63.7`` is not).

    Raises:
        InvalidOptionError: If ``value`` is not a whole number or is below ``low``.
    """
    number = finite_number(name, value)
    if not number.is_integer() or number < low:
        raise InvalidOptionError(
            f"{name} must be a whole number >= {low}, got {value!r}; pass e.g. "
            f"{max(low, math.floor(number))} (nothing is rounded for you)."
        )
    return int(number)


def _mapping(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, Mapping):
        raise InvalidOptionError(
            f"{name} must be a mapping of keyword arguments or None, got "
            f"{type(value).__name__} {value!r}; pass a dict."
        )


def check_prompt(prompt: Any) -> str | None:
    """``prompt`` if it is a string or ``None``.

    Raises:
        InvalidOptionError: If it is anything else (a number, a list of strings).
    """
    if prompt is None or isinstance(prompt, str):
        return prompt
    raise InvalidOptionError(
        f"prompt must be a string or None, got {type(prompt).__name__} {prompt!r}; pass the "
        "text, e.g. 'a rainy evening'."
    )


# --- the constructor ----------------------------------------------------------------------------
def check_env_arguments(
    *,
    width: Any,
    height: Any,
    fov_deg: Any,
    chunk_length: Any,
    fps: Any,
    camera_height: Any,
    max_speed: Any,
    link_radius_m: Any,
    start_radius_m: Any,
    mappings: Mapping[str, Any],
) -> None:
    """Check the numbers and option mappings of ``CityWorldEnv.__init__`` before anything is built.

    Args:
        width, height: Whole numbers in ``[1, MAX_FRAME_SIDE]``, or ``None`` (the world
            model's own size, resolved by the environment).
        chunk_length: A whole number >= 1.
        fov_deg: Degrees in ``(0, 180)``.
        fps, max_speed, link_radius_m, start_radius_m: Finite numbers > 0.
        camera_height: ``None`` or a finite number > 0 (metres above the road).
        mappings: Name -> value of the arguments that must be mappings or ``None``
            (``world_model_options``, ``action_options``, ...).

    Raises:
        InvalidOptionError: Naming the first argument that is wrong, what it must be and what
            came.
    """
    whole_number("chunk_length", chunk_length)
    for name, value in (("width", width), ("height", height)):
        if value is not None and whole_number(name, value) > MAX_FRAME_SIDE:
            raise InvalidOptionError(
                f"{name} must be a frame size in pixels <= {MAX_FRAME_SIDE}, got {value!r}; "
                "pass e.g. 256 (larger frames would not fit in memory)."
            )
    fov = finite_number("fov_deg", fov_deg, low=0.0, low_open=True)
    if fov >= 180.0:
        raise InvalidOptionError(
            f"fov_deg must be a horizontal field of view in (0, 180) degrees, got {fov_deg!r}."
        )
    for name, value in (
        ("fps", fps),
        ("max_speed", max_speed),
        ("link_radius_m", link_radius_m),
        ("start_radius_m", start_radius_m),
    ):
        finite_number(name, value, low=0.0, low_open=True)
    if camera_height is not None:
        finite_number("camera_height", camera_height, low=0.0, low_open=True)
    for name, value in mappings.items():
        _mapping(name, value)


# --- reset ----------------------------------------------------------------------------------------
def check_reset_options(options: Any) -> dict[str, Any]:
    """``reset``'s ``options`` as a dict whose keys are known and whose values have their types.

    ``start``: a :class:`Pose`, a node id (int) or an ENU position ``(x, y)`` / ``(x, y, z)``;
    ``goal``: a node id or an ENU position; ``heading_deg``: a finite number; ``prompt``: a
    string; ``start_image``: uint8 ``(h, w, 3)`` with ``h, w >= 1``. Each may be ``None``
    (unset). Whether a start or goal lies on the covered streets is the environment's check.

    Raises:
        InvalidOptionError: If ``options`` is not a mapping, or a value has the wrong type.
        UnknownOptionError: If a key is not a reset option ("Did you mean ...?").
        ShapeMismatchError: If ``start_image`` is not an RGB uint8 image.
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InvalidOptionError(
            f"reset options must be a dict with keys from {list(RESET_OPTIONS)}, got "
            f"{type(options).__name__} {options!r}; e.g. options={{'prompt': 'sunset'}}."
        )
    for key in options:
        if key not in RESET_OPTIONS:
            raise unknown_name(
                "reset option",
                key,
                RESET_OPTIONS,
                error=UnknownOptionError,
                advice="Remove the key or fix its spelling.",
            )
    out = dict(options)
    check_prompt(out.get("prompt"))
    if out.get("heading_deg") is not None:
        out["heading_deg"] = finite_number("reset option heading_deg", out["heading_deg"])
    for key in ("start", "goal"):
        if out.get(key) is not None:
            out[key] = _place(key, out[key])
    if out.get("start_image") is not None:
        _check_image(out["start_image"])
    return out


def check_node(key: str, node: int, num_nodes: int) -> int:
    """``node`` if it is a road-graph node id in ``[0, num_nodes)``.

    Raises:
        InvalidOptionError: Naming the reset option, the range and what came.
    """
    if not 0 <= node < num_nodes:
        raise InvalidOptionError(
            f"reset option {key} must be a road-graph node id in [0, {num_nodes}), got {node}; "
            "node ids are panorama indices of the database (or pass an ENU position)."
        )
    return int(node)


def _place(key: str, value: Any) -> Pose | int | np.ndarray:
    """A start/goal as a Pose (start only), a node id, or a finite ``(2,)``/``(3,)`` position."""
    if isinstance(value, Pose) and key == "start":
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    array = np.asarray(value) if not isinstance(value, (str, bytes, Mapping)) else None
    if (
        array is None
        or array.dtype.kind not in "iuf"
        or array.shape not in ((2,), (3,))
        or not np.isfinite(array).all()
    ):
        kinds = "a Pose, " if key == "start" else ""
        raise InvalidOptionError(
            f"reset option {key} must be {kinds}a road-graph node id (int) or a finite ENU "
            f"position [x, y] or [x, y, z] in metres, got {type(value).__name__} {value!r}."
        )
    return array.astype(np.float64)


# --- retrieval ------------------------------------------------------------------------------------
def check_retrieval_options(retrieval: Mapping[str, Any] | None) -> None:
    """Refuse a key of the env's ``retrieval`` mapping that neither the env nor the retriever reads.

    Raises:
        UnknownOptionError: Naming the key, the known ones and the closest ("Did you mean").
    """
    params = inspect.signature(Retriever.__init__).parameters
    known = ("k", "exclude_traversals", *(p for p in params if p not in ("self", "db")))
    for key in retrieval or {}:
        if key not in known:
            raise unknown_name(
                "retrieval option",
                key,
                known,
                error=UnknownOptionError,
                advice="Remove the key or fix its spelling.",
            )


def _check_image(image: Any) -> None:
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8 or 0 in array.shape:
        raise ShapeMismatchError(
            "reset option start_image must be an RGB uint8 image of shape (h, w, 3) with h, "
            f"w >= 1, got {array.dtype} {array.shape}; convert it with np.asarray(img, np.uint8)."
        )
