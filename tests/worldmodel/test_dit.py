"""CityDiT: the sequence path against diffusers' Wan transformer, RoPE positions, per-token t."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel

from cityenv.errors import ShapeMismatchError
from cityenv.worldmodel.dit import CityDiT, SequenceLayout, sequence_positions


@pytest.fixture(scope="module")
def dit(wan: WanTransformer3DModel) -> CityDiT:
    return CityDiT.from_wan(wan)


def _inputs(frames: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, frames, 8, 8, generator=g), torch.randn(1, 5, 16, generator=g)


@pytest.mark.parametrize("size", [(8, 8), (8, 12)])
def test_stock_positions_equal_the_wan_model(
    wan: WanTransformer3DModel, dit: CityDiT, size: tuple[int, int]
) -> None:
    x, text = _inputs()
    x = torch.randn(1, 4, 4, *size, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([700.0])
    with torch.no_grad():
        expected = wan(x, t, text).sample
        scalar_t = dit(x, t, text, torch.arange(4)).sample
        per_token_t = dit(x, torch.full((1, 4), 700.0), text, torch.arange(4)).sample
    torch.testing.assert_close(scalar_t, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(per_token_t, expected, atol=1e-5, rtol=1e-5)
    # The table gather is Wan's own rotary embedding for 0..F-1.
    cos, sin = dit.rotary_embedding(torch.arange(4), *size)
    wan_cos, wan_sin = wan.rope(x)
    assert torch.equal(cos, wan_cos) and torch.equal(sin, wan_sin)


def test_moving_the_sink_position_changes_the_output(dit: CityDiT) -> None:
    x, text = _inputs()
    layout = SequenceLayout(history=1, target=2, sink=True, references=0)
    near = sequence_positions(layout, max_history=1, gap=50, sink_offset=1, reference_stride=1)
    far = sequence_positions(layout, max_history=1, gap=50, sink_offset=5, reference_stride=1)
    assert near.tolist() == [1, 2, 3, 4] and far.tolist() == [1, 2, 3, 8]
    t = layout.frame_timesteps(500.0)
    with torch.no_grad():
        a = dit(x, t, text, near).sample
        b = dit(x, t, text, far).sample
    assert not torch.allclose(a[:, :, 1:3], b[:, :, 1:3], atol=1e-4)


def test_swm_positions() -> None:
    layout = SequenceLayout(history=5, target=19, sink=True, references=5)
    pos = sequence_positions(layout, max_history=5, gap=50, sink_offset=5, reference_stride=2)
    assert pos[:5].tolist() == [1, 2, 3, 4, 5]
    assert pos[5:24].tolist() == list(range(6, 25))
    assert pos[24].item() == 5 + 19 + 5
    assert pos[25:].tolist() == [5 + 19 + 50 + 2 * k for k in range(5)]
    # fewer history latents than H (episode start): they end at H, targets still start at H+1
    short = SequenceLayout(history=1, target=3, sink=False, references=0)
    assert sequence_positions(
        short, max_history=3, gap=50, sink_offset=5, reference_stride=1
    ).tolist() == [3, 4, 5, 6]


def test_per_token_timesteps_reach_the_tokens(dit: CityDiT) -> None:
    x, text = _inputs()
    pos = torch.arange(4)
    with torch.no_grad():
        a = dit(x, torch.tensor([[0.0, 0.0, 800.0, 800.0]]), text, pos).sample
        b = dit(x, torch.tensor([[0.0, 0.0, 300.0, 800.0]]), text, pos).sample
    assert not torch.allclose(a[:, :, 2], b[:, :, 2], atol=1e-4)


def test_conditions_and_rays_start_at_zero_after_loading_wan(dit: CityDiT) -> None:
    x, text = _inputs()
    cond = torch.randn(1, 5, 4, 8, 8)
    rays = torch.randn(1, 24, 4, 8, 8)
    t = torch.tensor([400.0])
    with torch.no_grad():
        plain = dit(x, t, text, torch.arange(4)).sample
        conditioned = dit(x, t, text, torch.arange(4), conditions=cond, plucker=rays).sample
    torch.testing.assert_close(plain, conditioned)


def test_random_init_uses_conditions_and_rays() -> None:
    torch.manual_seed(0)
    model = CityDiT(
        num_attention_heads=2,
        attention_head_dim=12,
        latent_channels=4,
        text_dim=16,
        freq_dim=32,
        ffn_dim=48,
        num_layers=1,
    ).eval()
    with torch.no_grad():  # the Plücker projection starts at zero: give it weights to see it act
        model.plucker_embedding.weight.normal_()
    x, text = _inputs(2)
    t = torch.tensor([400.0])
    pos = torch.arange(2)
    with torch.no_grad():
        base = model(x, t, text, pos).sample
        warp = model(x, t, text, pos, conditions=torch.ones(1, 5, 2, 8, 8)).sample
        ray = model(x, t, text, pos, plucker=torch.ones(1, 24, 2, 8, 8)).sample
    assert not torch.allclose(base, warp) and not torch.allclose(base, ray)


def test_from_wan_folder_round_trip(tmp_path, wan: WanTransformer3DModel, dit: CityDiT) -> None:
    wan.save_pretrained(tmp_path / "wan" / "transformer")
    loaded = CityDiT.from_wan(tmp_path / "wan")
    tensors = [*loaded.parameters(), *loaded.buffers()]
    assert not any(t.is_meta for t in tensors)  # built on the meta device, every tensor filled
    assert loaded.plucker_embedding.weight.abs().sum() == 0
    local = CityDiT.from_wan(wan)
    before = wan.blocks[0].ffn.net[2].weight.clone()
    with torch.no_grad():  # a model handed in is copied, not shared
        local.blocks[0].ffn.net[2].weight.add_(1.0)
    assert torch.equal(wan.blocks[0].ffn.net[2].weight, before)
    for (name, a), b in zip(dit.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    dit.save_pretrained(tmp_path / "city")
    again = CityDiT.from_pretrained(tmp_path / "city", use_safetensors=True)
    assert again.config.plucker_channels == 24
    assert torch.equal(again.patch_embedding.weight, dit.patch_embedding.weight)


def test_bad_inputs_say_what_was_expected(dit: CityDiT) -> None:
    x, text = _inputs()
    with pytest.raises(ShapeMismatchError, match=r"timestep of shape \(1,\) or \(1, 4\)"):
        dit(x, torch.zeros(1, 3), text, torch.arange(4))
    with pytest.raises(ShapeMismatchError, match=r"RoPE positions .* \[0, 64\)"):
        dit(x, torch.zeros(1), text, torch.tensor([0, 1, 2, 99]))
    with pytest.raises(ShapeMismatchError, match="hidden_states with 4 channels, got 3"):
        dit(x[:, :3], torch.zeros(1), text, torch.arange(4))
    with pytest.raises(FileNotFoundError, match="Wan transformer folder"):
        CityDiT.from_wan("/nonexistent/wan")


def test_from_wan_in_bfloat16_keeps_wans_fp32_modules(tmp_path, wan) -> None:
    wan.save_pretrained(tmp_path / "wan" / "transformer")
    model = CityDiT.from_wan(tmp_path / "wan", torch_dtype=torch.bfloat16)
    assert model.proj_out.weight.dtype == torch.bfloat16
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    for name in ("scale_shift_table", "blocks.0.scale_shift_table"):
        assert model.get_parameter(name).dtype == torch.float32, name
    assert model.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    assert model.rope.freqs_cos.dtype == torch.float32


def test_from_wan_refuses_image_to_video_models() -> None:
    i2v = WanTransformer3DModel(
        num_attention_heads=2, attention_head_dim=12, in_channels=8, out_channels=4,
        text_dim=16, freq_dim=32, ffn_dim=48, num_layers=1,
    )  # fmt: skip
    with pytest.raises(ValueError, match="takes 8 channels for 4 latent ones"):
        CityDiT.from_wan(i2v)
