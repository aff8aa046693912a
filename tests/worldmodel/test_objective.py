"""The flow-matching objective: its target is what the sampler integrates; tiny models learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from cityenv.errors import UnknownNameError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose, Trajectory
from cityenv.worldmodel.base import ChunkReferences
from cityenv.worldmodel.diffusion import DiffusionWorldModel
from cityenv.worldmodel.objective import flow_matching_loss, sample_drops, sample_timestep
from cityenv.worldmodel.referencing import ReferenceView

CAMERA = PinholeCamera.from_fov(32, 32, 90.0)


def test_the_velocity_target_is_what_the_scheduler_integrates() -> None:
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 4, 2, 4, 4, generator=g), torch.randn(1, 4, 2, 4, 4, generator=g)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(4)
    sigmas = scheduler.sigmas
    x = (1 - sigmas[0]) * x0 + sigmas[0] * noise
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(noise - x0, t, x, return_dict=False)[0]
        expected = (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * noise
        torch.testing.assert_close(x, expected)
    torch.testing.assert_close(x, x0)  # the exact velocity reaches the clean latents


def test_drops_are_independent_with_their_rates() -> None:
    g = torch.Generator().manual_seed(0)
    assert sample_drops({}, g) == ()
    assert sample_drops({"text": 1.0, "references": 1.0, "warp": 1.0}, g) == (
        "text",
        "references",
        "warp",
    )
    draws = [sample_drops({"text": 0.3, "references": 0.3, "warp": 0.3}, g) for _ in range(4000)]
    for c in ("text", "references", "warp"):
        assert abs(np.mean([c in d for d in draws]) - 0.3) < 0.03
    both = np.mean([("text" in d) and ("references" in d) for d in draws])
    assert abs(both - 0.09) < 0.02  # independent, not tied together
    with pytest.raises(UnknownNameError, match="drop rates may name"):
        sample_drops({"txt": 0.1}, g)


def test_sample_timestep_follows_the_shift() -> None:
    g = torch.Generator().manual_seed(0)
    plain = np.array([sample_timestep(g) for _ in range(2000)])
    shifted = np.array([sample_timestep(g, shift=3.0) for _ in range(2000)])
    assert plain.min() >= 0 and plain.max() < 1000 and abs(plain.mean() - 500) < 30
    assert shifted.mean() > plain.mean() + 100  # a shift > 1 spends more steps at high noise


def _chunk_sequence(model: DiffusionWorldModel):
    start = Pose.from_heading([0.0, 0.0, 1.6], 0.0)
    rng = np.random.default_rng(0)
    depth = np.full((32, 32), 8.0, np.float32)
    views = [
        ReferenceView(
            i,
            rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
            depth,
            CAMERA,
            Pose.from_heading([0.0, 4.0 * i, 1.6], 0.0),
            "t0",
        )
        for i in range(2)
    ]
    refs = ChunkReferences(views, np.zeros(4, np.int64), views[1])
    model.reset(
        pose=start,
        camera=CAMERA,
        references=ChunkReferences(views, [0], views[1]),
        prompt="a flooded street",
    )
    trajectory = Trajectory.from_poses(
        [Pose.from_heading([0.0, 0.5 * (i + 1), 1.6], 0.0) for i in range(4)], fps=10.0
    )
    with torch.no_grad():
        return model.condition(trajectory, refs)


def test_a_tiny_model_learns_a_chunk_through_every_condition() -> None:
    model = DiffusionWorldModel.from_preset("tiny", device="cpu")
    seq = _chunk_sequence(model)
    dit, settings = model.transformer.train(), model.settings
    g = torch.Generator().manual_seed(0)
    targets = torch.randn(1, 4, 1, 4, 4, generator=g)
    probe = [(t, torch.randn(1, 4, 1, 4, 4, generator=g)) for t in (200.0, 500.0, 800.0)]

    def probe_loss() -> float:
        with torch.no_grad():
            return sum(
                flow_matching_loss(dit, seq, targets, timestep=t, noise=n, settings=settings).item()
                for t, n in probe
            )

    before = probe_loss()
    optimizer = torch.optim.AdamW(dit.parameters(), lr=3e-3)
    for step in range(60):
        drops = sample_drops({"text": 0.1, "references": 0.1, "warp": 0.1}, g) if step else ()
        loss = flow_matching_loss(
            dit,
            seq.drop(drops),
            targets,
            timestep=sample_timestep(g, shift=3.0),
            noise=torch.randn(targets.shape, generator=g),
            settings=settings,
        )
        optimizer.zero_grad()
        loss.backward()
        if step == 0:  # every new input path gets gradient, the zero-initialised rays too
            assert dit.plucker_embedding.weight.grad.abs().sum() > 0
            assert dit.patch_embedding.weight.grad[:, 4:].abs().sum() > 0  # warp + mask
            assert dit.condition_embedder.text_embedder.linear_1.weight.grad.abs().sum() > 0
        optimizer.step()
    after = probe_loss()
    print(f"probe loss {before:.3f} -> {after:.3f}")
    assert after < 0.6 * before


def test_clean_keyframe_latents_stay_clean_and_out_of_the_loss() -> None:
    model = DiffusionWorldModel.from_preset("tiny", device="cpu")
    seq = _chunk_sequence(model)
    g = torch.Generator().manual_seed(0)
    targets = torch.randn(1, 4, 1, 4, 4, generator=g)
    noise = torch.randn(1, 4, 1, 4, 4, generator=g)
    seen = []
    model.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["hidden_states"].clone()), with_kwargs=True
    )
    seq.clean_targets = torch.tensor([True])  # the only target is a keyframe
    loss = flow_matching_loss(
        model.transformer, seq, targets, timestep=700.0, noise=noise, settings=model.settings
    )
    target = seen[-1][:, :, seq.layout.target_slice]
    torch.testing.assert_close(target, targets)  # fed clean, not noised
    assert loss.item() == 0.0  # nothing left to learn
    seq.clean_targets = torch.tensor([False])
    loss = flow_matching_loss(
        model.transformer, seq, targets, timestep=700.0, noise=noise, settings=model.settings
    )
    noised = seen[-1][:, :, seq.layout.target_slice]
    assert loss.item() > 0 and not torch.allclose(noised, targets)
