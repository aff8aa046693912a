"""The flow-matching sampler of the diffusion world model, with classifier-free guidance.

:func:`denoise` integrates the transformer's velocity with diffusers'
``FlowMatchEulerDiscreteScheduler`` from noise to clean target latents of one chunk. With a
guidance scale above 1, every step also runs the unconditional branch (the sequence without the
conditions ``settings.guidance_drop`` names) and combines the two (:func:`guide`); when the
branches have the same shapes (a text-only drop) they run as one batch (:func:`velocities`).
Targets marked clean (freeze-frame keyframes) are put back after every step.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from cityenv.worldmodel.conditioning import ChunkSequence
from cityenv.worldmodel.dit import CityDiT
from cityenv.worldmodel.settings import SamplingSettings

__all__ = ["denoise", "guide", "initial_noise", "velocities", "velocity", "with_shift"]


def with_shift(
    scheduler: FlowMatchEulerDiscreteScheduler, shift: float | None
) -> FlowMatchEulerDiscreteScheduler:
    """``scheduler``, or a copy of its config with ``shift`` (``None`` keeps its own)."""
    if shift is None:
        return scheduler
    return FlowMatchEulerDiscreteScheduler.from_config(scheduler.config, shift=shift)


def initial_noise(
    shape: tuple[int, ...],
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Gaussian noise ``shape`` (e.g. ``(1, z, n, h, w)``), drawn on the CPU from ``generator``
    so a seed gives the same noise on every device."""
    return torch.randn(shape, generator=generator).to(device, dtype)


def velocity(
    transformer: CityDiT,
    sequence: ChunkSequence,
    latents: torch.Tensor,
    t: torch.Tensor | float,
    settings: SamplingSettings,
) -> torch.Tensor:
    """The predicted velocity of the target latents ``(1, z, n, h, w)`` at timestep ``t``."""
    inputs = sequence.inputs(latents, t, settings)
    return _target_velocity(transformer, inputs, sequence.layout.target_slice)


def _target_velocity(
    transformer: CityDiT, inputs: dict[str, torch.Tensor], target: slice
) -> torch.Tensor:
    """The transformer's output on ``inputs`` (:meth:`ChunkSequence.inputs`) at the targets."""
    return transformer(**inputs, return_dict=False)[0][:, :, target]


def velocities(
    transformer: CityDiT,
    sequences: tuple[ChunkSequence, ...],
    latents: torch.Tensor,
    t: torch.Tensor | float,
    settings: SamplingSettings,
) -> list[torch.Tensor]:
    """:func:`velocity` of several sequences of the same target latents (the guidance branches).

    Sequences whose inputs have the same shapes and positions (a branch without text has zero
    text of the same shape) run as one batch, one transformer call instead of one each; others
    run one by one. Same results up to float rounding.
    """
    inputs = [s.inputs(latents, t, settings) for s in sequences]
    first = inputs[0]
    if not all(
        torch.equal(i["positions"], first["positions"])
        and all(i[k].shape == first[k].shape for k in first)
        for i in inputs[1:]
    ):
        return [
            _target_velocity(transformer, i, s.layout.target_slice)
            for s, i in zip(sequences, inputs, strict=True)
        ]
    batch = {
        k: v if k == "positions" else torch.cat([i[k] for i in inputs]) for k, v in first.items()
    }
    target = sequences[0].layout.target_slice
    return list(_target_velocity(transformer, batch, target).split(1))


def guide(conditional: torch.Tensor, unconditional: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``u + scale * (c - u)`` (``scale`` 1 gives ``c``)."""
    return unconditional + scale * (conditional - unconditional)


def denoise(
    transformer: CityDiT,
    scheduler: FlowMatchEulerDiscreteScheduler,
    sequence: ChunkSequence,
    latents: torch.Tensor,
    settings: SamplingSettings,
) -> torch.Tensor:
    """Run the sampler from ``latents`` to clean target latents.

    Args:
        transformer: The denoiser.
        scheduler: The flow-matching scheduler (its timesteps are set here).
        sequence: The chunk's conditions (``clean_targets``: latents kept as given).
        latents: ``(1, z, n, h, w)``: noise, clean where ``sequence.clean_targets``.
        settings: ``num_inference_steps``, ``guidance_scale``, ``guidance_drop`` and the layout.

    Returns:
        The denoised latents ``(1, z, n, h, w)``.
    """
    targets = sequence.clean_targets
    clean = None if targets is None else latents[:, :, targets].clone()
    uncond = None
    if settings.guidance_scale != 1.0:
        uncond = sequence.drop(settings.guidance_drop)
    scheduler.set_timesteps(settings.num_inference_steps, device=latents.device)
    for t in scheduler.timesteps:
        if uncond is None:
            v = velocity(transformer, sequence, latents, t, settings)
        else:
            v, base = velocities(transformer, (sequence, uncond), latents, t, settings)
            v = guide(v, base, settings.guidance_scale)
        latents = scheduler.step(v, t, latents, return_dict=False)[0]
        if clean is not None:
            latents[:, :, targets] = clean
    return latents
