"""Long rollouts on the real town: routes on the road graph, segments that cover them, a perfect
model scored at the metrics' maximum inside the ground truth's range, and typed errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from cityenv.citydb.roadgraph import RoadGraph
from cityenv.errors import EvaluationError, ShapeMismatchError, UnknownNameError
from cityenv.eval.longroute import (
    STATISTICS,
    evaluate_long_route,
    frame_statistics,
    plan_route,
    plot_long_route,
    route_segments,
)
from cityenv.geometry.camera import PinholeCamera
from cityenv.worldmodel import WarpWorldModel

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from oracle_model import OracleWorldModel  # noqa: E402

CAMERA = PinholeCamera.from_fov(64, 48, 90.0)


@pytest.fixture(scope="module")
def graph(references):
    return RoadGraph.from_citydb(references.db, link_radius_m=20.0)


@pytest.fixture(scope="module")
def route(graph):
    """150 m of the tiny town's streets, a pose every 3 m, whole 4-frame chunks."""
    return plan_route(graph, 150.0, rng=np.random.default_rng(0), step_m=3.0, chunk_frames=4)


def test_a_route_follows_the_road_graph_and_is_whole_chunks(graph, route):
    assert len(route) == 53 and (len(route) - 1) % 4 == 0  # 1 + ceil(50 / 4) * 4 poses
    assert route.length_m == pytest.approx(156.0) and len(set(route.nodes)) == len(route.nodes)
    np.testing.assert_allclose(np.diff(route.distance_m), 3.0)
    np.testing.assert_allclose(route.trajectory.timestamps, route.distance_m / 10.0)
    # every pose near the streets, at the panoramas' capture height
    offsets = [graph.distance_to_graph(p) for p in route.trajectory.positions]
    assert max(offsets) < 6.0
    np.testing.assert_allclose(route.trajectory.positions[:, 2], graph.positions[0, 2])
    again = plan_route(graph, 150.0, rng=np.random.default_rng(0), step_m=3.0, chunk_frames=4)
    assert again.nodes == route.nodes  # seeded


def test_segments_cover_the_route(route):
    segments = route_segments(route.distance_m, 50.0)
    assert [(s.start_m, s.end_m) for s in segments] == [
        (0.0, 50.0),
        (50.0, 100.0),
        (100.0, 150.0),
        (150.0, 156.0),
    ]
    joined = np.concatenate([s.frames for s in segments])
    np.testing.assert_array_equal(joined, np.arange(len(route)))
    with pytest.raises(ValueError, match="segment_m must be > 0"):
        route_segments(route.distance_m, 0.0)


def test_the_oracle_scores_the_maximum_inside_the_range(renderer, references, route):
    result = evaluate_long_route(
        OracleWorldModel(renderer),
        route,
        CAMERA,
        renderer,
        references,
        condition="sunset",
        chunk_frames=4,
        segment_m=50.0,
    )
    assert result.condition == "sunset" and result.num_frames == 53
    assert [s.frames for s in result.segments] == [16, 17, 16, 3]  # frame 0 is not scored
    for segment in result.segments:
        assert segment.psnr_static == 100.0 and segment.ssim_static == pytest.approx(1.0)
        assert segment.generated == segment.truth and segment.all_inside
    assert result.inside_fraction == 1.0
    low, high = result.ranges["L_mean"]
    truths = [s.truth["L_mean"] for s in result.segments]
    assert low == pytest.approx(min(truths) - 0.25 * (max(truths) - min(truths)))
    assert high > low
    json.dumps(result.as_dict())


def test_the_warp_model_is_scored_below_the_oracle(renderer, references, route):
    result = evaluate_long_route(
        WarpWorldModel(),
        route,
        CAMERA,
        renderer,
        references,
        condition="clear_noon",
        chunk_frames=4,
        segment_m=50.0,
    )
    psnr = [s.psnr_static for s in result.segments]
    assert all(10.0 < p < 35.0 for p in psnr)  # the references' own town, an hour apart
    assert {"render", "reset", "retrieval", "generate", "total", "metrics"} <= set(result.timings)


def test_the_distance_plot_is_a_png(renderer, references, route, tmp_path):
    pytest.importorskip("matplotlib")
    result = evaluate_long_route(
        OracleWorldModel(renderer),
        route,
        CAMERA,
        renderer,
        references,
        condition="fog",
        chunk_frames=4,
        segment_m=50.0,
    )
    png = plot_long_route(result, tmp_path / "plots" / "long_route.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_frame_statistics_see_darkness_and_blur():
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    dark = (sharp // 4).astype(np.uint8)
    flat = np.full_like(sharp, 128)
    a, b, c = frame_statistics(sharp), frame_statistics(dark), frame_statistics(flat)
    assert set(a) == set(STATISTICS)
    assert (b["L_mean"] < 0.5 * a["L_mean"]).all() and (b["sharpness"] < a["sharpness"]).all()
    np.testing.assert_allclose(c["sharpness"], 0.0)
    np.testing.assert_allclose(c["L_std"], 0.0, atol=1e-3)
    none = frame_statistics(sharp, np.zeros((2, 32, 32), bool))
    assert np.isnan(none["L_mean"]).all()


def test_a_route_longer_than_the_road_network_allows_is_refused(graph):
    with pytest.raises(EvaluationError, match="without visiting a panorama twice, got at most"):
        plan_route(graph, 5000.0, rng=np.random.default_rng(0), attempts=2)


def test_bad_input_is_refused(renderer, references, route):
    model = WarpWorldModel()
    with pytest.raises(UnknownNameError, match="Did you mean 'night'"):
        evaluate_long_route(
            model, route, CAMERA, renderer, references, condition="nite", chunk_frames=4
        )
    with pytest.raises(EvaluationError, match=r"1 \+ n x 5 frames"):
        evaluate_long_route(model, route, CAMERA, renderer, references, chunk_frames=5)
    from cityenv.worldmodel import DiffusionWorldModel

    diffusion = DiffusionWorldModel.from_preset("tiny", device="cpu")
    with pytest.raises(ShapeMismatchError, match="multiple"):
        evaluate_long_route(
            diffusion,
            route,
            PinholeCamera.from_fov(72, 40, 90.0),
            renderer,
            references,
            chunk_frames=4,
        )
