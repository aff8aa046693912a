"""The freeze-frame plan: layout numbers, errors, and a repeated keyframe through the tiny VAE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cityenv.errors import ShapeMismatchError
from cityenv.worldmodel.freeze import FreezeFramePlan, plan_freeze_frames
from cityenv.worldmodel.presets import load_preset
from cityenv.worldmodel.vae import VideoVAE

TINY = load_preset("tiny")["vae"]  # the tests' VAE: configs/worldmodel/tiny.yaml


def test_hand_worked_plan():
    # latents: 0 = key 0 (frame 0) | 1 = frames 1-4 | 2 = key 1 x4 | 3 = frames 6-9 | 4 = key 2 x4
    # | 5 = frames 11-14
    plan = plan_freeze_frames([0, 5, 10], 15, temporal_ratio=4)
    assert isinstance(plan, FreezeFramePlan)
    assert plan.num_frames == 15 and plan.num_keyframes == 3
    assert plan.key_times.tolist() == [0, 5, 10]
    assert plan.key_latents.tolist() == [0, 2, 4]
    assert plan.num_latents == 6
    assert plan.expanded_length == 21 == 1 + 4 * (plan.num_latents - 1)
    keep = [1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1]
    assert plan.keep.astype(int).tolist() == keep
    assert plan.keep.sum() == 15
    times = [0, 1, 2, 3, 4, 5, 5, 5, 5, 6, 7, 8, 9, 10, 10, 10, 10, 11, 12, 13, 14]
    assert plan.expanded_times.tolist() == times
    assert plan.clean_latents.tolist() == [True, False, True, False, True, False]


@pytest.mark.parametrize(
    ("key_times", "num_frames", "ratio", "key_latents", "num_latents", "keep"),
    [
        ([0], 9, 4, [0], 3, [1] * 9),  # no frozen keyframe: an ordinary 1 + 4n video
        ([0], 1, 4, [0], 1, [1]),
        ([0, 1], 2, 4, [0, 1], 2, [1, 0, 0, 0, 1]),  # keyframes back to back
        ([0, 1, 2], 7, 4, [0, 1, 2], 4, [1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1, 1]),
        ([0, 3], 6, 2, [0, 2], 4, [1, 1, 1, 0, 1, 1, 1]),  # a VAE with 2x temporal compression
    ],
)
def test_more_plans(key_times, num_frames, ratio, key_latents, num_latents, keep):
    plan = plan_freeze_frames(key_times, num_frames, temporal_ratio=ratio)
    assert plan.key_latents.tolist() == key_latents
    assert plan.num_latents == num_latents
    assert plan.expanded_length == 1 + ratio * (num_latents - 1) == len(keep)
    assert plan.keep.astype(int).tolist() == keep


@pytest.mark.parametrize(
    ("key_times", "num_frames", "match"),
    [
        ([0, 4], 9, r"keyframe 1 at t = 4 leaves 3 generated frames .* put it at t = 1 or t = 5"),
        ([0, 5, 11], 15, r"keyframe 2 at t = 11 leaves 5 .* put it at t = 10 or t = 14"),
        ([0, 5], 11, r"T = 11 leaves 5 generated frames after .* use num_frames 10 or 14"),
        ([0], 8, r"T = 8 leaves 7 generated frames .* use num_frames 5 or 9"),
        ([1, 5], 10, r"first keyframe at t = 0 .* got 1; prepend 0"),
        ([0, 5, 5], 10, r"strictly increasing times, got \[0, 5, 5\]"),
        ([0, 5], 5, r"expected times in \[0, 5\) \(num_frames = 5\), got 5"),
        ([], 5, r"non-empty 1-D sequence of integer frame indices"),
        ([0, 4.5], 9, r"integer frame indices"),
        ([[0, 5]], 10, r"1-D sequence"),
        ([0], 0, r"num_frames: expected a positive integer T, got 0"),
        ([0], 5.0, r"positive integer T, got 5.0"),
    ],
)
def test_bad_key_times(key_times, num_frames, match):
    with pytest.raises(ShapeMismatchError, match=match):
        plan_freeze_frames(key_times, num_frames, temporal_ratio=4)


def test_expand_and_drop_duplicates():
    plan = plan_freeze_frames([0, 5, 10], 15, temporal_ratio=4)
    keys = (100 + torch.arange(3.0)).view(1, 1, 3, 1, 1).expand(2, 3, 3, 4, 4)
    fill = torch.arange(15.0).view(1, 1, 15, 1, 1).expand(2, 3, 15, 4, 4)
    expanded = plan.expand(keys, fill)
    assert expanded.shape == (2, 3, 21, 4, 4)
    want = [100, 1, 2, 3, 4] + [101] * 4 + [6, 7, 8, 9] + [102] * 4 + [11, 12, 13, 14]
    assert expanded[0, 0, :, 0, 0].tolist() == want
    out = plan.drop_duplicates(expanded)
    assert out.shape == (2, 3, 15, 4, 4)
    assert out[1, 2, :, 3, 3].tolist() == [100, 1, 2, 3, 4, 101, 6, 7, 8, 9, 102, 11, 12, 13, 14]
    zeros = plan.expand(keys)  # no fill: zeros at the generated frames
    assert zeros[0, 0, :, 0, 0].tolist() == [w if w >= 100 else 0 for w in want]


def test_expand_and_drop_errors():
    plan = plan_freeze_frames([0, 5], 10, temporal_ratio=4)
    with pytest.raises(ShapeMismatchError, match=r"keyframes: expected a \(B, C, 2, H, W\) .*got"):
        plan.expand(torch.zeros(1, 3, 3, 8, 8))
    with pytest.raises(ShapeMismatchError, match=r"fill: expected shape \(1, 3, 10, 8, 8\)"):
        plan.expand(torch.zeros(1, 3, 2, 8, 8), torch.zeros(1, 3, 13, 8, 8))
    with pytest.raises(ShapeMismatchError, match=r"video: expected \(B, C, 13, H, W\)"):
        plan.drop_duplicates(torch.zeros(1, 3, 10, 8, 8))


def test_repeated_keyframe_is_one_latent_and_decodes_at_its_time():
    torch.manual_seed(0)
    vae = VideoVAE.from_config(TINY)
    # latents: key 0 | frames 1-4 | key 1 x4 | frames 6-9 (the ratio read from the VAE's config)
    plan = plan_freeze_frames([0, 5], 10, temporal_ratio=vae.temporal_ratio)
    g = torch.Generator().manual_seed(1)
    keys = torch.rand(1, 3, 2, 16, 16, generator=g) * 2 - 1
    fill = torch.rand(1, 3, 10, 16, 16, generator=g) * 2 - 1
    changed = keys.clone()
    changed[:, :, 1] = -changed[:, :, 1]
    with torch.no_grad():
        z = vae.encode(plan.expand(keys, fill))
        z2 = vae.encode(plan.expand(changed, fill))
        assert z.shape[2] == plan.num_latents == 4
        key = int(plan.key_latents[1])
        assert key == 2
        # causal: the latents before the keyframe's are bit-identical, the keyframe's changes
        assert torch.equal(z[:, :, :key], z2[:, :, :key])
        assert not torch.allclose(z[:, :, key], z2[:, :, key], atol=1e-4)
        out = plan.drop_duplicates(vae.decode(z))
        out2 = plan.drop_duplicates(vae.decode(z2))
    assert out.shape == out2.shape == (1, 3, 10, 16, 16)
    assert torch.equal(out[:, :, :5], out2[:, :, :5])  # frames before the key time unchanged
    assert not torch.allclose(out[:, :, 5], out2[:, :, 5], atol=1e-4)  # the key-time frame changed
    assert np.array_equal(np.flatnonzero(~plan.keep), [5, 6, 7])  # duplicates 1-3 of the group
