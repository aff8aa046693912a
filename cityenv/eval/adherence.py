"""Prompt adherence: does the generated clip look like the condition its prompt names?

The town can do what no real dataset can: render one trajectory under several conditions
(:data:`~cityenv.eval.render.CONDITIONS`: clear noon, sunset, night, overcast, wet, fog). For
each held-out trajectory and each condition ``c`` of the test:

1. the ground truth ``GT_c`` is rendered with the registered ground-truth renderer;
2. the model generates the trajectory with ``c``'s caption as prompt, from references captured
   under **another** condition (``reference_condition``: the built-in town's CityDB is captured
   at clear noon). The reference condition itself is therefore not a condition of the test (it
   is refused: a clip prompted with it could copy the references and "adhere" without reading
   the prompt). To test it too, capture a second CityDB under another condition and pass it
   with its ``reference_condition``;
3. the model starts **without a start image**: it makes the first frame from the references
   (the warp model and the diffusion model both warp them into the first pose), the same for
   every prompt. Starting from ``GT_c``'s first frame would leak the answer: a model that
   carries its start image's look (the warp model does for frame 0, a video model for the whole
   clip) would match ``GT_c`` without reading the prompt. Every prompt uses the same seed, so
   the prompt is the only thing that differs; every frame (0 included) is scored;
4. the generated clip is assigned to the closest ground truth, by two measures, both on the
   pixels that are static in every condition's render (the conditions' clocks differ, so their
   traffic does):

   - colour: the clip's descriptor is the per-channel mean and standard deviation in CIE Lab
     (OpenCV's float conversion; :func:`~cityenv.eval.longroute.frame_statistics`), averaged
     over the frames, a 6-vector; closest = smallest Euclidean distance;
   - PSNR: closest = highest mean static PSNR over the frames.

The result holds the ``N x N`` confusion matrices (rows: prompted condition; columns: closest
ground truth), the accuracies (the diagonal's share) and chance, ``1 / N``. A model that ignores
the prompt and is deterministic makes the same clip for every prompt, so exactly one prompt per
trajectory is right: its accuracy is exactly chance.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cityenv.errors import EvaluationError
from cityenv.eval.longroute import RouteReferences, chunk_length, frame_statistics, roll_out
from cityenv.eval.metrics import psnr_per_frame
from cityenv.eval.plots import pyplot, save_figure
from cityenv.eval.render import CONDITIONS, GroundTruthRenderer, get_condition, render_condition
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Trajectory
from cityenv.worldmodel.base import WorldModel

__all__ = [
    "COLOUR_DESCRIPTOR",
    "AdherenceResult",
    "AdherenceTrial",
    "check_conditions",
    "colour_descriptor",
    "evaluate_adherence",
    "plot_adherence",
]

COLOUR_DESCRIPTOR = ("L_mean", "a_mean", "b_mean", "L_std", "a_std", "b_std")
"""The entries of :func:`colour_descriptor`, in order."""


@dataclass(frozen=True)
class AdherenceTrial:
    """One generated clip: a trajectory generated with one condition's prompt.

    Attributes:
        trajectory: Index of the trajectory.
        prompt: The prompted condition's name.
        colour_distance: float64 ``(N,)``, Lab-statistics distance to each condition's ground
            truth (in :attr:`AdherenceResult.conditions` order).
        psnr: float64 ``(N,)``, mean static PSNR against each ground truth, dB.
        closest_colour: The condition closest by colour.
        closest_psnr: The condition closest by PSNR.
        seconds: Time the model took for the clip (reset, retrieval and generation).
    """

    trajectory: int
    prompt: str
    colour_distance: np.ndarray
    psnr: np.ndarray
    closest_colour: str
    closest_psnr: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "trajectory": self.trajectory,
            "prompt": self.prompt,
            "colour_distance": self.colour_distance.tolist(),
            "psnr": self.psnr.tolist(),
            "closest_colour": self.closest_colour,
            "closest_psnr": self.closest_psnr,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class AdherenceResult:
    """The prompt-adherence test of one model (see the module docstring).

    Attributes:
        conditions: The ``N`` conditions, in matrix order.
        reference_condition: The condition the references were captured under.
        matrix: int64 ``(N, N)``: row = prompted condition, column = ground truth closest by
            colour statistics; counts over the trajectories.
        matrix_psnr: The same, closest by PSNR.
        trials: Every generated clip's distances.
        timings: Seconds: ``render`` (ground truth), ``generate`` (the model, all clips),
            ``metrics``.
    """

    conditions: tuple[str, ...]
    reference_condition: str
    matrix: np.ndarray
    matrix_psnr: np.ndarray
    trials: tuple[AdherenceTrial, ...]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def chance(self) -> float:
        """``1 / N``: the accuracy of a guess."""
        return 1.0 / len(self.conditions)

    @property
    def accuracy_colour(self) -> float:
        """Share of clips closest, by colour statistics, to their own prompt's ground truth."""
        return float(np.trace(self.matrix) / self.matrix.sum())

    @property
    def accuracy_psnr(self) -> float:
        """Share of clips closest, by PSNR, to their own prompt's ground truth."""
        return float(np.trace(self.matrix_psnr) / self.matrix_psnr.sum())

    def per_condition(self) -> dict[str, dict[str, float]]:
        """Per prompted condition: both accuracies, and the mean colour distance and PSNR to its
        own ground truth."""
        out = {}
        for i, name in enumerate(self.conditions):
            own = [t for t in self.trials if t.prompt == name]
            out[name] = {
                "accuracy_colour": float(self.matrix[i, i] / self.matrix[i].sum()),
                "accuracy_psnr": float(self.matrix_psnr[i, i] / self.matrix_psnr[i].sum()),
                "colour_distance": float(np.mean([t.colour_distance[i] for t in own])),
                "psnr": float(np.mean([t.psnr[i] for t in own])),
            }
        return out

    def as_dict(self) -> dict[str, Any]:
        """Every number, JSON-serialisable."""
        return {
            "conditions": list(self.conditions),
            "reference_condition": self.reference_condition,
            "chance": self.chance,
            "accuracy_colour": self.accuracy_colour,
            "accuracy_psnr": self.accuracy_psnr,
            "matrix": self.matrix.tolist(),
            "matrix_psnr": self.matrix_psnr.tolist(),
            "per_condition": self.per_condition(),
            "trials": [t.as_dict() for t in self.trials],
            "timings": dict(self.timings),
        }


def check_conditions(
    conditions: Sequence[str] | None, reference_condition: str = "clear_noon"
) -> tuple[str, ...]:
    """The test's condition names: given, or every condition but the reference one.

    Raises:
        UnknownNameError: For an unknown name ("Did you mean ...?").
        EvaluationError: For fewer than two conditions, a repeated one, or the reference
            condition among them.
    """
    reference = get_condition(reference_condition).name
    if conditions is None:
        conditions = [name for name in CONDITIONS if name != reference]
    names = tuple(get_condition(name).name for name in conditions)
    if len(names) < 2 or len(set(names)) != len(names):
        raise EvaluationError(
            f"prompt adherence needs two or more distinct conditions, got {list(names)}; pick "
            f"from {sorted(CONDITIONS)}."
        )
    if reference in names:
        raise EvaluationError(
            f"the references were captured under {reference!r}, so it cannot be a prompted "
            f"condition (a clip could copy its references and match without reading the "
            f"prompt), got it in {list(names)}; leave it out, or pass references captured under "
            "another condition with that reference_condition."
        )
    return names


def colour_descriptor(frames: np.ndarray, static: np.ndarray | None = None) -> np.ndarray:
    """A clip's colour: per-channel Lab mean and std (:data:`COLOUR_DESCRIPTOR`), frame mean.

    Args:
        frames: uint8 ``(T, H, W, 3)``.
        static: bool ``(T, H, W)``, the pixels to describe (``None``: all).

    Returns:
        float64 ``(6,)``.
    """
    stats = frame_statistics(frames, static)
    return np.array([np.nanmean(stats[name]) for name in COLOUR_DESCRIPTOR])


def evaluate_adherence(
    model: WorldModel,
    trajectories: Trajectory | Sequence[Trajectory],
    camera: PinholeCamera,
    renderer: GroundTruthRenderer,
    references: RouteReferences,
    *,
    conditions: Sequence[str] | None = None,
    reference_condition: str = "clear_noon",
    chunk_frames: int | None = None,
    seed: int = 0,
) -> AdherenceResult:
    """The prompt-adherence test of ``model`` (see the module docstring).

    Args:
        model: Any world model.
        trajectories: One or more held-out trajectories of ``1 + n * L`` poses each (a test
            clip's window, a road-graph route).
        camera: Intrinsics and size of the frames.
        renderer: The ground-truth renderer of the world the references show (open).
        references: The chunks' references (:class:`~cityenv.eval.longroute.RouteReferences`
            over a CityDB captured under ``reference_condition``).
        conditions: The conditions to prompt (default: every one but ``reference_condition``).
        reference_condition: The condition the references were captured under.
        chunk_frames: ``L`` (default: the model's ``settings.chunk_frames``).
        seed: Seeds the model's reset (the same for every prompt).

    Raises:
        UnknownNameError: For an unknown condition ("Did you mean ...?").
        EvaluationError: For bad conditions (:func:`check_conditions`), no trajectory, or a
            trajectory that is not whole chunks.
        ShapeMismatchError: If the model cannot make frames of ``camera``'s size (its
            ``check_settings``) or returns others.
    """
    names = check_conditions(conditions, reference_condition)
    trajectories = [trajectories] if isinstance(trajectories, Trajectory) else list(trajectories)
    if not trajectories:
        raise EvaluationError("prompt adherence needs one or more trajectories, got none.")
    lengths = {chunk_length(model, chunk_frames, len(t)) for t in trajectories}
    for length in lengths:  # before any rendering: a clear error first
        model.check_settings(camera, length)
    matrices = np.zeros((2, len(names), len(names)), np.int64)
    trials: list[AdherenceTrial] = []
    timings = {"render": 0.0, "generate": 0.0, "metrics": 0.0}
    for index, trajectory in enumerate(trajectories):
        for trial in _trials(
            model,
            index,
            trajectory,
            camera,
            renderer,
            references,
            names,
            chunk_length(model, chunk_frames, len(trajectory)),
            seed,
            timings,
        ):
            row = names.index(trial.prompt)
            matrices[0, row, names.index(trial.closest_colour)] += 1
            matrices[1, row, names.index(trial.closest_psnr)] += 1
            trials.append(trial)
    return AdherenceResult(
        names,
        get_condition(reference_condition).name,
        matrices[0],
        matrices[1],
        tuple(trials),
        timings,
    )


def _trials(
    model: WorldModel,
    index: int,
    trajectory: Trajectory,
    camera: PinholeCamera,
    renderer: GroundTruthRenderer,
    references: RouteReferences,
    names: tuple[str, ...],
    length: int,
    seed: int,
    timings: dict[str, float],
) -> list[AdherenceTrial]:
    """The clips of one trajectory, one per prompted condition, scored against every GT."""
    t0 = time.perf_counter()
    truths = [render_condition(renderer, trajectory, camera, name) for name in names]
    timings["render"] += time.perf_counter() - t0
    # pixels static in every condition: the conditions' traffic differs (their clocks do)
    static = ~np.logical_or.reduce([dynamic for _, dynamic in truths])
    truth_colour = np.stack([colour_descriptor(frames, static) for frames, _ in truths])
    out = []
    for name in names:
        rollout = roll_out(
            model,
            trajectory,
            camera,
            references,
            chunk_frames=length,
            prompt=get_condition(name).caption,
            start_image=None,
            seed=seed,
        )
        timings["generate"] += rollout.timings["total"]
        t0 = time.perf_counter()
        colour = np.linalg.norm(truth_colour - colour_descriptor(rollout.frames, static), axis=1)
        psnr = np.array(
            [np.nanmean(psnr_per_frame(rollout.frames, frames, static)) for frames, _ in truths]
        )
        timings["metrics"] += time.perf_counter() - t0
        out.append(
            AdherenceTrial(
                trajectory=index,
                prompt=name,
                colour_distance=colour,
                psnr=psnr,
                closest_colour=names[int(np.argmin(colour))],
                closest_psnr=names[int(np.argmax(psnr))],
                seconds=rollout.timings["total"],
            )
        )
    return out


def plot_adherence(result: AdherenceResult, path: str | os.PathLike[str]) -> Path:
    """The two confusion matrices (colour, PSNR) as row-normalised heat maps (PNG).

    Args:
        result: An adherence test.
        path: The PNG to write (its folder is created).

    Returns:
        The written path.
    """
    plt = pyplot()

    names = result.conditions
    panels = (
        ("colour statistics", result.matrix, result.accuracy_colour),
        ("PSNR", result.matrix_psnr, result.accuracy_psnr),
    )
    size = 1.0 + 0.7 * len(names)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1.5, size + 0.6))
    for ax, (title, matrix, accuracy) in zip(axes, panels, strict=True):
        share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, vmin=0.0, vmax=1.0, cmap="Blues")
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(
                j,
                i,
                str(count),
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.5 else "black",
                fontsize=8,
            )
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("closest ground truth")
        ax.set_ylabel("prompted condition")
        ax.set_title(f"{title}: {accuracy:.2f} (chance {result.chance:.2f})", fontsize=9)
    return save_figure(fig, path)
