"""VideoVAE and StreamingDecoder on a tiny random-weight Wan VAE (CPU, seeded)."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import load_file

from cityenv.errors import CheckpointError, ConfigError, ShapeMismatchError, UnknownNameError
from cityenv.worldmodel import vae as vae_module
from cityenv.worldmodel.vae import StreamingDecoder, VideoVAE

TINY = dict(
    base_dim=8,
    z_dim=4,
    dim_mult=[1, 2, 2, 2],
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    latents_mean=[0.1, -0.2, 0.3, 0.0],  # not the identity, so that normalisation is exercised
    latents_std=[1.0, 2.0, 0.5, 1.5],
)


def make_vae(seed: int = 0) -> VideoVAE:
    torch.manual_seed(seed)
    return VideoVAE.from_config(TINY)


def video(b: int, t: int, h: int = 16, w: int = 24, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def vae() -> VideoVAE:
    return make_vae()


def test_sizes_come_from_the_config(vae):
    assert (vae.temporal_ratio, vae.spatial_ratio, vae.latent_channels) == (4, 8, 4)
    assert sum(p.numel() for p in vae.vae.parameters()) < 300_000
    assert not any(p.requires_grad for p in vae.vae.parameters())
    assert not vae.vae.training
    other = VideoVAE.from_config(
        {**TINY, "dim_mult": [1, 2, 2], "temperal_downsample": [False, True]}
    )
    assert (other.temporal_ratio, other.spatial_ratio) == (2, 4)
    assert other.encode(video(1, 5, 8, 8)).shape == (1, 4, 3, 2, 2)


def test_shapes(vae):
    with torch.no_grad():
        z = vae.encode(video(2, 9))
        assert z.shape == (2, 4, 3, 2, 3)
        assert vae.encode_chunk(video(2, 8)).shape == (2, 4, 2, 2, 3)
        x = vae.decode(z)
    assert x.shape == (2, 3, 9, 16, 24)
    assert x.dtype == torch.float32
    assert float(x.abs().max()) <= 1.0
    assert vae.output_frames(3) == 9 and vae.output_frames(3, first=False) == 12


def test_encode_is_the_normalised_posterior_mode(vae):
    x = video(1, 5)
    with torch.no_grad():
        z = vae.encode(x)
        mode = vae.vae.encode(x).latent_dist.mode()
        mean = torch.tensor(TINY["latents_mean"]).view(1, 4, 1, 1, 1)
        std = torch.tensor(TINY["latents_std"]).view(1, 4, 1, 1, 1)
        torch.testing.assert_close(z, (mode - mean) / std, atol=1e-6, rtol=0)
        torch.testing.assert_close(z, vae.encode(x), atol=0, rtol=0)  # deterministic
        torch.testing.assert_close(vae.denormalise(z), mode, atol=1e-6, rtol=1e-6)
        # decode = diffusers' decode of the denormalised latents
        torch.testing.assert_close(vae.decode(z), vae.vae.decode(mode).sample, atol=1e-5, rtol=0)


def test_encode_chunk_prepends_its_first_frame(vae):
    chunk = video(1, 8)
    with torch.no_grad():
        got = vae.encode_chunk(chunk)
        want = vae.encode(torch.cat([chunk[:, :, :1], chunk], dim=2))[:, :, 1:]
    assert torch.equal(got, want)


@pytest.mark.parametrize("splits", [[1, 2, 2], [2, 3], [1, 1, 1, 1, 1], [5]])
def test_streaming_decode_equals_one_shot(vae, splits):
    z = torch.randn(2, 4, 5, 2, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = vae.decode(z)
        dec = vae.streaming_decoder()
        parts = [dec.decode(c) for c in torch.split(z, splits, dim=2)]
    assert [p.shape[2] for p in parts] == [1 + 4 * (splits[0] - 1)] + [4 * f for f in splits[1:]]
    assert dec.num_latents == 5
    torch.testing.assert_close(torch.cat(parts, dim=2), whole, atol=1e-5, rtol=0)


def test_streaming_decoders_are_independent_and_reset(vae):
    z1 = torch.randn(1, 4, 3, 2, 2, generator=torch.Generator().manual_seed(4))
    z2 = torch.randn(1, 4, 3, 2, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, b = vae.streaming_decoder(), vae.streaming_decoder()
        assert isinstance(a, StreamingDecoder)
        out_a = [a.decode(z1[:, :, :1])]
        out_b = [b.decode(z2[:, :, :2])]  # interleaved with a: each keeps its own cache
        out_a.append(a.decode(z1[:, :, 1:]))
        out_b.append(b.decode(z2[:, :, 2:]))
        torch.testing.assert_close(torch.cat(out_a, 2), vae.decode(z1), atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.cat(out_b, 2), vae.decode(z2), atol=1e-5, rtol=0)
        a.reset()
        assert a.num_latents == 0
        torch.testing.assert_close(a.decode(z2), vae.decode(z2), atol=1e-5, rtol=0)


def test_streaming_refuses_a_different_stream_until_reset(vae):
    dec = vae.streaming_decoder()
    with torch.no_grad():
        dec.decode(torch.zeros(1, 4, 1, 2, 2))
        with pytest.raises(ShapeMismatchError, match=r"\(1, 2, 2\), got \(1, 3, 3\); call reset"):
            dec.decode(torch.zeros(1, 4, 1, 3, 3))
        dec.reset()
        assert dec.decode(torch.zeros(1, 4, 1, 3, 3)).shape == (1, 3, 1, 24, 24)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (video(1, 8), r"T = 1 \+ 4n.*got T = 8; use T = 5 or 9"),
        (video(1, 5, 12, 16), r"multiples of 8, got B = 1, H = 12, W = 16"),
        (torch.zeros(1, 4, 5, 16, 16), r"\(B, 3, T, H, W\).*got shape \(1, 4, 5, 16, 16\)"),
        (torch.zeros(5, 16, 16, 3), r"got shape \(5, 16, 16, 3\); video is channels-first"),
        (torch.zeros(1, 3, 5, 16, 16, dtype=torch.uint8), r"got dtype torch.uint8.*127.5"),
        (video(1, 5) * 127.5 + 127.5, r"got values in \[.*\]; map \[0, 255\]"),
        (torch.full((1, 3, 5, 8, 8), float("nan")), r"NaN"),
    ],
)
def test_encode_errors(vae, x, match):
    with pytest.raises(ShapeMismatchError, match=match):
        vae.encode(x)


def test_encode_chunk_errors(vae):
    with pytest.raises(ShapeMismatchError, match=r"T = 4n with n >= 1.*got T = 9; use T = 8 or 12"):
        vae.encode_chunk(video(1, 9))
    with pytest.raises(ShapeMismatchError, match=r"got T = 1; use T = 4 or 8"):
        vae.encode_chunk(video(1, 1))


@pytest.mark.parametrize(
    ("z", "match"),
    [
        (torch.zeros(1, 3, 2, 2, 2), r"expected \(B, 4, F, h, w\).*z_dim = 4"),
        (torch.zeros(4, 2, 2, 2), r"got shape \(4, 2, 2, 2\)"),
        (torch.zeros(1, 4, 0, 2, 2), r"F >= 1, got shape"),
        (torch.zeros(1, 4, 1, 2, 2, dtype=torch.int64), r"got dtype torch.int64"),
        (torch.full((1, 4, 1, 2, 2), float("inf")), r"NaN or infinite"),
    ],
)
def test_decode_errors(vae, z, match):
    with pytest.raises(ShapeMismatchError, match=match):
        vae.decode(z)


def test_from_config_rejects_unknown_keys():
    with pytest.raises(UnknownNameError, match=r"got 'base_dimm'\. Did you mean 'base_dim'\?"):
        VideoVAE.from_config({**TINY, "base_dimm": 8})
    with pytest.raises(TypeError, match="wraps a diffusers AutoencoderKLWan"):
        VideoVAE(torch.nn.Linear(2, 2))


def test_from_pretrained_round_trip(vae, tmp_path):
    vae.save_pretrained(tmp_path / "vae")
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    x = video(1, 5)
    with torch.no_grad():
        z = vae.encode(x)
        for folder in (tmp_path / "vae", tmp_path):  # the folder itself, or a pipeline folder
            loaded = VideoVAE.from_pretrained(folder)
            assert torch.equal(loaded.encode(x), z)
            assert torch.equal(loaded.decode(z), vae.decode(z))
    assert VideoVAE.from_pretrained(tmp_path, torch_dtype=torch.float64).dtype == torch.float64


def test_from_pretrained_refuses_pickled_weights(vae, tmp_path):
    vae.save_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), tmp_path / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(CheckpointError, match=r"only pickled weights \(diffusion_pytorch_model"):
        VideoVAE.from_pretrained(tmp_path)
    (tmp_path / "diffusion_pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match=r"has no \*\.safetensors weights"):
        VideoVAE.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        VideoVAE.from_pretrained(tmp_path / "missing")
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="has no config.json"):
        VideoVAE.from_pretrained(tmp_path)


def test_wraps_a_given_model():
    torch.manual_seed(0)
    raw = AutoencoderKLWan(**TINY)
    wrapped = VideoVAE(raw)
    assert wrapped.vae is raw and wrapped.latent_channels == 4


@pytest.mark.parametrize("tap_sum_pixels", [0, 10**9], ids=["per-tap", "stacked"])
def test_cpu_kernels_equal_diffusers_and_keep_gradients(tap_sum_pixels, monkeypatch):
    """The fast CPU convolutions and norms give diffusers' own results (encode, decode and
    gradients), with the same state-dict keys; both forms of the causal convolution (one
    convolution per time tap on large frames, one over the stacked taps on small ones)."""
    monkeypatch.setattr(vae_module, "_TAP_SUM_PIXELS", tap_sum_pixels)
    fast = make_vae(3)
    torch.manual_seed(3)
    reference = AutoencoderKLWan.from_config(TINY)  # diffusers' modules, untouched
    assert fast.vae.state_dict().keys() == reference.state_dict().keys()
    assert any(type(m).__name__ == "_CPUCausalConv3d" for m in fast.vae.modules())
    x = video(2, 9)
    with torch.no_grad():
        mu = reference.encode(x).latent_dist.mean
        mean, std = fast._mean.float(), fast._std.float()
        torch.testing.assert_close(fast.encode(x), (mu - mean) / std, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            fast.vae.decode(mu).sample, reference.decode(mu).sample, rtol=1e-4, atol=1e-5
        )
    fast.vae.requires_grad_(True)
    for model in (fast.vae, reference):
        model.zero_grad()
        model.decode(mu).sample.square().mean().backward()
    for (name, a), b in zip(fast.vae.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-6, msg=name)


def test_replace_decoder_keeps_the_latents_and_narrows_the_decoder():
    vae = make_vae(4)
    x = video(1, 5)
    with torch.no_grad():
        before = vae.encode(x)
        vae.replace_decoder(2)
        torch.testing.assert_close(vae.encode(x), before)
        assert vae.vae.config.decoder_base_dim == 2
        out = vae.decode(before)
        stream = vae.streaming_decoder()
        streamed = torch.cat([stream.decode(before[:, :, :1]), stream.decode(before[:, :, 1:])], 2)
    assert out.shape == x.shape
    torch.testing.assert_close(streamed, out, rtol=1e-3, atol=1e-4)
    assert not any(p.requires_grad for p in vae.vae.parameters())
    with pytest.raises(ConfigError, match="positive integer"):
        vae.replace_decoder(0)
