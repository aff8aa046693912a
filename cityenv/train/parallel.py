"""The parallel backend: one process or many under ``torchrun``, DDP or FSDP2, behind one object.

``python -m cityenv.train`` runs as one process; ``torchrun --nproc_per_node=N -m cityenv.train``
runs N. torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` (for several nodes through its rendezvous: ``--nnodes``, ``--rdzv-endpoint``);
:meth:`ParallelBackend.from_environment` reads them, opens the process group (NCCL on CUDA, gloo
on CPU) and chooses the device. :meth:`ParallelBackend.wrap` applies the data-parallel strategy
with PyTorch's own engines: :class:`torch.nn.parallel.DistributedDataParallel` (``ddp``) or
:func:`torch.distributed.fsdp.fully_shard` (``fsdp``: FSDP2, each transformer block sharded, then
the root), after finetrainers' ``parallel/ptd.py``. Rank 0 is the only rank that writes files.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from cityenv.errors import check_name

__all__ = ["STRATEGIES", "ParallelBackend"]

log = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp")
"""Data-parallel strategies: ``ddp`` (replicated weights) or ``fsdp`` (sharded, FSDP2)."""


@dataclass
class ParallelBackend:
    """Where this process sits in the run and how it talks to the others.

    Attributes:
        rank: Global rank in ``[0, world_size)``.
        local_rank: Rank on this node (selects the GPU).
        world_size: Number of processes.
        device: The device this process computes on.
        strategy: ``ddp`` or ``fsdp``.
        initialized_here: The process group was opened by this object (and is closed by
            :meth:`close`).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    strategy: str = "ddp"
    initialized_here: bool = False

    @classmethod
    def from_environment(
        cls, strategy: str = "ddp", device: str | None = None, timeout_s: float = 600.0
    ) -> ParallelBackend:
        """The backend of this process: torchrun's variables, else a single process.

        Args:
            strategy: ``ddp`` or ``fsdp``.
            device: ``cpu``, ``cuda`` or ``None`` (CUDA when available).
            timeout_s: Collective timeout (a rank that hangs longer fails the run).

        Raises:
            UnknownNameError: For an unknown strategy.
        """
        strategy = check_name("parallel.strategy", strategy, STRATEGIES)
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
        if use_cuda:
            torch.cuda.set_device(local_rank)
            dev = torch.device("cuda", local_rank)
        else:
            dev = torch.device("cpu")
        opened = False
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group(
                backend="nccl" if use_cuda else "gloo",
                timeout=datetime.timedelta(seconds=timeout_s),
                device_id=dev if use_cuda else None,
            )
            opened = True
        return cls(rank, local_rank, world_size, dev, strategy, opened)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes configs, logs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    def wrap(self, model: nn.Module, blocks: Iterable[nn.Module] = ()) -> nn.Module:
        """``model`` on this backend's device, data-parallel across the processes.

        Args:
            model: The module to train (its parameters are moved to :attr:`device`).
            blocks: Sub-modules sharded one by one under ``fsdp`` (the transformer blocks), so
                only one block's full weights are materialised at a time.

        Returns:
            The wrapped module (``model`` itself for one process under ``ddp``; ``fully_shard``
            changes ``model`` in place and returns it).
        """
        model.to(self.device)
        if not self.distributed:
            return model
        if self.strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for block in blocks:
                fully_shard(block)
            return fully_shard(model)
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[self.local_rank] if self.device.type == "cuda" else None
        )

    def barrier(self) -> None:
        """Wait for every process (no-op alone)."""
        if self.distributed:
            dist.barrier()

    def mean(self, value: float | torch.Tensor) -> float:
        """The mean of a scalar over the processes."""
        t = torch.as_tensor(value, dtype=torch.float64, device=self.device).detach().clone()
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t /= self.world_size
        return float(t)

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is true on any process (every rank gets the same answer)."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank (JSON-like values only)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """Close the process group if this object opened it."""
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()
            self.initialized_here = False
