"""The rows of a bench: the warp baseline, the diffusion model and its ablations (SWM Table 2).

A :class:`Row` is a world model plus how a replay treats it: its references (retrieved, none,
or from the clip's own traversal and time) and its sink (retrieved, none, or the window's first
ground-truth frame). Every ablation is made at replay time, on the same model and weights:

============================  ==================================================================
``no_references``             every chunk gets no reference and no sink (empty retrieval): no
                              semantic tokens, no warp, no sink.
``no_warp``                   the warp channels are withheld (``SamplingSettings.ablate``).
``no_sink``                   no lookahead sink (``SamplingSettings.use_sink=False``).
``first_frame_sink``          the sink is the window's first ground-truth frame (at its pose)
                              instead of the retrieved view near the chunk's end.
``same_traversal``            references may come from the clip's own traversal and capture
                              time (``ReplaySettings.cross_temporal=False``).
============================  ==================================================================

Rows of one run replay the same clip windows with the same seeds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cityenv.errors import ConfigError, check_name
from cityenv.eval.replay import ReplaySettings
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose, Trajectory
from cityenv.worldmodel.base import ChunkOutput, ChunkReferences, WorldModel
from cityenv.worldmodel.referencing import ReferenceView

__all__ = ["ABLATIONS", "AblatedModel", "Row", "RowSpec", "build_rows"]

ABLATIONS: dict[str, str] = {
    "no_references": "no references, no warp, no sink",
    "no_warp": "no warp channels",
    "no_sink": "no lookahead sink",
    "first_frame_sink": "first ground-truth frame as the sink",
    "same_traversal": "references from the clip's own traversal and time",
}
"""Ablations of the diffusion model, by name (the module docstring says how each is made)."""

FIRST_FRAME_VIEW_ID = -1
"""View id of the first-frame sink (not a CityDB view)."""


@dataclass(frozen=True)
class RowSpec:
    """One row of the report.

    Attributes:
        name: The row's name (its results folder ``rows/<name>/``).
        kind: ``warp`` or ``diffusion``.
        path: A saved world-model folder (diffusion; ``None``: random weights of ``preset``).
        preset: The preset of random weights (``tiny``, ``small``, ...).
        seed: Seed of random weights.
        ablation: One of :data:`ABLATIONS` or ``None``.
        sampling: Overrides of the model's sampling settings.
        device: Where the model runs (``None``: CUDA when available).
    """

    name: str
    kind: str = "warp"
    path: str | None = None
    preset: str | None = None
    seed: int = 0
    ablation: str | None = None
    sampling: tuple[tuple[str, Any], ...] = ()
    device: str | None = None

    @property
    def untrained(self) -> bool:
        """A diffusion row of random weights."""
        return self.kind == "diffusion" and self.path is None

    @property
    def label(self) -> str:
        """What the report calls it: the name, marked when the weights are random."""
        return f"{self.name} (untrained)" if self.untrained else self.name

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values (a run folder's ``row.json``)."""
        out = dataclasses.asdict(self)
        out["sampling"] = dict(self.sampling)
        out["description"] = self.description
        return out

    @property
    def description(self) -> str:
        if self.kind == "warp":
            return "warp baseline (retrieval + forward splatting, no learning)"
        what = f"diffusion model {self.path}" if self.path else f"untrained {self.preset} preset"
        return what + (f", ablation: {ABLATIONS[self.ablation]}" if self.ablation else "")


@dataclass(eq=False)
class Row:
    """A row ready to replay: its spec, model and replay settings.

    Attributes:
        spec: What it is.
        model: The world model (wrapped for ``no_references`` / ``first_frame_sink``).
        replay: Its reference settings (the bench's, ``cross_temporal`` off for
            ``same_traversal``).
    """

    spec: RowSpec
    model: WorldModel
    replay: ReplaySettings

    @property
    def name(self) -> str:
        return self.spec.name


def build_rows(specs: list[RowSpec], bench_replay: ReplaySettings) -> list[Row]:
    """Load each row's model once (ablations of one model share its weights' folder or preset,
    each gets its own instance so its settings stay its own).

    Raises:
        ConfigError: For an unknown kind or ablation, or an ablation of the warp row.
        CheckpointError: If a model folder is not a saved world model.
    """
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"row names must be unique, got {names}.")
    return [_build(spec, bench_replay) for spec in specs]


def _build(spec: RowSpec, bench_replay: ReplaySettings) -> Row:
    check_name(f"row {spec.name!r} kind", spec.kind, ("warp", "diffusion"), error=ConfigError)
    if spec.ablation is not None:
        check_name("ablation", spec.ablation, ABLATIONS, error=ConfigError)
        if spec.kind != "diffusion":
            raise ConfigError(
                f"ablations are of the diffusion model, got ablation {spec.ablation!r} on the "
                f"{spec.kind} row {spec.name!r}; give model.path or model.preset."
            )
    model = _model(spec)
    replay = bench_replay
    if spec.ablation == "same_traversal":
        replay = dataclasses.replace(bench_replay, cross_temporal=False)
    if spec.ablation in ("no_references", "first_frame_sink"):
        model = AblatedModel(model, spec.ablation)
    return Row(spec, model, replay)


def _model(spec: RowSpec) -> WorldModel:
    if spec.kind == "warp":
        from cityenv.worldmodel.warp import WarpWorldModel

        return WarpWorldModel()
    from cityenv.worldmodel.diffusion import DiffusionWorldModel

    settings = dict(spec.sampling)
    if spec.ablation == "no_warp":
        settings["ablate"] = ("warp",)
    elif spec.ablation == "no_sink":
        settings["use_sink"] = False
    if spec.path is not None:
        return DiffusionWorldModel.from_pretrained(
            Path(spec.path).expanduser(), device=spec.device, **settings
        )
    if spec.preset is None:
        raise ConfigError(
            f"the diffusion row {spec.name!r} needs model.path (a saved world model) or "
            "model.preset (random weights), got neither."
        )
    return DiffusionWorldModel.from_preset(
        spec.preset, seed=spec.seed, device=spec.device, **settings
    )


class AblatedModel(WorldModel):
    """A world model replayed with its references changed before it sees them.

    Args:
        inner: The model.
        ablation: ``no_references`` (every reset and chunk gets no reference and no sink) or
            ``first_frame_sink`` (each chunk's sink is the episode's start image at its first
            pose; without depth, so if it is ever splatted it lands as sky, at infinity).
    """

    def __init__(self, inner: WorldModel, ablation: str) -> None:
        self.inner = inner
        self.ablation = check_name(
            "AblatedModel ablation", ablation, ("no_references", "first_frame_sink")
        )
        self._sink: ReferenceView | None = None

    @property
    def settings(self) -> Any:
        """The inner model's sampling settings (its chunk length)."""
        return getattr(self.inner, "settings", None)

    def check_settings(self, camera: PinholeCamera, chunk_length: int) -> None:
        self.inner.check_settings(camera, chunk_length)

    def reset(
        self,
        *,
        pose: Pose,
        camera: PinholeCamera,
        references: ChunkReferences,
        start_image: np.ndarray | None = None,
        prompt: str | None = None,
        generator: np.random.Generator | None = None,
    ) -> np.ndarray:
        if start_image is not None:
            self._sink = ReferenceView(
                view_id=FIRST_FRAME_VIEW_ID,
                image=np.ascontiguousarray(start_image),
                depth=np.zeros(start_image.shape[:2], np.float32),
                camera=camera.rescaled(start_image.shape[1], start_image.shape[0]),
                pose=pose,
                traversal_id="first-frame",
            )
        self.prompt = prompt
        return self.inner.reset(
            pose=pose,
            camera=camera,
            references=self._change(references),
            start_image=start_image,
            prompt=prompt,
            generator=generator,
        )

    def generate(self, trajectory: Trajectory, references: ChunkReferences) -> ChunkOutput:
        return self.inner.generate(trajectory, self._change(references))

    def _change(self, references: ChunkReferences) -> ChunkReferences:
        if self.ablation == "no_references":
            return ChunkReferences.none(len(references.per_frame))
        return ChunkReferences(references.views, references.per_frame, self._sink)
