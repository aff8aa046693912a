"""The training objective of the diffusion world model: rectified flow with condition drops.

A clean chunk ``x0`` (target latents) is mixed with noise at a sampled level ``sigma``:
``x_t = (1 - sigma) * x0 + sigma * noise``; the transformer, given the chunk's sequence
(:class:`~cityenv.worldmodel.conditioning.ChunkSequence`) at timestep ``t = 1000 * sigma``,
predicts the velocity ``noise - x0``, which is what
:class:`diffusers.FlowMatchEulerDiscreteScheduler` integrates at sampling time. Text, references
(with the sink) and the warp are dropped independently per sample (CityRAG drops each geo
condition 10% of the time), so that guidance can remove any of them and a chunk without
references falls back to trajectory-only generation.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from cityenv.errors import UnknownNameError
from cityenv.worldmodel.conditioning import ChunkSequence
from cityenv.worldmodel.dit import CityDiT
from cityenv.worldmodel.settings import CONDITIONS, SamplingSettings

__all__ = ["DEFAULT_DROP_RATES", "flow_matching_loss", "sample_drops", "sample_timestep"]

#: Probability of dropping each condition in a training sample.
DEFAULT_DROP_RATES = {"text": 0.1, "references": 0.1, "warp": 0.1}


def sample_drops(rates: Mapping[str, float], generator: torch.Generator) -> tuple[str, ...]:
    """The conditions one training sample goes without, each drawn independently.

    Args:
        rates: Drop probability per condition (``text``, ``references``, ``warp``).
        generator: Source of randomness.

    Returns:
        The dropped conditions, for :meth:`ChunkSequence.drop`.
    """
    unknown = sorted(set(rates) - set(CONDITIONS))
    if unknown:
        raise UnknownNameError(f"drop rates may name {CONDITIONS}, got {unknown}.")
    draws = torch.rand(len(CONDITIONS), generator=generator)
    return tuple(c for c, u in zip(CONDITIONS, draws.tolist(), strict=True) if u < rates.get(c, 0))


def sample_timestep(generator: torch.Generator, shift: float = 1.0) -> float:
    """A training timestep in ``[0, 1000)``: uniform noise level, shifted like the sampler's.

    ``sigma' = shift * sigma / (1 + (shift - 1) * sigma)`` (the shift of
    ``FlowMatchEulerDiscreteScheduler``), so training sees the noise levels sampling visits.
    """
    sigma = float(torch.rand((), generator=generator))
    return 1000.0 * shift * sigma / (1.0 + (shift - 1.0) * sigma)


def flow_matching_loss(
    transformer: CityDiT,
    sequence: ChunkSequence,
    targets: torch.Tensor,
    *,
    timestep: float,
    noise: torch.Tensor,
    settings: SamplingSettings,
) -> torch.Tensor:
    """Mean squared error of the predicted velocity on the target latents of one chunk.

    Args:
        transformer: The denoiser.
        sequence: The chunk's conditions (after any :func:`sample_drops`).
        targets: Clean target latents ``x0`` ``(1, z, n, h, w)``.
        timestep: ``t`` in ``[0, 1000]`` (``sigma = t / 1000``).
        noise: Gaussian noise shaped like ``targets``.
        settings: RoPE layout settings (history, gap, sink offset, reference stride).

    Targets marked clean (``sequence.clean_targets``: freeze-frame keyframes) stay clean, as they
    do at sampling time (where they sit at t=0), and are left out of the loss.

    Returns:
        A scalar loss.
    """
    sigma = timestep / 1000.0
    noisy = (1.0 - sigma) * targets + sigma * noise
    keep = torch.ones(targets.shape[2], dtype=torch.bool)
    if sequence.clean_targets is not None:
        keep = ~sequence.clean_targets.cpu()
        noisy[:, :, ~keep] = targets[:, :, ~keep]
    out = transformer(**sequence.inputs(noisy, timestep, settings), return_dict=False)[0]
    prediction = out[:, :, sequence.layout.target_slice][:, :, keep]
    if not keep.any():  # only keyframes: nothing to learn (zero, still part of the graph)
        return out.sum() * 0.0
    return F.mse_loss(prediction.float(), (noise - targets)[:, :, keep].float())
