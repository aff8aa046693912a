"""PSNR / SSIM, whole and static, and per-distance windows, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cityenv.errors import ShapeMismatchError
from cityenv.eval.metrics import (
    PSNR_CAP_DB,
    FrameMetrics,
    distance_windows,
    frame_metrics,
    per_distance,
    psnr_per_frame,
    ssim_per_frame,
    travelled,
)


def _frames(t: int = 2, h: int = 16, w: int = 16, value: int = 100) -> np.ndarray:
    return np.full((t, h, w, 3), value, np.uint8)


def test_psnr_of_a_known_mse():
    truth = _frames()
    generated = truth.copy()
    generated[0] += 10  # every value 10 off: MSE 100
    generated[1, :8] += 20  # half the values 20 off: MSE 400 / 2 = 200
    expected = [10 * math.log10(255**2 / 100), 10 * math.log10(255**2 / 200)]
    np.testing.assert_allclose(psnr_per_frame(generated, truth), expected, rtol=1e-6)


def test_identical_frames_are_capped_not_infinite():
    truth = _frames()
    np.testing.assert_array_equal(psnr_per_frame(truth, truth), [PSNR_CAP_DB, PSNR_CAP_DB])
    np.testing.assert_allclose(ssim_per_frame(truth, truth), [1.0, 1.0], atol=1e-6)


def test_a_mask_hiding_the_only_differing_pixels_gives_a_perfect_static_score():
    truth = np.random.default_rng(0).integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
    generated = truth.copy()
    generated[:, 4:8, 10:14] = 255 - generated[:, 4:8, 10:14]  # a "car" the model got wrong
    dynamic = np.zeros((2, 24, 24), bool)
    dynamic[:, 4:8, 10:14] = True
    metrics = frame_metrics(generated, truth, dynamic)
    np.testing.assert_array_equal(metrics.psnr_static, [PSNR_CAP_DB, PSNR_CAP_DB])
    assert np.all(metrics.psnr < 30)
    # the SSIM map is masked, not the images: windows near the car still see it
    assert np.all(metrics.ssim_static > metrics.ssim) and np.all(metrics.ssim_static < 1)


def test_static_psnr_counts_only_static_pixels():
    truth = _frames(t=1, h=4, w=4)
    generated = truth.copy()
    generated[0, 0, :2] += 30  # 2 static pixels x 3 channels off by 30
    generated[0, 3] += 90  # the dynamic row, ignored
    dynamic = np.zeros((1, 4, 4), bool)
    dynamic[0, 3] = True
    mse = 2 * 3 * 30**2 / (12 * 3)  # 12 static pixels
    static = psnr_per_frame(generated, truth, ~dynamic)
    np.testing.assert_allclose(static, [10 * math.log10(255**2 / mse)], rtol=1e-6)


def test_without_dynamic_pixels_static_ssim_is_torchmetrics_ssim():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    generated = np.clip(truth.astype(int) + rng.integers(-40, 40, truth.shape), 0, 255)
    generated = generated.astype(np.uint8)
    metrics = frame_metrics(generated, truth, np.zeros((3, 20, 20), bool))
    np.testing.assert_allclose(metrics.ssim_static, metrics.ssim, rtol=1e-6)
    np.testing.assert_allclose(metrics.psnr_static, metrics.psnr, rtol=1e-6)
    assert np.all((metrics.ssim > 0) & (metrics.ssim < 1))


def test_a_frame_without_static_pixels_is_nan_and_means_skip_it():
    truth = _frames()
    generated = truth.copy()
    generated[0] += 10
    dynamic = np.zeros((2, 16, 16), bool)
    dynamic[0] = True
    metrics = frame_metrics(generated, truth, dynamic)
    assert math.isnan(metrics.psnr_static[0]) and math.isnan(metrics.ssim_static[0])
    assert metrics.means()["psnr_static"] == PSNR_CAP_DB
    joined = FrameMetrics.concatenate([metrics, metrics])
    assert joined.psnr.shape == (4,) and joined.means() == pytest.approx(metrics.means())


def test_bad_shapes_are_typed_errors():
    truth = _frames()
    with pytest.raises(ShapeMismatchError, match=r"one shape, got \(2, 16, 16, 3\) and"):
        psnr_per_frame(truth, _frames(t=3))
    with pytest.raises(ShapeMismatchError, match="must be uint8"):
        psnr_per_frame(truth.astype(np.float32), truth)
    with pytest.raises(ShapeMismatchError, match=r"masks must be bool \(T, H, W\)"):
        frame_metrics(truth, truth, np.zeros((2, 16, 16), np.uint8))


def test_travelled_distance_and_windows():
    positions = np.zeros((6, 3))
    positions[:, 0] = [0, 30, 60, 90, 120, 250]  # metres along x
    distance = travelled(positions)
    np.testing.assert_allclose(distance, [0, 30, 60, 90, 120, 250])
    windows = distance_windows(distance, window_m=100)
    assert [(w.start_m, w.end_m) for w in windows] == [(0, 100), (100, 200), (200, 300)]
    assert [w.frames.tolist() for w in windows] == [[0, 1, 2, 3], [4], [5]]
    sliding = distance_windows(distance, window_m=100, stride_m=50)
    assert [w.frames.tolist() for w in sliding[:3]] == [[0, 1, 2, 3], [2, 3, 4], [4]]
    with pytest.raises(ValueError, match="must be > 0 metres"):
        distance_windows(distance, window_m=0)


def test_per_distance_averages_each_window():
    distance = np.array([0.0, 50.0, 99.0, 100.0, 180.0])
    rows = per_distance({"psnr": np.array([10, 20, np.nan, 30, 50.0])}, distance, window_m=100)
    assert rows == [
        {"start_m": 0.0, "end_m": 100.0, "frames": 3, "psnr": 15.0},
        {"start_m": 100.0, "end_m": 200.0, "frames": 2, "psnr": 40.0},
    ]
    assert per_distance(np.array([1.0, 3.0]), np.array([0.0, 1.0]))[0]["value"] == 2.0
    with pytest.raises(ShapeMismatchError, match="one value per frame"):
        per_distance(np.zeros(3), distance)
