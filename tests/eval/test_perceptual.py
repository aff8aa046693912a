"""LPIPS, FID and FVD (cityenv.eval.perceptual) with random networks of the real architectures.

No real weights can be downloaded here, so each network gets random weights that are saved to a
temp folder (safetensors, or ``.pt`` for the I3D) and read back through the real loading code.
The parameter names are pinned against the published layouts (torchvision's VGG16, the lpips
package, pytorch-fid's Inception, pytorch-i3d), so the real files load where they exist.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from cityenv.errors import MetricInputError, MetricWeightsError, MetricWeightsNotFoundError
from cityenv.eval.perceptual import (
    I3D,
    LPIPS,
    FIDInceptionV3,
    PerceptualMetrics,
    read_weights,
    vgg16_features,
)

VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
"""Indices of the convolutions in torchvision's ``vgg16().features``."""


# --- random weights of the real architectures ---------------------------------------------------
def random_weights(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """``module``'s state dict with He-initialised convolutions (activations keep their scale
    through the deep networks) and no ``num_batches_tracked`` (as in pre-0.4.1 files)."""
    generator = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.Conv3d | nn.Linear):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu", generator=generator)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return {
        key: value.abs() if key.startswith("lin") else value  # lpips keeps its lin weights >= 0
        for key, value in module.state_dict().items()
        if not key.endswith("num_batches_tracked")
    }


@pytest.fixture(scope="module")
def lpips_dir(tmp_path_factory) -> Path:
    """torchvision's VGG16 file (``features.*`` + ``classifier.*``) and lpips's ``vgg.pth``."""
    folder = tmp_path_factory.mktemp("lpips")
    state = random_weights(LPIPS(), seed=0)
    trunk = {k: v for k, v in state.items() if k.startswith("features.")}
    trunk["classifier.6.bias"] = torch.zeros(1000)  # the ImageNet head the metric skips
    save_file(trunk, folder / "vgg16-397923af.safetensors")
    save_file({k: v for k, v in state.items() if k.startswith("lin")}, folder / "vgg.safetensors")
    return folder


@pytest.fixture(scope="module")
def fid_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fid") / "pt_inception-2015-12-05.safetensors"
    save_file(random_weights(FIDInceptionV3(), seed=1), path)
    return path


@pytest.fixture(scope="module")
def fvd_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fvd") / "rgb_imagenet.pt"
    torch.save(random_weights(I3D(), seed=2), path)  # a .pt state dict, read weights_only
    return path


def smooth_clip(seed: int, frames: int, size: int = 64) -> np.ndarray:
    """(T, size, size, 3) uint8: blocky random colour fields, so noise changes the structure."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 216, size=(frames, size // 8, size // 8, 3))
    return np.kron(coarse, np.ones((1, 8, 8, 1))).astype(np.uint8)


def noisy(clip: np.ndarray, sigma: float, seed: int = 7) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, clip.shape)
    return np.clip(clip + noise, 0, 255).astype(np.uint8)


# --- parameter names of the published layouts ---------------------------------------------------
def test_vgg_trunk_has_torchvision_vgg16_feature_names():
    expected = [f"features.{i}.{p}" for i in VGG16_CONVS for p in ("weight", "bias")]
    state = LPIPS().state_dict()
    assert [k for k in state if k.startswith("features.")] == expected
    assert list(vgg16_features().state_dict()) == [k.removeprefix("features.") for k in expected]
    assert state["features.28.weight"].shape == (512, 512, 3, 3)


def test_lpips_linear_layers_have_the_lpips_package_names():
    state = LPIPS().state_dict()
    lins = {k: tuple(v.shape) for k, v in state.items() if not k.startswith("features.")}
    channels = (64, 128, 256, 512, 512)
    assert lins == {f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate(channels)}


def test_fid_inception_has_pytorch_fid_names_and_size():
    state = FIDInceptionV3().state_dict()
    shapes = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_4a_3x3.bn.running_var": (192,),
        "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
        "Mixed_5d.branch_pool.conv.weight": (64, 288, 1, 1),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
        "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
        "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
        "fc.weight": (1008, 2048),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert not [k for k in state if k.startswith("AuxLogits")]
    # torchvision's inception_v3 (27,161,264) less AuxLogits (3,326,696), plus 8 classes of 1008.
    assert sum(p.numel() for p in FIDInceptionV3().parameters()) == 23_850_960


def test_i3d_has_pytorch_i3d_names():
    state = I3D().state_dict()
    shapes = {
        "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
        "Conv3d_2c_3x3.bn.running_mean": (192,),
        "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
        "Mixed_4f.b3b.conv3d.weight": (128, 528, 1, 1, 1),
        "Mixed_5c.b0.bn.weight": (384,),
        "logits.conv3d.weight": (400, 1024, 1, 1, 1),
        "logits.conv3d.bias": (400,),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert "logits.bn.weight" not in state


# --- LPIPS -------------------------------------------------------------------------------------
def test_lpips_is_zero_for_identical_clips_and_grows_with_noise(lpips_dir):
    metrics = PerceptualMetrics.from_config(lpips=lpips_dir)
    truth = [smooth_clip(0, frames=2)]
    assert metrics.compute(truth, truth)["lpips"] == pytest.approx(0.0, abs=1e-6)
    scores = [metrics.compute([noisy(truth[0], s)], truth)["lpips"] for s in (8, 24, 64)]
    assert 0 < scores[0] < scores[1] < scores[2]


def test_lpips_is_symmetric(lpips_dir):
    metrics = PerceptualMetrics.from_config(lpips=lpips_dir)
    a, b = [smooth_clip(1, frames=2)], [smooth_clip(2, frames=2)]
    assert metrics.compute(a, b)["lpips"] == pytest.approx(metrics.compute(b, a)["lpips"], 1e-5)


def test_static_lpips_counts_only_static_pixels(lpips_dir):
    metrics = PerceptualMetrics.from_config(lpips=lpips_dir)
    truth = smooth_clip(3, frames=2)
    gen = truth.copy()
    gen[:, :, :32] = noisy(truth, 40)[:, :, :32]  # noise on the left half only
    left = np.zeros(truth.shape[:3], bool)
    left[:, :, :32] = True
    everywhere = metrics.compute([gen], [truth], static_masks=[np.ones_like(left)])
    # Bilinear upsampling by whole factors keeps a map's mean: an all-static mask is plain LPIPS.
    assert everywhere["lpips_static"] == pytest.approx(everywhere["lpips"], rel=1e-4)
    noisy_static = metrics.compute([gen], [truth], static_masks=[left])["lpips_static"]
    clean_static = metrics.compute([gen], [truth], static_masks=[~left])["lpips_static"]
    assert noisy_static > 2 * clean_static > 0


def test_static_lpips_without_static_pixels_is_not_computed(lpips_dir):
    metrics = PerceptualMetrics.from_config(lpips=lpips_dir)
    clip = smooth_clip(4, frames=1)
    values = metrics.compute([clip], [clip], static_masks=[np.zeros(clip.shape[:3], bool)])
    assert values["lpips_static"] is None and values["lpips"] is not None
    assert metrics.not_computed["lpips_static"] == "no frame has a static pixel"


# --- FID and FVD ----------------------------------------------------------------------------
def test_fid_is_zero_for_a_set_with_itself_and_grows_when_shifted(fid_file):
    metrics = PerceptualMetrics.from_config(fid=fid_file, batch_size=4)
    truth = [smooth_clip(5, frames=3)]
    same = metrics.compute(truth, truth)["fid"]
    shifted = metrics.compute([np.clip(truth[0] + 60, 0, 255).astype(np.uint8)], truth)["fid"]
    assert shifted > 1.0
    assert abs(same) < 1e-3 * shifted


def test_fvd_is_zero_for_a_set_with_itself_and_grows_when_shifted(fvd_file):
    metrics = PerceptualMetrics.from_config(fvd=fvd_file)
    truth = [smooth_clip(6, frames=9, size=32), smooth_clip(7, frames=9, size=32)]
    same = metrics.compute(truth, truth)["fvd"]
    shifted = metrics.compute(
        [np.clip(c.astype(int) + 60, 0, 255).astype(np.uint8) for c in truth], truth
    )
    assert shifted["fvd"] > 1.0
    assert abs(same) < 1e-3 * shifted["fvd"]


def test_fvd_of_too_short_or_too_few_clips_is_not_computed(fvd_file):
    metrics = PerceptualMetrics.from_config(fvd=fvd_file)
    short = [smooth_clip(8, frames=8, size=16)] * 2
    assert metrics.compute(short, short)["fvd"] is None
    assert "at least 9 frames" in metrics.not_computed["fvd"]
    single = [smooth_clip(8, frames=9, size=16)]
    assert metrics.compute(single, single)["fvd"] is None
    assert "got 1 clips" in metrics.not_computed["fvd"]


# --- without weights, wrong weights, wrong input --------------------------------------------------
def test_without_weights_every_metric_is_not_computed():
    metrics = PerceptualMetrics.from_config()
    clip = smooth_clip(9, frames=9, size=16)
    assert metrics.compute([clip, clip], [clip, clip]) == {
        "lpips": None,
        "lpips_static": None,
        "fid": None,
        "fvd": None,
    }
    assert metrics.not_computed == {
        "lpips": "no weights given: metrics.lpips_weights=PATH",
        "lpips_static": "no weights given: metrics.lpips_weights=PATH",
        "fid": "no weights given: metrics.fid_weights=PATH",
        "fvd": "no weights given: metrics.fvd_weights=PATH",
    }


def test_a_missing_layer_is_named(lpips_dir, tmp_path):
    state = read_weights(lpips_dir)
    del state["features.28.weight"], state["features.28.bias"]
    save_file(state, tmp_path / "lpips.safetensors")
    with pytest.raises(MetricWeightsError, match=r"missing keys: features\.28\.weight, features"):
        PerceptualMetrics.from_config(lpips=tmp_path)


def test_a_reshaped_layer_is_named(fid_file, tmp_path):
    state = read_weights(fid_file)
    state["Mixed_7c.branch_pool.conv.weight"] = torch.zeros(190, 2048, 1, 1)
    save_file(state, tmp_path / "inception.safetensors")
    expected = r"Mixed_7c\.branch_pool\.conv\.weight \(expected \(192, 2048, 1, 1\), got \(190,"
    with pytest.raises(MetricWeightsError, match=expected):
        PerceptualMetrics.from_config(fid=tmp_path / "inception.safetensors")


def test_weights_of_another_network_are_refused(fvd_file, tmp_path):
    state = read_weights(fvd_file)
    state["fc.weight"] = state.pop("logits.conv3d.weight")
    torch.save(state, tmp_path / "i3d.pth")
    with pytest.raises(
        MetricWeightsError,
        match=r"missing keys: logits\.conv3d\.weight.*"
        r"unexpected keys: fc\.weight",
    ):
        PerceptualMetrics.from_config(fvd=tmp_path / "i3d.pth")
    with pytest.raises(MetricWeightsError, match="not the FID Inception-v3"):
        PerceptualMetrics.from_config(fid=fvd_file)


def test_unreadable_or_absent_weights_are_typed_errors(tmp_path):
    torch.save({"when": datetime.date(2020, 1, 1)}, tmp_path / "pickled.pth")
    with pytest.raises(MetricWeightsError, match=r"weights_only=True"):
        PerceptualMetrics.from_config(lpips=tmp_path / "pickled.pth")
    torch.save({"step": 3}, tmp_path / "not_tensors.pt")
    with pytest.raises(MetricWeightsError, match="not a state dict of name -> tensor"):
        PerceptualMetrics.from_config(lpips=tmp_path / "not_tensors.pt")
    with pytest.raises(MetricWeightsNotFoundError, match="No metric weights at"):
        PerceptualMetrics.from_config(fid=tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MetricWeightsNotFoundError, match="holds no weights file"):
        PerceptualMetrics.from_config(fvd=tmp_path / "empty")


def test_bad_clips_are_typed_errors():
    metrics = PerceptualMetrics.from_config()
    clip = smooth_clip(10, frames=2, size=16)
    with pytest.raises(MetricInputError, match=r"generated\[0\] must be a \(T, H, W, 3\) uint8"):
        metrics.compute([clip.astype(np.float32)], [clip])
    with pytest.raises(MetricInputError, match="same number of clips"):
        metrics.compute([clip, clip], [clip])
    with pytest.raises(MetricInputError, match=r"Clip 0: the generated clip has shape"):
        metrics.compute([clip[:1]], [clip])
    with pytest.raises(MetricInputError, match="one \\(T, H, W\\) bool mask per clip"):
        metrics.compute([clip], [clip], static_masks=[np.ones((2, 16, 16), np.uint8)])
