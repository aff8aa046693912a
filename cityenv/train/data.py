"""Training pairs for the world model: a clip window, its history, references from other times.

One sample (SWM's recipe, DESIGN.md "Training"):

- a **target window** of ``L`` frames of a clip of the ``train`` split (its frames, poses, caption
  and moving-object masks) and the ``H_f`` frames before it as **history**;
- ``K`` **references** retrieved for the window's trajectory with the project's two-stage
  :class:`~cityenv.citydb.retrieval.Retriever`, from other traversals and other capture times
  than the clip (**cross-temporal pairing**: the clip's traversal and every panorama captured
  within ``time_window_s`` of the clip are excluded; ``cross_temporal=False`` lifts both, for the
  ablation), never from the test split's areas;
- the **warp**: each target frame's nearest reference forward-splatted into it, by the very
  referencing code the model uses at inference (:mod:`cityenv.worldmodel.referencing`);
- the **lookahead sink**: the clip's own frame ``sink_offset`` frames after the window's end,
  the offset drawn from the sample's seed (at inference a retrieved view takes its place).

Every random choice of a sample comes from its seed (``sample_seed(seed, epoch, index)`` of the
training loop), so a sample is reproducible from (seed, index) whatever worker or rank reads it.
The database and clip store are opened lazily in each worker process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from cityenv.citydb.clips import (
    ClipStore,
    anchor_mismatch,
    resize_frames,
    resize_masks,
    split_traversals,
)
from cityenv.citydb.reader import CityDB
from cityenv.citydb.retrieval import Retriever
from cityenv.errors import CityEnvError, ConfigError
from cityenv.geometry.camera import PinholeCamera
from cityenv.worldmodel.referencing import (
    ReferenceLoader,
    nearest_sources,
    prepare_reference,
    warp_nearest,
)

__all__ = ["DataLeakError", "PairSettings", "TrainPairs", "TrainingDataError", "Window"]


class TrainingDataError(CityEnvError, ValueError):
    """The data cannot make the training samples asked for (says what was expected, what came)."""


class DataLeakError(TrainingDataError):
    """A training sample would have used test-split imagery (never expected; a bug if seen)."""


@dataclass(frozen=True)
class PairSettings:
    """How training pairs are cut (``configs/train.yaml``'s ``data`` group).

    Attributes:
        chunk_frames: ``L``, target frames per sample (the model's chunk length).
        history_frames: ``H_f``, frames before the window (history latents x the VAE's ratio).
        num_references: ``K``, references per sample.
        sink_offsets: ``(min, max)`` frames after the window's last frame for the sink frame.
        stride: Frames between the starts of consecutive windows of a clip (``None`` = ``L``).
        cross_temporal: Exclude the clip's own traversal and capture time from its references.
        time_window_s: With ``cross_temporal``: panoramas captured within this many seconds of
            the clip's start are excluded.
        retrieval: Keyword arguments of :class:`~cityenv.citydb.retrieval.Retriever`.
    """

    chunk_frames: int
    history_frames: int
    num_references: int = 1
    sink_offsets: tuple[int, int] = (1, 8)
    stride: int | None = None
    cross_temporal: bool = True
    time_window_s: float = 1800.0
    retrieval: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lo, hi = (int(v) for v in self.sink_offsets)
        checks = {
            "chunk_frames": self.chunk_frames >= 1,
            "history_frames": self.history_frames >= 0,
            "num_references": self.num_references >= 0,
            "sink_offsets": 1 <= lo <= hi,
            "stride": self.stride is None or self.stride >= 1,
            "time_window_s": self.time_window_s >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(
                f"data settings out of range: {bad} (chunk_frames >= 1, history_frames >= 0, "
                f"num_references >= 0, 1 <= sink_offsets[0] <= sink_offsets[1], stride >= 1, "
                f"time_window_s >= 0); got {self}."
            )

    @property
    def span(self) -> int:
        """Frames a window needs: history, targets and the nearest sink."""
        return self.history_frames + self.chunk_frames + int(self.sink_offsets[0])


@dataclass(frozen=True)
class Window:
    """One sample's place: clip and first target frame."""

    clip_id: str
    start: int


class TrainPairs(Dataset):
    """The training samples of a CityDB + clip store (see the module docstring).

    Args:
        citydb: The CityDB folder the references come from.
        clips: The clip store folder (only its ``train`` split is ever opened).
        settings: How samples are cut.
        size: ``(width, height)`` frames and references are resized to (``None``: the clips').

    Raises:
        TrainingDataError: If the store has no train clip long enough for one window, or the
            CityDB's anchor differs from the clip store's.
    """

    def __init__(
        self,
        citydb: str | os.PathLike[str],
        clips: str | os.PathLike[str],
        settings: PairSettings,
        size: tuple[int, int] | None = None,
    ) -> None:
        self.citydb_path, self.clips_path = Path(citydb), Path(clips)
        self.settings = settings
        self._pid: int | None = None
        store = ClipStore(self.clips_path, split="train")
        infos = store.clips(split="train")
        if not infos:
            raise TrainingDataError(
                f"expected train clips in {self.clips_path}, found none (the store holds "
                f"{len(store)} clips in all); make some with python -m carla_tools.generate."
            )
        self.windows = _windows(infos, settings)
        if not self.windows:
            longest = max(i.num_frames for i in infos)
            raise TrainingDataError(
                f"a sample needs {settings.span} frames of one clip ({settings.history_frames} "
                f"history + {settings.chunk_frames} targets + a sink {settings.sink_offsets[0]}+ "
                f"frames later), but the longest train clip has {longest}; generate longer clips "
                "(clips.num_frames) or use a model preset with shorter chunks or history."
            )
        camera = infos[0].camera
        self.size = size or (camera.width, camera.height)
        self.camera = camera.rescaled(*self.size)
        self._check_anchor(store)

    def _check_anchor(self, store: ClipStore) -> None:
        reason = anchor_mismatch(store, CityDB.open(self.citydb_path).frame, self.citydb_path)
        if reason is not None:
            raise TrainingDataError(reason)

    # --- per-process state ------------------------------------------------------------------------
    def _open(self) -> None:
        """Open the store, database, retriever and loader once per process (fork-safe)."""
        if self._pid == os.getpid():
            return
        self._store = ClipStore(self.clips_path, split="train")
        db = CityDB.open(self.citydb_path)
        self._retriever = Retriever(db, **dict(self.settings.retrieval))
        self._loader = ReferenceLoader(db, capacity=64)
        traversals = list(db.traversal_ids)
        self._test_traversals = set(split_traversals(traversals, "test"))
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:  # workers reopen; handles are not pickled
        state = dict(self.__dict__)
        for key in ("_store", "_retriever", "_loader", "_test_traversals"):
            state.pop(key, None)
        state["_pid"] = None
        return state

    # --- samples ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.windows)

    def describe(self, index: int) -> str:
        """``<clip_id>@<first target frame>`` of sample ``index`` (for messages)."""
        window = self.windows[index]
        return f"{window.clip_id}@{window.start}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get_seeded(index, 0)

    def get_seeded(self, index: int, seed: int) -> dict[str, Any]:
        """Sample ``index`` with its random choices drawn from ``seed`` (see the module doc).

        Returns:
            A dict of numpy arrays and scalars (shapes with ``L`` targets, ``H_f`` history frames,
            ``K`` references, frames ``(H, W)``): ``target_frames`` uint8 ``(L, H, W, 3)``,
            ``target_poses`` float64 ``(L, 4, 4)``, ``dynamic`` bool ``(L, H, W)``,
            ``history_frames`` ``(H_f, H, W, 3)``, ``history_poses`` ``(H_f, 4, 4)``,
            ``warp_frames`` uint8 ``(L, H, W, 3)``, ``warp_masks`` bool ``(L, H, W)``,
            ``reference_images`` uint8 ``(K', H, W, 3)`` (``K' <= K`` found),
            ``reference_poses`` ``(K', 4, 4)``, ``reference_intrinsics`` ``(K', 4)``
            (fx, fy, cx, cy at the frame size), ``reference_view_ids`` int64 ``(K',)``,
            ``sink_frame`` ``(H, W, 3)``, ``sink_pose`` ``(4, 4)``, ``sink_offset``,
            ``intrinsics`` ``(4,)``, ``caption``, ``clip_id``, ``start``.
        """
        self._open()
        s, window = self.settings, self.windows[index]
        info = self._store.info(window.clip_id)
        rng = np.random.default_rng(seed)
        last = window.start + s.chunk_frames - 1
        room = info.num_frames - 1 - last
        offset = int(rng.integers(s.sink_offsets[0], min(s.sink_offsets[1], room) + 1))
        frames = [
            *range(window.start - s.history_frames, window.start + s.chunk_frames),
            last + offset,
        ]
        clip = self._store.read_clip(window.clip_id, frames, depth=False, dynamic=True)
        rgb = resize_frames(clip.rgb, self.size)
        dynamic = resize_masks(clip.dynamic, self.size)
        matrices = clip.trajectory.matrices
        h, n = s.history_frames, s.chunk_frames
        targets = slice(h, h + n)
        sample = {
            "clip_id": window.clip_id,
            "start": window.start,
            "caption": info.caption,
            "intrinsics": _intrinsics(self.camera),
            "target_frames": rgb[targets],
            "target_poses": matrices[targets],
            "dynamic": dynamic[targets],
            "history_frames": rgb[:h],
            "history_poses": matrices[:h],
            "sink_frame": rgb[-1],
            "sink_pose": matrices[-1],
            "sink_offset": offset,
        }
        sample.update(self._references(info, clip.trajectory[targets], matrices[targets]))
        return sample

    def _references(self, info: Any, trajectory: Any, matrices: np.ndarray) -> dict[str, Any]:
        """Retrieve, load, resize and warp the window's references."""
        s, camera = self.settings, self.camera
        exclude = set(self._test_traversals)
        exclude_time = None
        if s.cross_temporal:
            exclude.add(info.traversal_id)
            exclude_time = (info.start_time, timedelta(seconds=s.time_window_s))
        result = self._retriever.retrieve(
            trajectory,
            camera,
            k=s.num_references,
            exclude_traversals=sorted(exclude),
            exclude_time=exclude_time,
        )
        views = [self._loader.view(r.view_id) for r in result.references]
        leaked = sorted({v.traversal_id for v in views} & self._test_traversals)
        if leaked:
            raise DataLeakError(
                f"clip {info.clip_id}: references from test-split traversals {leaked} were "
                "retrieved although they were excluded; this is a bug, please report it."
            )
        prepared = [prepare_reference(v, camera.width, camera.height) for v in views]
        nearest = nearest_sources(result.per_frame, len(prepared), len(prepared))
        warps, masks = warp_nearest(prepared, nearest, matrices, camera)
        k, hw = len(prepared), (camera.height, camera.width)
        return {
            "warp_frames": warps,
            "warp_masks": masks,
            "reference_images": np.stack([p.image for p in prepared])
            if k
            else np.zeros((0, *hw, 3), np.uint8),
            "reference_poses": np.stack([p.matrix for p in prepared]) if k else np.zeros((0, 4, 4)),
            "reference_intrinsics": np.stack([_intrinsics(p.camera) for p in prepared])
            if k
            else np.zeros((0, 4)),
            "reference_view_ids": np.asarray([v.view_id for v in views], np.int64),
        }


def _windows(infos: list[Any], s: PairSettings) -> list[Window]:
    """Every window start of every clip: history before it, a sink after it."""
    stride = s.stride or s.chunk_frames
    out = []
    for info in sorted(infos, key=lambda i: i.clip_id):
        last_start = info.num_frames - s.chunk_frames - int(s.sink_offsets[0])
        out.extend(Window(info.clip_id, t) for t in range(s.history_frames, last_start + 1, stride))
    return out


def _intrinsics(camera: PinholeCamera) -> np.ndarray:
    return np.array([camera.fx, camera.fy, camera.cx, camera.cy], np.float64)
