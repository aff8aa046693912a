"""Image metrics of generated against ground-truth frames: PSNR and SSIM, whole and static.

Both metrics come from torchmetrics' functional API (``peak_signal_noise_ratio``,
``structural_similarity_index_measure``), computed per frame on uint8 frames (``data_range``
255), over the whole frame and over the **static** region only: the pixels where the clip's
dynamic mask (vehicles, pedestrians) is false, as SWM's masked metrics (its Tables 1-2) score a
world model on what persists, not on transient objects it cannot know.

- Static PSNR: torchmetrics' PSNR of the static pixels alone (their squared error averaged over
  the static pixels and the three channels).
- Static SSIM: torchmetrics' full SSIM map (11x11 Gaussian window, sigma 1.5, reflection padded,
  so the map has the frame's size) averaged over the three channels and over the static pixels.
  The window around a static pixel next to a moving object still sees some of the object's
  pixels; the map is masked, not the images. With no dynamic pixel the static SSIM equals the
  whole-frame SSIM exactly (torchmetrics averages the same map over every pixel).
- PSNR of identical images is infinite (torchmetrics returns ``inf``); every PSNR here is capped
  at :data:`PSNR_CAP_DB` so means and JSON stay finite. A frame without a static pixel has a
  static PSNR/SSIM of NaN; summaries use NaN-ignoring means.

Drift (SWM Fig. 7): :func:`distance_windows` groups frames by the distance travelled along the
trajectory (e.g. 100 m windows) and :func:`per_distance` averages a per-frame metric in each.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from cityenv.errors import ShapeMismatchError

__all__ = [
    "PSNR_CAP_DB",
    "DistanceWindow",
    "FrameMetrics",
    "distance_windows",
    "frame_metrics",
    "per_distance",
    "psnr_per_frame",
    "ssim_per_frame",
    "travelled",
]

PSNR_CAP_DB = 100.0
"""PSNR of (nearly) identical frames, decibels: the cap of every PSNR (torchmetrics gives inf)."""

_DATA_RANGE = 255.0


def _check_frames(generated: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as uint8 ``(T, H, W, 3)`` of one shape, else a :class:`ShapeMismatchError`."""
    generated, target = np.asarray(generated), np.asarray(target)
    for name, a in (("generated", generated), ("target", target)):
        if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8:
            raise ShapeMismatchError(
                f"{name} frames must be uint8 (T, H, W, 3), got {a.dtype} {a.shape}; pass "
                "frames as the environment returns them."
            )
    if generated.shape != target.shape:
        raise ShapeMismatchError(
            f"generated and target frames must have one shape, got {generated.shape} and "
            f"{target.shape}; replay the clip's own trajectory at the clip's frame size."
        )
    return generated, target


def _check_static(static: np.ndarray | None, frames: np.ndarray) -> np.ndarray | None:
    """``static`` as bool ``(T, H, W)`` matching ``frames`` ``(T, H, W, 3)`` (or ``None``)."""
    if static is None:
        return None
    static = np.asarray(static)
    if static.shape != frames.shape[:3] or static.dtype != np.bool_:
        raise ShapeMismatchError(
            f"masks must be bool (T, H, W) = {frames.shape[:3]}, got {static.dtype} "
            f"{static.shape}; pass the clip's dynamic masks of the same frames."
        )
    return static


def _as_images(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` -> float32 ``(T, 3, H, W)`` in ``[0, 255]``."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()


def _cap(psnr: torch.Tensor) -> np.ndarray:
    return np.minimum(psnr.double().numpy(), PSNR_CAP_DB)


def psnr_per_frame(
    generated: np.ndarray, target: np.ndarray, static: np.ndarray | None = None
) -> np.ndarray:
    """PSNR of each frame (dB, capped at :data:`PSNR_CAP_DB`), over ``static`` pixels if given.

    Args:
        generated: uint8 ``(T, H, W, 3)``.
        target: uint8 ``(T, H, W, 3)``, the ground truth.
        static: bool ``(T, H, W)``: the pixels to score (``None``: all of them).

    Returns:
        float64 ``(T,)``; NaN for a frame without a pixel to score.

    Raises:
        ShapeMismatchError: If the shapes or dtypes disagree.
    """
    generated, target = _check_frames(generated, target)
    static = _check_static(static, generated)
    preds, truth = _as_images(generated), _as_images(target)
    if static is None:
        psnr = peak_signal_noise_ratio(
            preds, truth, data_range=_DATA_RANGE, reduction="none", dim=(1, 2, 3)
        )
        return _cap(psnr)
    out = np.full(len(generated), math.nan)
    for i, keep in enumerate(torch.from_numpy(static)):
        if keep.any():  # (3, H, W)[:, keep] -> (3, n): only the static pixels' errors count
            value = peak_signal_noise_ratio(
                preds[i][:, keep], truth[i][:, keep], data_range=_DATA_RANGE
            )
            out[i] = _cap(value)
    return out


def ssim_per_frame(
    generated: np.ndarray, target: np.ndarray, static: np.ndarray | None = None
) -> np.ndarray:
    """SSIM of each frame, its map averaged over ``static`` pixels if given (module docstring).

    Args:
        generated: uint8 ``(T, H, W, 3)``.
        target: uint8 ``(T, H, W, 3)``, the ground truth.
        static: bool ``(T, H, W)``: the pixels whose SSIM-map values are averaged (``None``:
            all, torchmetrics' own SSIM).

    Returns:
        float64 ``(T,)`` in ``[-1, 1]``; NaN for a frame without a pixel to score.

    Raises:
        ShapeMismatchError: If the shapes or dtypes disagree.
    """
    generated, target = _check_frames(generated, target)
    static = _check_static(static, generated)
    ssim, full = structural_similarity_index_measure(
        _as_images(generated),
        _as_images(target),
        data_range=_DATA_RANGE,
        reduction="none",
        return_full_image=True,
    )
    if static is None:
        return ssim.double().numpy()
    mapped = full.double().mean(dim=1).numpy()  # (T, H, W): the channels' mean SSIM per pixel
    out = np.full(len(generated), math.nan)
    for i, keep in enumerate(static):
        if keep.any():
            out[i] = float(mapped[i][keep].mean())
    return out


@dataclass(frozen=True)
class FrameMetrics:
    """Per-frame metrics of ``T`` generated frames against the ground truth.

    Attributes:
        psnr: float64 ``(T,)``, whole frames, dB.
        psnr_static: float64 ``(T,)``, static pixels only, dB (NaN: no static pixel).
        ssim: float64 ``(T,)``, whole frames.
        ssim_static: float64 ``(T,)``, the SSIM map over static pixels (NaN: none).
    """

    psnr: np.ndarray
    psnr_static: np.ndarray
    ssim: np.ndarray
    ssim_static: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        """The four arrays by name."""
        return {
            "psnr": self.psnr,
            "psnr_static": self.psnr_static,
            "ssim": self.ssim,
            "ssim_static": self.ssim_static,
        }

    def means(self) -> dict[str, float]:
        """Each metric's NaN-ignoring mean over the frames (NaN when no frame has a value)."""
        return {name: _nanmean(values) for name, values in self.as_dict().items()}

    @classmethod
    def concatenate(cls, parts: list[FrameMetrics]) -> FrameMetrics:
        """The frames of several clips as one set (for means over every frame)."""
        joined = {
            name: np.concatenate([p.as_dict()[name] for p in parts]) if parts else np.zeros(0)
            for name in ("psnr", "psnr_static", "ssim", "ssim_static")
        }
        return cls(**joined)


def frame_metrics(generated: np.ndarray, target: np.ndarray, dynamic: np.ndarray) -> FrameMetrics:
    """PSNR and SSIM of each frame, whole and on static pixels.

    Args:
        generated: uint8 ``(T, H, W, 3)``.
        target: uint8 ``(T, H, W, 3)``, the ground truth.
        dynamic: bool ``(T, H, W)``, true on moving objects (the clip store's masks).

    Raises:
        ShapeMismatchError: If the shapes or dtypes disagree.
    """
    generated, target = _check_frames(generated, target)
    static = ~_check_static(dynamic, generated)
    return FrameMetrics(
        psnr=psnr_per_frame(generated, target),
        psnr_static=psnr_per_frame(generated, target, static),
        ssim=ssim_per_frame(generated, target),
        ssim_static=ssim_per_frame(generated, target, static),
    )


# --- drift: metrics by distance travelled ---------------------------------------------------------
def travelled(positions: np.ndarray) -> np.ndarray:
    """Distance travelled along a trajectory up to each frame, metres.

    Args:
        positions: float ``(T, 3)`` camera positions (ENU, metres).

    Returns:
        float64 ``(T,)``, 0 at the first frame, non-decreasing.
    """
    positions = np.asarray(positions, np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ShapeMismatchError(f"positions must be (T, 3) metres, got {positions.shape}.")
    steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(steps)])


@dataclass(frozen=True)
class DistanceWindow:
    """Frames whose travelled distance lies in ``[start_m, end_m)``.

    Attributes:
        start_m: Window start along the trajectory, metres.
        end_m: Window end, metres.
        frames: int64 ``(n,)`` indices of its frames (possibly empty).
    """

    start_m: float
    end_m: float
    frames: np.ndarray


def distance_windows(
    distance_m: np.ndarray, window_m: float = 100.0, stride_m: float | None = None
) -> list[DistanceWindow]:
    """Windows of ``window_m`` metres of travelled distance, one starting every ``stride_m``.

    ``stride_m=None`` (= ``window_m``) gives consecutive windows (each frame in one window); a
    smaller stride gives sliding, overlapping windows. Windows start at 0 m and go on while
    they start at or before the largest distance.

    Args:
        distance_m: float ``(T,)``, each frame's distance travelled along the trajectory,
            metres (:func:`travelled`, or from a route's start).
        window_m: Window length, metres (> 0).
        stride_m: Distance between window starts, metres (> 0; default ``window_m``).

    Raises:
        ValueError: If ``window_m`` or ``stride_m`` is not positive.
        ShapeMismatchError: If ``distance_m`` is not one-dimensional.
    """
    stride_m = window_m if stride_m is None else stride_m
    if not (window_m > 0 and stride_m > 0):
        raise ValueError(f"window_m and stride_m must be > 0 metres, got {window_m}, {stride_m}.")
    distance = np.asarray(distance_m, np.float64)
    if distance.ndim != 1:
        raise ShapeMismatchError(f"distance_m must be (T,) metres, got {distance.shape}.")
    total = float(distance.max()) if distance.size else 0.0
    out = []
    for i in range(int(math.floor(max(total, 0.0) / stride_m)) + 1):
        start = i * stride_m
        inside = (distance >= start) & (distance < start + window_m)
        out.append(DistanceWindow(start, start + window_m, np.flatnonzero(inside)))
    return out


def per_distance(
    values: Mapping[str, np.ndarray] | np.ndarray,
    distance_m: np.ndarray,
    window_m: float = 100.0,
    stride_m: float | None = None,
) -> list[dict[str, float]]:
    """A per-frame metric (or several) averaged in each distance window (SWM Fig. 7: drift).

    Args:
        values: float ``(T,)``, or a mapping of names to such arrays (a
            :meth:`FrameMetrics.as_dict`).
        distance_m: float ``(T,)``, each frame's distance travelled, metres (:func:`travelled`).
        window_m: See :func:`distance_windows`.
        stride_m: See :func:`distance_windows`.

    Returns:
        One dict per window: ``start_m``, ``end_m``, ``frames`` (how many) and each metric's
        NaN-ignoring mean (key ``value`` for a single array).

    Raises:
        ShapeMismatchError: If a metric does not have one value per frame.
    """
    named = dict(values) if isinstance(values, Mapping) else {"value": values}
    distance = np.asarray(distance_m, np.float64)
    for name, array in named.items():
        if np.shape(array) != distance.shape:
            raise ShapeMismatchError(
                f"{name} must have one value per frame {distance.shape}, got {np.shape(array)}."
            )
    rows = []
    for window in distance_windows(distance, window_m, stride_m):
        row: dict[str, float] = {
            "start_m": window.start_m,
            "end_m": window.end_m,
            "frames": int(len(window.frames)),
        }
        for name, array in named.items():
            row[name] = _nanmean(np.asarray(array, np.float64)[window.frames])
        rows.append(row)
    return rows


def _nanmean(values: np.ndarray) -> float:
    finite = np.asarray(values, np.float64)
    finite = finite[~np.isnan(finite)]
    return float(finite.mean()) if finite.size else math.nan
