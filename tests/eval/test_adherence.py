"""Prompt adherence on the real town: a perfect model adheres, the prompt-blind warp model does
not, and bad input is refused with typed errors."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import numpy as np
import pytest

from carla_tools.eval_render import town_renderer
from cityenv.citydb.roadgraph import RoadGraph
from cityenv.envs.town import TownSpec
from cityenv.errors import EvaluationError, ShapeMismatchError, UnknownNameError
from cityenv.eval.adherence import (
    AdherenceResult,
    check_conditions,
    evaluate_adherence,
    plot_adherence,
)
from cityenv.eval.longroute import RouteReferences, plan_route
from cityenv.eval.render import CONDITIONS, render_condition
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Trajectory
from cityenv.worldmodel import WarpWorldModel
from cityenv.worldmodel.base import ChunkOutput, ChunkReferences, WorldModel

TINY = {"blocks": (1, 1), "size": 64, "spacing_m": 10.0}
CAMERA = PinholeCamera.from_fov(64, 48, 90.0)
CONDITION_NAMES = ("sunset", "night", "fog")


class OracleWorldModel(WorldModel):
    """A perfect world model: it renders the town under the condition its prompt names.

    Trajectories of the tests start at timestamp 0, so a chunk's world clock is the condition's
    time plus the chunk's first timestamp, as the ground-truth renderer sets it.
    """

    def __init__(self, renderer) -> None:
        self.renderer = renderer
        self.by_caption = {c.caption: c for c in CONDITIONS.values()}

    def reset(self, *, pose, camera, references, start_image=None, prompt=None, generator=None):
        self.camera, self.condition = camera, self.by_caption[prompt]
        frames, _ = render_condition(
            self.renderer, Trajectory.from_poses([pose]), camera, self.condition
        )
        return frames[0]

    def generate(self, trajectory: Trajectory, references: ChunkReferences) -> ChunkOutput:
        when = self.condition.time + timedelta(seconds=float(trajectory.timestamps[0]))
        frames, _ = self.renderer.render(
            trajectory, self.camera, time=when, weather=self.condition.weather
        )
        return ChunkOutput(frames, None, None, references)


@pytest.fixture(scope="module")
def town_db(tmp_path_factory):
    """The tiny town's CityDB (clear noon references), in a temporary cache."""
    from cityenv.envs.town import build_town_db

    patch = pytest.MonkeyPatch()
    patch.setenv("CITYENV_CACHE", str(tmp_path_factory.mktemp("adherence-cache")))
    yield build_town_db(**TINY, progress=False)
    patch.undo()


@pytest.fixture(scope="module")
def renderer():
    with contextlib.closing(town_renderer(TownSpec(blocks=list(TINY["blocks"])))) as r:
        yield r


@pytest.fixture(scope="module")
def references(town_db):
    return RouteReferences(town_db, num_references=3)


@pytest.fixture(scope="module")
def trajectory(references):
    """A held-out 16 m drive along the tiny town's streets: 9 poses, 2 m apart."""
    graph = RoadGraph.from_citydb(references.db, link_radius_m=20.0)
    return plan_route(graph, 16.0, rng=np.random.default_rng(1), chunk_frames=4).trajectory


def _adherence(model, renderer, references, trajectory, **kwargs) -> AdherenceResult:
    return evaluate_adherence(
        model,
        trajectory,
        CAMERA,
        renderer,
        references,
        conditions=kwargs.pop("conditions", CONDITION_NAMES),
        chunk_frames=4,
        **kwargs,
    )


def test_the_oracle_adheres_perfectly(renderer, references, trajectory):
    result = _adherence(OracleWorldModel(renderer), renderer, references, trajectory)
    assert result.conditions == CONDITION_NAMES and result.reference_condition == "clear_noon"
    assert result.accuracy_colour == 1.0 and result.accuracy_psnr == 1.0
    np.testing.assert_array_equal(result.matrix, np.eye(3, dtype=np.int64))
    np.testing.assert_array_equal(result.matrix_psnr, np.eye(3, dtype=np.int64))
    assert result.chance == pytest.approx(1 / 3)
    for i, trial in enumerate(result.trials):  # its own ground truth exactly, the others not
        assert trial.psnr[i] == 100.0 and trial.colour_distance[i] == 0.0
        assert np.delete(trial.colour_distance, i).min() > 1.0
    details = result.per_condition()
    assert details["night"] == {
        "accuracy_colour": 1.0,
        "accuracy_psnr": 1.0,
        "colour_distance": 0.0,
        "psnr": 100.0,
    }


def test_the_matrix_plot_is_a_png(renderer, references, trajectory, tmp_path):
    pytest.importorskip("matplotlib")
    result = _adherence(OracleWorldModel(renderer), renderer, references, trajectory)
    png = plot_adherence(result, tmp_path / "plots" / "adherence.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_the_prompt_blind_warp_model_is_at_chance(renderer, references, trajectory):
    oracle = _adherence(OracleWorldModel(renderer), renderer, references, trajectory)
    warp = _adherence(WarpWorldModel(), renderer, references, trajectory)
    # it makes one clip for every prompt: each matrix has a single full column, one hit
    for matrix in (warp.matrix, warp.matrix_psnr):
        assert np.count_nonzero(matrix.sum(axis=0)) == 1 and np.trace(matrix) == 1
    assert warp.accuracy_colour == warp.accuracy_psnr == pytest.approx(warp.chance)
    assert warp.accuracy_colour < oracle.accuracy_colour
    # its clear-noon look is nearest the sunset render (as recorded on the tiny town, 64 x 48)
    assert warp.trials[0].closest_colour == "sunset"
    assert all(t.psnr.max() < 30.0 for t in warp.trials)


def test_the_default_conditions_leave_out_the_references_condition():
    assert check_conditions(None) == ("sunset", "night", "overcast", "wet", "fog")
    assert "sunset" not in check_conditions(None, reference_condition="sunset")


def test_bad_conditions_are_refused(renderer, references, trajectory):
    model = WarpWorldModel()
    with pytest.raises(UnknownNameError, match="Did you mean 'night'"):
        _adherence(model, renderer, references, trajectory, conditions=["sunset", "nigth"])
    with pytest.raises(EvaluationError, match="captured under 'clear_noon'"):
        _adherence(model, renderer, references, trajectory, conditions=["clear_noon", "fog"])
    with pytest.raises(EvaluationError, match="two or more distinct conditions"):
        _adherence(model, renderer, references, trajectory, conditions=["fog", "fog"])


def test_trajectories_of_partial_chunks_are_refused(renderer, references, trajectory):
    with pytest.raises(EvaluationError, match=r"1 \+ n x 4 frames .* got 8; use 5 or 9 frames"):
        _adherence(WarpWorldModel(), renderer, references, trajectory[:8])
    with pytest.raises(EvaluationError, match="needs a chunk length"):
        evaluate_adherence(WarpWorldModel(), trajectory, CAMERA, renderer, references)


def test_a_frame_size_the_model_cannot_make_is_refused(renderer, references, trajectory):
    from cityenv.worldmodel import DiffusionWorldModel

    model = DiffusionWorldModel.from_preset("tiny", device="cpu")
    odd = PinholeCamera.from_fov(72, 40, 90.0)
    with pytest.raises(ShapeMismatchError, match="multiple"):
        evaluate_adherence(
            model, trajectory, odd, renderer, references, conditions=CONDITION_NAMES, chunk_frames=4
        )
