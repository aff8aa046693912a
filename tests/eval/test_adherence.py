"""Prompt adherence on the real town: a perfect model adheres, the prompt-blind warp model does
not, and bad input is refused with typed errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from cityenv.citydb.roadgraph import RoadGraph
from cityenv.errors import EvaluationError, ShapeMismatchError, UnknownNameError
from cityenv.eval.adherence import (
    AdherenceResult,
    check_conditions,
    evaluate_adherence,
    plot_adherence,
)
from cityenv.eval.longroute import plan_route
from cityenv.geometry.camera import PinholeCamera
from cityenv.worldmodel import WarpWorldModel

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from oracle_model import OracleWorldModel  # noqa: E402

CAMERA = PinholeCamera.from_fov(64, 48, 90.0)
CONDITION_NAMES = ("sunset", "night", "fog")


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
