"""Shared tiny parts for the world-model tests."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel

#: A diffusers Wan transformer small enough for CPU tests (2 layers, 2 heads, 4 latent channels).
WAN_TINY = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=32,
    ffn_dim=48,
    num_layers=2,
    rope_max_seq_len=64,
)


@pytest.fixture(scope="module")
def wan() -> WanTransformer3DModel:
    """A seeded tiny Wan transformer (random weights), in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return WanTransformer3DModel(**WAN_TINY).eval()
