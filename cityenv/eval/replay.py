"""Replaying a held-out clip window with a world model (City-Bench's protocol, DESIGN.md).

A replay of a window of ``T = 1 + n * L`` frames of a clip:

1. the world model is reset at the window's first pose with its first ground-truth frame as the
   start image (the transient state, weather and cars, carries on from it) and the clip's
   caption as the prompt; its first frame is that start image;
2. the window's exact trajectory after the first frame is fed chunk by chunk, ``L`` frames each
   (the diffusion model's ``settings.chunk_frames``, or a given length for the warp model);
3. each chunk's references are retrieved with the project's two-stage
   :class:`~cityenv.citydb.retrieval.Retriever` from **other traversals and capture times**
   than the clip's (its own traversal and every panorama captured within ``time_window_s`` of
   its start are excluded: cross-temporal, as :mod:`cityenv.train.data` pairs training samples)
   and loaded with :class:`~cityenv.worldmodel.referencing.ReferenceLoader`, exactly as the
   environment does (:meth:`cityenv.envs.env.CityWorldEnv.step`).

The generated video has the ground truth's length and poses, so per-frame metrics
(:mod:`cityenv.eval.metrics`) compare frame ``t`` with frame ``t``. Frame 0 is the start image
(the condition, not a prediction): scores are taken on :attr:`Replay.predicted` frames.
Works for any :class:`~cityenv.worldmodel.base.WorldModel`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np

from cityenv.citydb.clips import (
    ClipInfo,
    ClipStore,
    anchor_mismatch,
    resize_frames,
    resize_masks,
)
from cityenv.citydb.reader import CityDB
from cityenv.citydb.retrieval import Retriever
from cityenv.errors import EvaluationError, ShapeMismatchError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Trajectory
from cityenv.worldmodel.base import ChunkReferences, WorldModel
from cityenv.worldmodel.referencing import ReferenceLoader

__all__ = ["ClipWindow", "Replay", "ReplaySettings", "Replayer"]


@dataclass(frozen=True)
class ReplaySettings:
    """How references are found for a replayed clip.

    Attributes:
        num_references: ``K``, references retrieved per chunk.
        cross_temporal: Exclude the clip's own traversal and capture time from its references
            (``False``: the same-traversal ablation).
        time_window_s: With ``cross_temporal``: panoramas captured within this many seconds of
            the clip's start are excluded.
        exclude_traversals: Further traversal ids never used as references.
        retrieval: Keyword arguments of :class:`~cityenv.citydb.retrieval.Retriever`.
    """

    num_references: int = 5
    cross_temporal: bool = True
    time_window_s: float = 1800.0
    exclude_traversals: tuple[str, ...] = ()
    retrieval: Mapping[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class ClipWindow:
    """``T`` consecutive frames of a clip: the ground truth a replay is scored against.

    Attributes:
        info: The clip's index row (caption, traversal, capture time).
        frames: int64 ``(T,)``, the frames' indices in the clip.
        rgb: uint8 ``(T, H, W, 3)`` ground-truth frames (at :attr:`camera`'s size).
        dynamic: bool ``(T, H, W)``, true on moving objects.
        trajectory: The ``T`` camera-to-world poses (ENU); timestamps from the clip's frame 0.
        camera: Intrinsics of ``rgb`` (the clip's, rescaled when a size was asked).
    """

    info: ClipInfo
    frames: np.ndarray
    rgb: np.ndarray
    dynamic: np.ndarray
    trajectory: Trajectory
    camera: PinholeCamera

    @property
    def clip_id(self) -> str:
        return self.info.clip_id

    @property
    def caption(self) -> str:
        return self.info.caption

    def __len__(self) -> int:
        return len(self.frames)


@dataclass(eq=False)
class Replay:
    """What a world model generated along a :class:`ClipWindow`.

    Attributes:
        window: The ground truth.
        frames: uint8 ``(T, H, W, 3)``; frame 0 is the model's reset frame (the start image).
        warps: uint8 ``(T, H, W, 3)``, each frame's nearest reference splatted (zeros for
            frame 0 and where the model gives none), or ``None`` if the model gave none at all.
        masks: bool ``(T, H, W)``, where ``warps`` holds a splatted pixel, or ``None``.
        chunk_frames: ``L``, frames per generated chunk.
        references: Per chunk, the ids of the reference views used (best first).
        timings: Seconds: ``reset``, ``retrieval`` (retrieving and loading), ``load``
            (loading alone), ``generate`` and ``total``, summed over the chunks.
        chunk_info: Per chunk, the model's ``ChunkOutput.info``.
    """

    window: ClipWindow
    frames: np.ndarray
    warps: np.ndarray | None
    masks: np.ndarray | None
    chunk_frames: int
    references: list[list[int]]
    timings: dict[str, float]
    chunk_info: list[dict[str, Any]]

    @property
    def poses(self) -> np.ndarray:
        """float64 ``(T, 4, 4)`` camera-to-world poses of the frames (the ground truth's)."""
        return self.window.trajectory.matrices

    @property
    def predicted(self) -> slice:
        """The frames the model predicted (all but the start frame): index ``frames`` with it."""
        return slice(1, None)


class Replayer:
    """Reads clip windows and replays them with world models (see the module docstring).

    Args:
        citydb: The street-view database the references come from (a folder or opened).
        clips: The clip store (a folder, or an opened :class:`ClipStore`, e.g. one opened for
            ``split="test"``).
        settings: How references are found.

    Raises:
        EvaluationError: If the CityDB's anchor differs from the clip store's (their poses
            would be in different ENU frames).
    """

    def __init__(
        self,
        citydb: str | os.PathLike[str] | CityDB,
        clips: str | os.PathLike[str] | ClipStore,
        settings: ReplaySettings | None = None,
    ) -> None:
        self.db = citydb if isinstance(citydb, CityDB) else CityDB.open(citydb)
        self.store = clips if isinstance(clips, ClipStore) else ClipStore(clips)
        self.settings = settings or ReplaySettings()
        _check_anchor(self.db, self.store)
        self.retriever = Retriever(self.db, **dict(self.settings.retrieval))
        self.loader = ReferenceLoader(self.db, capacity=128)

    # --- ground truth -----------------------------------------------------------------------------
    def window(
        self,
        clip_id: str,
        start: int = 0,
        num_frames: int | None = None,
        size: tuple[int, int] | None = None,
    ) -> ClipWindow:
        """Frames ``start .. start + num_frames - 1`` of a clip, with masks and poses.

        Args:
            clip_id: The clip.
            start: Its first frame.
            num_frames: ``T >= 2`` (default: to the clip's end).
            size: ``(width, height)`` the frames and masks are resized to (default: the clip's).

        Raises:
            EvaluationError: If the window does not lie inside the clip.
            ClipNotFoundError: If the store has no such clip (or ClipSplitError: not of the
                split the store was opened for).
        """
        info = self.store.info(clip_id)
        count = info.num_frames - start if num_frames is None else int(num_frames)
        if start < 0 or count < 2 or start + count > info.num_frames:
            raise EvaluationError(
                f"a window of clip {clip_id} must hold 2 or more of its {info.num_frames} "
                f"frames, got frames {start} to {start + count - 1}; pick a shorter window or "
                "a longer clip."
            )
        clip = self.store.read_clip(clip_id, range(start, start + count), depth=False)
        assert clip.dynamic is not None  # read_clip reads the masks by default
        width, height = size or (info.camera.width, info.camera.height)
        return ClipWindow(
            info=info,
            frames=clip.frames,
            rgb=resize_frames(clip.rgb, (width, height)),
            dynamic=resize_masks(clip.dynamic, (width, height)),
            trajectory=clip.trajectory,
            camera=info.camera.rescaled(width, height),
        )

    # --- references ----------------------------------------------------------------------------
    def references(
        self, window: ClipWindow, chunk: Trajectory
    ) -> tuple[ChunkReferences, dict[str, float]]:
        """Retrieve and load the references of one chunk of ``window``'s trajectory, timed.

        Returns:
            The loaded references and ``{"retrieval": s, "load": s}`` (retrieval includes load).
        """
        s, info = self.settings, window.info
        exclude = set(s.exclude_traversals)
        exclude_time = None
        if s.cross_temporal:
            exclude.add(info.traversal_id)
            exclude_time = (info.start_time, timedelta(seconds=s.time_window_s))
        t0 = time.perf_counter()
        result = self.retriever.retrieve(
            chunk,
            window.camera,
            k=s.num_references,
            exclude_traversals=sorted(exclude),
            exclude_time=exclude_time,
        )
        t1 = time.perf_counter()
        refs = self.loader.load(result)
        t2 = time.perf_counter()
        return refs, {"retrieval": t2 - t0, "load": t2 - t1}

    # --- the replay ------------------------------------------------------------------------------
    def replay(
        self,
        model: WorldModel,
        window: ClipWindow,
        chunk_frames: int | None = None,
        seed: int = 0,
    ) -> Replay:
        """Replay ``window`` with ``model`` (see the module docstring).

        Args:
            model: A world model (the warp model, the diffusion model, ...).
            window: The clip window; ``T - 1`` must be a multiple of the chunk length.
            chunk_frames: ``L`` (default: ``model.settings.chunk_frames``; the warp model has
                none and needs it given).
            seed: Seeds the model's randomness (the ``generator`` of its reset).

        Raises:
            EvaluationError: If the chunk length is unknown or does not divide ``T - 1``.
            ShapeMismatchError: If the model returns frames of another shape.
        """
        length = _chunk_frames(model, chunk_frames, len(window))
        model.check_settings(window.camera, length)
        start = time.perf_counter()
        timings = {"reset": 0.0, "retrieval": 0.0, "load": 0.0, "generate": 0.0}
        first_refs, spent = self.references(window, window.trajectory[:1])
        _add(timings, spent)
        t0 = time.perf_counter()
        first = model.reset(
            pose=window.trajectory[0],
            camera=window.camera,
            references=first_refs,
            start_image=window.rgb[0],
            prompt=window.caption,
            generator=np.random.default_rng(seed),
        )
        timings["reset"] = time.perf_counter() - t0
        parts = _Parts(window, np.asarray(first))
        for begin in range(1, len(window), length):
            chunk = window.trajectory[begin : begin + length]
            refs, spent = self.references(window, chunk)
            _add(timings, spent)
            t0 = time.perf_counter()
            output = model.generate(chunk, refs)
            timings["generate"] += time.perf_counter() - t0
            parts.add(begin, output.frames, output.warps, output.masks)
            parts.references.append([v.view_id for v in refs.views])
            parts.info.append(dict(output.info))
        timings["total"] = time.perf_counter() - start
        return parts.replay(length, timings)


@dataclass(eq=False)
class _Parts:
    """The arrays of a replay while its chunks come in."""

    window: ClipWindow
    first: np.ndarray
    references: list[list[int]] = field(default_factory=list)
    info: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        shape = self.window.rgb.shape
        self._check(self.first[None], 0, 1)
        self.frames = np.zeros(shape, np.uint8)
        self.frames[0] = self.first
        self.warps = np.zeros(shape, np.uint8)
        self.masks = np.zeros(shape[:3], bool)
        self.any_warp = False

    def add(
        self, begin: int, frames: np.ndarray, warps: np.ndarray | None, masks: np.ndarray | None
    ) -> None:
        frames = np.asarray(frames)
        self._check(frames, begin, len(frames))
        end = begin + len(frames)
        self.frames[begin:end] = frames
        if warps is not None and masks is not None:
            self.warps[begin:end], self.masks[begin:end] = warps, masks
            self.any_warp = True

    def _check(self, frames: np.ndarray, begin: int, count: int) -> None:
        want = (count, *self.window.rgb.shape[1:])
        if frames.shape != want or frames.dtype != np.uint8:
            raise ShapeMismatchError(
                f"the world model must return uint8 frames {want} for frames {begin} to "
                f"{begin + count - 1} of the window, got {frames.dtype} {frames.shape}; check "
                "its camera and chunk handling."
            )

    def replay(self, chunk_frames: int, timings: dict[str, float]) -> Replay:
        return Replay(
            window=self.window,
            frames=self.frames,
            warps=self.warps if self.any_warp else None,
            masks=self.masks if self.any_warp else None,
            chunk_frames=chunk_frames,
            references=self.references,
            timings=timings,
            chunk_info=self.info,
        )


def _chunk_frames(model: WorldModel, given: int | None, num_frames: int) -> int:
    """The chunk length: given, or the model's own; it must divide ``num_frames - 1``."""
    settings = getattr(model, "settings", None)
    length = given if given is not None else getattr(settings, "chunk_frames", None)
    if length is None or int(length) < 1:
        raise EvaluationError(
            f"replaying with {type(model).__name__} needs a chunk length >= 1 (chunk_frames=), "
            f"got {length}; the warp model has no chunk length of its own."
        )
    length = int(length)
    if (num_frames - 1) % length:
        raise EvaluationError(
            f"a replayed window holds a start frame and whole chunks, 1 + n x {length} frames, "
            f"got {num_frames}; use a window of {1 + (num_frames - 1) // length * length} "
            f"or {1 + ((num_frames - 1) // length + 1) * length} frames."
        )
    return length


def _add(timings: dict[str, float], spent: Mapping[str, float]) -> None:
    for key, seconds in spent.items():
        timings[key] += seconds


def _check_anchor(db: CityDB, store: ClipStore) -> None:
    reason = anchor_mismatch(store, db.frame)
    if reason is not None:
        raise EvaluationError(reason)
