"""The flow-matching sampler of the diffusion world model, with classifier-free guidance.

:func:`denoise` integrates the transformer's velocity with diffusers'
``FlowMatchEulerDiscreteScheduler`` from noise to clean target latents of one chunk. With a
guidance scale above 1, every step also runs the unconditional branch (the sequence without the
conditions ``settings.guidance_drop`` names) and combines the two (:func:`guide`). Targets marked
clean (freeze-frame keyframes) are put back after every step.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from cityenv.worldmodel.conditioning import ChunkSequence
from cityenv.worldmodel.dit import CityDiT
from cityenv.worldmodel.settings import SamplingSettings

__all__ = ["denoise", "guide", "initial_noise", "velocity", "with_shift"]


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
    out = transformer(**sequence.inputs(latents, t, settings), return_dict=False)[0]
    return out[:, :, sequence.layout.target_slice]


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
        v = velocity(transformer, sequence, latents, t, settings)
        if uncond is not None:
            base = velocity(transformer, uncond, latents, t, settings)
            v = guide(v, base, settings.guidance_scale)
        latents = scheduler.step(v, t, latents, return_dict=False)[0]
        if clean is not None:
            latents[:, :, targets] = clean
    return latents
