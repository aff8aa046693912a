"""Optimizer, learning-rate schedule and exponential moving average of the weights.

AdamW with linear warm-up then cosine decay (``diffusers.optimization.get_scheduler``, the
schedule finetrainers and diffusers' training scripts use), and an EMA of the trained weights
that sampling uses (SWM and Self-Forcing sample from EMA weights).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from diffusers.optimization import get_scheduler
from torch import nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict

__all__ = ["EMA", "make_optimizer", "make_scheduler"]


def make_optimizer(
    params: Iterable[nn.Parameter],
    lr: float,
    *,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.01,
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over the parameters that require gradients."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters (every one is frozen)")
    return torch.optim.AdamW(trainable, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)


def make_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, kind: str = "cosine"
) -> torch.optim.lr_scheduler.LRScheduler:
    """Warm-up then ``kind`` (``cosine``, ``linear``, ``constant_with_warmup``) decay."""
    return get_scheduler(
        kind, optimizer, num_warmup_steps=int(warmup_steps), num_training_steps=int(total_steps)
    )


class EMA:
    """Exponential moving average of a module's full weights: ``ema = d * ema + (1 - d) * w``.

    Kept on the module's device as plain (full) tensors; under FSDP each rank averages its own
    shard (the state dict of a sharded module holds DTensors, which ``lerp_`` handles locally).

    Args:
        module: The trained module (wrapped or not).
        decay: ``d``; 0 copies the weights every step.
        warmup: Use ``min(decay, (1 + n) / (10 + n))`` at update ``n`` (the usual EMA warm-up),
            so early averages are not dominated by the random initial weights.
    """

    def __init__(self, module: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.updates = 0
        self.shadow = {
            k: v.detach().clone().float()
            for k, v in get_model_state_dict(module).items()
            if v.is_floating_point()
        }

    def current_decay(self) -> float:
        """The decay of the next update."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Average ``module``'s current weights in."""
        d = self.current_decay()
        state = get_model_state_dict(module)
        for name, avg in self.shadow.items():
            avg.lerp_(state[name].detach().float(), 1.0 - d)
        self.updates += 1

    def full_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The EMA weights as a full CPU state dict (a collective under FSDP)."""
        from torch.distributed.tensor import DTensor

        out = {}
        for name, avg in self.shadow.items():
            out[name] = (avg.full_tensor() if isinstance(avg, DTensor) else avg).cpu()
        return out

    def load(self, state: Mapping[str, torch.Tensor], updates: int) -> None:
        """Restore averages saved by :meth:`full_state` (copied into the local shards)."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        for name, avg in self.shadow.items():
            src = state[name].float()
            if isinstance(avg, DTensor):
                src = distribute_tensor(src, avg.device_mesh, avg.placements)
                avg.to_local().copy_(src.to_local())
            else:
                avg.copy_(src)
        self.updates = int(updates)
