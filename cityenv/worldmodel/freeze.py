"""Intermittent freeze-frame layout (SWM): N keyframes placed in a T-frame video for a causal VAE.

The causal video VAE encodes the first frame alone into latent 0 and every later group of
``r = temporal_ratio`` frames (the VAE's, read from its config: 4 for Wan's) into one latent. To
condition generation on clean keyframes at given output times, each keyframe must own whole
latents:

* keyframe 0 is at ``t = 0`` and is latent 0 (a lone frame);
* every other keyframe is *frozen*: repeated ``r`` times so that it fills one whole group,
  i.e. exactly one clean latent;
* the other (generated) frames fill ordinary ``r``-frame groups.

The VAE therefore sees an *expanded* video, longer than the output: after decoding, each frozen
group keeps one frame (its last, the one whose causal context has seen the keyframe longest) and
its duplicates are dropped. Hence the generated frames between two keyframes, and after the last,
must come in whole groups: ``key_times[i] - key_times[i - 1] - 1`` and
``num_frames - 1 - key_times[-1]`` must be multiples of ``r``.

Worked example (``r = 4``, Wan's VAE): ``key_times = [0, 5, 10]``, ``num_frames = 15``.
Latents: 0 = key 0 (frame 0), 1 = frames 1-4, 2 = key 1 (x4), 3 = frames 6-9, 4 = key 2 (x4),
5 = frames 11-14; ``key_latents = [0, 2, 4]``, ``num_latents = 6``, ``expanded_length = 21``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from cityenv.errors import ShapeMismatchError

if TYPE_CHECKING:
    from cityenv.worldmodel.vae import VideoVAE

__all__ = ["FreezeFramePlan", "encode_keyframes", "plan_freeze_frames"]


@dataclass(frozen=True, eq=False)
class FreezeFramePlan:
    """Where N keyframes and the generated frames go in the VAE's expanded video.

    Attributes:
        num_frames: ``T``, the output length.
        key_times: int ``(N,)``: output frame index of each keyframe, ``key_times[0] == 0``.
        key_latents: int ``(N,)``: latent index holding each keyframe.
        num_latents: Latents of the expanded video.
        expanded_length: Frames fed to / returned by the VAE, ``1 + r * (num_latents - 1)``.
        keep: bool ``(expanded_length,)``: the expanded frames kept after decoding (``T`` of them).
        expanded_times: int ``(expanded_length,)``: output frame index each expanded frame shows
            (a frozen keyframe's ``r`` copies all show its key time).
        temporal_ratio: ``r``, frames per latent after the first (the VAE's).
    """

    num_frames: int
    key_times: np.ndarray
    key_latents: np.ndarray
    num_latents: int
    expanded_length: int
    keep: np.ndarray
    expanded_times: np.ndarray
    temporal_ratio: int

    @property
    def num_keyframes(self) -> int:
        """``N``, the number of keyframes."""
        return len(self.key_times)

    @property
    def clean_latents(self) -> np.ndarray:
        """bool ``(num_latents,)``: the latents that hold a keyframe."""
        clean = np.zeros(self.num_latents, bool)
        clean[self.key_latents] = True
        return clean

    def latent_pose_groups(self, matrices: np.ndarray) -> np.ndarray:
        """Camera-to-world poses of the frames each latent covers, for its Plücker rays.

        Args:
            matrices: The ``T`` output frames' poses ``(T, 4, 4)``.

        Returns:
            ``(num_latents, r, 4, 4)``: latent 0 holds frame 0 alone, so its pose fills its group.
        """
        poses = np.asarray(matrices)[self.expanded_times]  # (expanded_length, 4, 4)
        r = self.temporal_ratio
        groups = np.concatenate([np.repeat(poses[:1], r - 1, axis=0), poses])
        return groups.reshape(-1, r, 4, 4)

    def expand(self, keyframes: Tensor, fill: Tensor | None = None) -> Tensor:
        """Lay keyframes (and optionally generated frames) out as the VAE's expanded video.

        Args:
            keyframes: ``(B, C, N, H, W)``, in ``key_times`` order.
            fill: ``(B, C, T, H, W)`` frames for the non-key output times (its frames at key times
                are ignored), or ``None`` for zeros there.

        Returns:
            ``(B, C, expanded_length, H, W)``: keyframe 0 at frame 0, every other keyframe
            repeated over its whole group, ``fill`` at the other frames' output times.

        Raises:
            ShapeMismatchError: If ``keyframes`` or ``fill`` has the wrong shape.
        """
        n = self.num_keyframes
        if not isinstance(keyframes, Tensor) or keyframes.ndim != 5 or keyframes.shape[2] != n:
            got = tuple(keyframes.shape) if isinstance(keyframes, Tensor) else type(keyframes)
            raise ShapeMismatchError(
                f"keyframes: expected a (B, C, {n}, H, W) tensor (one frame per key time), got "
                f"{got}"
            )
        b, c, _, h, w = keyframes.shape
        device = keyframes.device
        times = torch.from_numpy(self.expanded_times).to(device)
        key_of_time = np.full(self.num_frames, -1, np.int64)
        key_of_time[self.key_times] = np.arange(n)
        key_index = key_of_time[self.expanded_times]
        is_key = key_index >= 0
        if fill is None:
            out = keyframes.new_zeros((b, c, self.expanded_length, h, w))
        else:
            want = (b, c, self.num_frames, h, w)
            if not isinstance(fill, Tensor) or tuple(fill.shape) != want:
                got = tuple(fill.shape) if isinstance(fill, Tensor) else type(fill)
                raise ShapeMismatchError(
                    f"fill: expected shape {want} (B, C, T, H, W matching the keyframes and the "
                    f"plan's T), got {got}"
                )
            out = fill.to(device=device, dtype=keyframes.dtype).index_select(2, times)
        key_slots = torch.from_numpy(np.flatnonzero(is_key)).to(device)
        out[:, :, key_slots] = keyframes.index_select(
            2, torch.from_numpy(key_index[is_key]).to(device)
        )
        return out

    def drop_duplicates(self, video: Tensor) -> Tensor:
        """Keep one frame per frozen keyframe group.

        Args:
            video: ``(B, C, expanded_length, H, W)``, e.g. the VAE's decode of the plan's latents.

        Returns:
            ``(B, C, T, H, W)``: frame ``t`` is the expanded frame showing output time ``t``.

        Raises:
            ShapeMismatchError: If ``video`` is not 5-D with ``expanded_length`` frames.
        """
        if (
            not isinstance(video, Tensor)
            or video.ndim != 5
            or video.shape[2] != self.expanded_length
        ):
            got = tuple(video.shape) if isinstance(video, Tensor) else type(video)
            raise ShapeMismatchError(
                f"video: expected (B, C, {self.expanded_length}, H, W) (the plan's expanded "
                f"length, 1 + {self.temporal_ratio} * {self.num_latents - 1}), got {got}"
            )
        kept = torch.from_numpy(np.flatnonzero(self.keep)).to(video.device)
        return video.index_select(2, kept)


def _nearest_valid(value: int, base: int, ratio: int) -> list[int]:
    """The values ``base + ratio * m`` (``m >= 0``) nearest to ``value``, below and above it."""
    below = base + ratio * max((value - base) // ratio, 0)
    return [below] if below > value else [below, below + ratio]


def encode_keyframes(vae: VideoVAE, keyframes: Tensor) -> Tensor:
    """Keyframes ``(1, 3, N, H, W)`` in [-1, 1] -> their clean latents ``(1, z, N, h, w)``.

    The first is encoded as a video's first frame (latent 0), every other one repeated
    ``vae.temporal_ratio`` times as a continuation chunk, so each owns exactly one latent (the
    plan's frozen groups).
    """
    r = vae.temporal_ratio
    first = vae.encode(keyframes[:, :, :1])
    rest = [
        vae.encode_chunk(keyframes[:, :, i : i + 1].repeat(1, 1, r, 1, 1))
        for i in range(1, keyframes.shape[2])
    ]
    return torch.cat([first, *rest], dim=2)


def plan_freeze_frames(
    key_times: Sequence[int], num_frames: int, *, temporal_ratio: int
) -> FreezeFramePlan:
    """Plan the freeze-frame layout of ``N`` keyframes in a ``T``-frame video.

    Args:
        key_times: ``(N,)`` strictly increasing output frame indices, the first 0.
        num_frames: ``T``, the output length.
        temporal_ratio: The VAE's frames per latent (``VideoVAE.temporal_ratio``: 4 for Wan's).

    Returns:
        The plan.

    Raises:
        ShapeMismatchError: If the key times are not integers, do not start at 0, are not
            strictly increasing inside ``[0, T)``, or leave gaps (or a tail) that are not
            multiples of ``temporal_ratio``; the message names the nearest valid times.
    """
    r = int(temporal_ratio)
    if r < 1:
        raise ShapeMismatchError(
            f"temporal_ratio: expected a positive integer, got {temporal_ratio}"
        )
    if (
        isinstance(num_frames, bool)
        or not isinstance(num_frames, (int, np.integer))
        or num_frames < 1
    ):
        raise ShapeMismatchError(f"num_frames: expected a positive integer T, got {num_frames!r}")
    t_out = int(num_frames)
    raw = np.asarray(key_times)
    if (
        raw.ndim != 1
        or raw.size == 0
        or not (
            np.issubdtype(raw.dtype, np.integer)
            or (np.issubdtype(raw.dtype, np.floating) and np.all(raw == np.round(raw)))
        )
    ):
        raise ShapeMismatchError(
            "key_times: expected a non-empty 1-D sequence of integer frame indices, got "
            f"{key_times!r}"
        )
    times = raw.astype(np.int64)
    if times[0] != 0:
        raise ShapeMismatchError(
            "key_times: expected the first keyframe at t = 0 (it becomes the causal VAE's lone "
            f"first latent), got {times[0]}; prepend 0 (e.g. the current frame)"
        )
    if np.any(np.diff(times) <= 0):
        raise ShapeMismatchError(
            f"key_times: expected strictly increasing times, got {times.tolist()}"
        )
    if times[-1] >= t_out:
        raise ShapeMismatchError(
            f"key_times: expected times in [0, {t_out}) (num_frames = {t_out}), got {times[-1]}; "
            "drop it or raise num_frames"
        )
    for i in range(1, len(times)):
        gap = int(times[i] - times[i - 1] - 1)
        if gap % r:
            valid = [
                t for t in _nearest_valid(int(times[i]), int(times[i - 1]) + 1, r) if t < t_out
            ]
            use = " or ".join(f"t = {t}" for t in valid) if valid else "fewer keyframes"
            raise ShapeMismatchError(
                f"key_times: keyframe {i} at t = {times[i]} leaves {gap} generated frames after "
                f"keyframe {i - 1} at t = {times[i - 1]}; expected a multiple of {r} (whole VAE "
                f"latents), so put it at {use}"
            )
    tail = t_out - 1 - int(times[-1])
    if tail % r:
        valid = _nearest_valid(t_out, int(times[-1]) + 1, r)
        raise ShapeMismatchError(
            f"num_frames: T = {t_out} leaves {tail} generated frames after the last keyframe at "
            f"t = {times[-1]}; expected a multiple of {r} (whole VAE latents), so use num_frames "
            + " or ".join(str(t) for t in valid)
        )

    # Expanded layout: frame 0 is keyframe 0; later keyframes take r frames, others one.
    is_key_time = np.zeros(t_out, bool)
    is_key_time[times] = True
    copies = np.where(is_key_time, r, 1)
    copies[0] = 1
    expanded_times = np.repeat(np.arange(t_out), copies)
    keep = np.ones(len(expanded_times), bool)
    ends = np.cumsum(copies)  # one past each output time's last expanded frame
    for t in times[1:]:
        keep[ends[t] - r : ends[t] - 1] = False  # keep the group's last copy
    expanded_length = len(expanded_times)
    num_latents = 1 + (expanded_length - 1) // r
    key_latents = np.zeros(len(times), np.int64)
    key_latents[1:] = 1 + (ends[times[1:]] - 2) // r
    return FreezeFramePlan(
        num_frames=t_out,
        key_times=times,
        key_latents=key_latents,
        num_latents=num_latents,
        expanded_length=expanded_length,
        keep=keep,
        expanded_times=expanded_times,
        temporal_ratio=r,
    )
