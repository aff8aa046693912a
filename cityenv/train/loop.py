"""The training loop: one object that runs a :class:`TrainTask` on a parallel backend.

The loop knows nothing of world models. A :class:`TrainTask` says what is trained (its module and
blocks), how a batch becomes a loss, and how the trained weights become the user-facing model
folder; the loop does the rest, the same on one CPU and under ``torchrun`` on many GPUs:

- data: a seeded :class:`ResumableSampler` (PyTorch's ``DistributedSampler`` that can start in the
  middle of an epoch), ``DataLoader`` worker processes; every sample carries its own seed so its
  noise, timestep and condition drops do not depend on which rank or batch it lands in;
- optimisation: gradient accumulation (``no_sync`` between micro-batches under DDP), bf16
  autocast on CUDA, gradient clipping, AdamW, warm-up + cosine, EMA;
- safety: a non-finite loss stops the run with a :class:`NonFiniteLossError` naming the step and
  the batch's sample ids, after a checkpoint of the state before that step;
- files (rank 0): checkpoints every ``checkpoint_every`` steps and at the end (exact resume),
  TensorBoard scalars, a progress bar with loss, steps/s and ETA.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cityenv.errors import CityEnvError
from cityenv.train.checkpoint import CheckpointManager
from cityenv.train.optim import EMA, make_optimizer, make_scheduler
from cityenv.train.parallel import ParallelBackend

__all__ = [
    "LoopSettings",
    "NonFiniteLossError",
    "ResumableSampler",
    "TrainResult",
    "TrainTask",
    "Trainer",
    "list_collate",
    "sample_seed",
]

log = logging.getLogger(__name__)


class NonFiniteLossError(CityEnvError, FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the batch's samples."""


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's randomness in one epoch (independent of rank and batch)."""
    # A fixed odd-multiplier mix (splitmix64-like) keeps nearby indices uncorrelated.
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(epoch) * 0xBF58476D1CE4E5B9 + int(index)) & (
        2**63 - 1
    )
    x ^= x >> 31
    x = (x * 0x94D049BB133111EB) & (2**63 - 1)
    return x ^ (x >> 29)


class TrainTask(Protocol):
    """What the loop trains.

    Attributes:
        module: The module whose parameters are optimised (the part that is trained).
    """

    module: nn.Module

    def blocks(self) -> list[nn.Module]:
        """Sub-modules sharded one by one under FSDP (the transformer blocks)."""
        ...

    def loss(self, module: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        """The mean loss of a batch (``batch["seed"]`` holds each sample's seed)."""
        ...

    def export(
        self, folder: Path, weights: Mapping[str, torch.Tensor], *, step: int | None = None
    ) -> None:
        """Write the user-facing model folder with ``weights`` (the EMA's, or the raw ones)
        after ``step`` optimiser steps (``None``: not known, e.g. a validation pass)."""
        ...


@dataclass
class LoopSettings:
    """How the loop runs (``configs/train.yaml`` documents each field).

    Attributes:
        steps: Optimizer steps in all.
        batch_size: Samples per process per micro-batch.
        grad_accum: Micro-batches per optimizer step.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: Linear warm-up steps.
        schedule: ``cosine``, ``linear`` or ``constant_with_warmup``.
        grad_clip: Clip the gradient's global norm to this (0 = off).
        ema_decay: EMA decay (``None`` = no EMA).
        mixed_precision: bf16 autocast on CUDA (ignored on CPU).
        seed: Seed of the data order and of every sample's randomness.
        num_workers: ``DataLoader`` worker processes.
        checkpoint_every: Steps between checkpoints (and one at the end).
        keep_checkpoints: Complete checkpoints kept.
        log_every: Steps between TensorBoard scalars.
        validate_every: Steps between validation passes (0 = never).
        progress: Show a progress bar (rank 0).
        stop_at: End this run at this step with a checkpoint (``None``: at ``steps``); the
            schedule still spans ``steps``, and a resume continues (time-limited jobs).
    """

    steps: int = 100
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    schedule: str = "cosine"
    grad_clip: float = 1.0
    ema_decay: float | None = 0.999
    mixed_precision: bool = True
    seed: int = 0
    num_workers: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 10
    validate_every: int = 0
    progress: bool = True
    stop_at: int | None = None


@dataclass
class TrainResult:
    """What a finished :meth:`Trainer.fit` returns.

    Attributes:
        step: Optimizer steps done.
        losses: Mean loss of each step done in this call.
        checkpoint: The last checkpoint folder.
        seconds: Wall time of the loop.
    """

    step: int
    losses: list[float] = field(default_factory=list)
    checkpoint: Path | None = None
    seconds: float = 0.0


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` whose order is a function of (seed, epoch) and that can start late.

    ``state_dict()`` / ``load_state_dict()`` give the data position: the epoch and how many of
    this rank's samples of it were consumed.
    """

    def __init__(self, dataset: Dataset, backend: ParallelBackend, seed: int) -> None:
        super().__init__(
            dataset,
            num_replicas=backend.world_size,
            rank=backend.rank,
            shuffle=True,
            seed=seed,
            drop_last=False,
        )
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.epoch), "start": int(self.start)}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.set_epoch(int(state["epoch"]))
        self.start = int(state["start"])


class _Seeded(Dataset):
    """Adds each sample's index and seed (``sample_seed(seed, epoch, index)``) to the sample."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        seed = sample_seed(self.seed, self.epoch, index)
        get_seeded = getattr(self.dataset, "get_seeded", None)  # draws its own choices from seed
        sample = dict(get_seeded(index, seed) if get_seeded else self.dataset[index])
        sample["index"] = int(index)
        sample["seed"] = seed
        return sample


class Trainer:
    """Runs a :class:`TrainTask` (see the module docstring).

    Args:
        task: What is trained.
        dataset: Map-style dataset of samples (mappings); collated by ``collate``.
        settings: Loop settings.
        run_dir: The run folder (checkpoints, TensorBoard).
        backend: The parallel backend (one process by default).
        collate: Batch collation (``torch.utils.data.default_collate`` by default).
        validate: Called on rank 0 as ``validate(step, weights, writer)`` every
            ``validate_every`` steps and at the end, with the EMA (or raw) weights.
    """

    def __init__(
        self,
        task: TrainTask,
        dataset: Dataset,
        settings: LoopSettings,
        run_dir: str | Path,
        backend: ParallelBackend | None = None,
        collate: Callable[[list[Any]], Any] | None = None,
        validate: Callable[[int, Mapping[str, torch.Tensor], Any], None] | None = None,
    ) -> None:
        self.task = task
        self.settings = s = settings
        self.backend = be = backend or ParallelBackend()
        self.run_dir = Path(run_dir)
        self.validate = validate
        self.module = be.wrap(task.module, task.blocks() if be.strategy == "fsdp" else ())
        self.optimizer = make_optimizer(
            self.module.parameters(), s.lr, betas=tuple(s.betas), weight_decay=s.weight_decay
        )
        self.scheduler = make_scheduler(self.optimizer, s.warmup_steps, s.steps, s.schedule)
        self.ema = EMA(self.module, s.ema_decay) if s.ema_decay is not None else None
        self.data = _Seeded(dataset, s.seed)
        self.sampler = ResumableSampler(self.data, be, s.seed)
        self.loader_kwargs: dict[str, Any] = {
            "batch_size": s.batch_size,
            "num_workers": s.num_workers,
            "collate_fn": collate,
            "drop_last": True,
            "persistent_workers": False,
        }
        self.checkpoints = CheckpointManager(self.run_dir, be, keep=s.keep_checkpoints)
        self.step = 0
        self._writer: Any = None

    # --- state --------------------------------------------------------------------------------
    def resume(self, which: str | Path) -> Path:
        """Continue from a checkpoint (``latest``, a step or a folder); returns its folder."""
        path = self.checkpoints.resolve(which)
        state = self.checkpoints.load(path, self.module, self.optimizer)
        self.step = state.step
        self.scheduler.load_state_dict(state.trainer["scheduler"])
        self.sampler.load_state_dict(state.trainer["data"])
        if self.ema is not None and state.ema is not None:
            self.ema.load(state.ema, state.trainer.get("ema_updates", self.step))
        log.info("resumed from %s at step %d", path, self.step)
        return path

    def save(self) -> Path:
        """Write a checkpoint of the current step (every rank calls it)."""
        ema = self.ema.full_state(self.module) if self.ema is not None else None
        trainer = {
            "scheduler": self.scheduler.state_dict(),
            "data": self.sampler.state_dict(),
            "ema_updates": self.ema.updates if self.ema is not None else 0,
            "world_size": self.backend.world_size,
        }
        weights = ema

        def export(folder: Path) -> None:
            full = weights if weights is not None else self._full_weights()
            self.task.export(folder, full, step=self.step)

        return self.checkpoints.save(
            self.step, self.module, self.optimizer, trainer, ema=ema, export=export
        )

    def _full_weights(self) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(self.module, options=opts)

    # --- the loop -----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until ``settings.steps``; checkpoint along the way and at the end."""
        s, _be = self.settings, self.backend
        result = TrainResult(step=self.step)
        start = time.perf_counter()
        bar = self._progress()
        batches = self._batches()
        last_ckpt: Path | None = None
        end = s.steps if s.stop_at is None else min(s.steps, int(s.stop_at))
        while self.step < end:
            t0 = time.perf_counter()
            loss, grad_norm, ids = self._optimizer_step(batches)
            if not math.isfinite(loss):
                last_ckpt = self.save()
                raise NonFiniteLossError(
                    f"the loss became {loss} at step {self.step + 1} on samples {ids}"
                    f"{self._describe(ids)}; the state before this step is saved at "
                    f"{last_ckpt}. Lower the learning rate (lr={s.lr}) or check these samples."
                )
            self.step += 1
            result.losses.append(loss)
            self._log(loss, grad_norm, time.perf_counter() - t0, bar)
            if s.validate_every and self.step % s.validate_every == 0:
                self._validate()
            if self.step % s.checkpoint_every == 0 or self.step == end:
                last_ckpt = self.save()
        if bar is not None:
            bar.close()
        if self._writer is not None:
            self._writer.close()
        result.step, result.checkpoint = self.step, last_ckpt
        result.seconds = time.perf_counter() - start
        return result

    def _describe(self, ids: list[int]) -> str:
        """`` (clip-00003@12, ...)`` when the dataset can name its samples (``describe(i)``)."""
        describe = getattr(self.data.dataset, "describe", None)
        return f" ({', '.join(describe(i) for i in ids)})" if describe else ""

    def _batches(self) -> Iterator[Mapping[str, Any]]:
        """Batches forever, epoch after epoch, from the sampler's position."""
        while True:
            self.data.epoch = self.sampler.epoch
            loader = DataLoader(self.data, sampler=self.sampler, **self.loader_kwargs)
            for batch in loader:
                self.sampler.start += self.settings.batch_size
                yield batch
            self.sampler.load_state_dict({"epoch": self.sampler.epoch + 1, "start": 0})

    def _optimizer_step(
        self, batches: Iterator[Mapping[str, Any]]
    ) -> tuple[float, float, list[int]]:
        s, be = self.settings, self.backend
        self.module.train()
        self.optimizer.zero_grad(set_to_none=True)
        total, ids = 0.0, []
        for micro in range(s.grad_accum):
            batch = next(batches)
            ids.extend(_sample_ids(batch))
            sync = micro == s.grad_accum - 1
            with self._no_sync(not sync), self._autocast():
                loss = self.task.loss(self.module, batch) / s.grad_accum
            loss.backward()
            total += float(loss.detach())
        mean = be.mean(total)
        if not math.isfinite(mean) or be.any(not math.isfinite(total)):
            return float("nan"), float("nan"), ids
        grad_norm = self._clip()
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.module)
        return mean, grad_norm, ids

    def _clip(self) -> float:
        params = [p for p in self.module.parameters() if p.grad is not None]
        clip = self.settings.grad_clip if self.settings.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
            norm = norm.full_tensor()
        return float(norm)

    def _no_sync(self, skip: bool) -> contextlib.AbstractContextManager:
        if skip and isinstance(self.module, nn.parallel.DistributedDataParallel):
            return self.module.no_sync()
        if skip and hasattr(self.module, "set_requires_gradient_sync"):  # FSDP2
            self.module.set_requires_gradient_sync(False)
            return _restore_sync(self.module)
        return contextlib.nullcontext()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.settings.mixed_precision and self.backend.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # --- what the user sees -------------------------------------------------------------------
    def _progress(self) -> Any:
        if not (self.settings.progress and self.backend.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=self.settings.steps, initial=self.step, desc="train", unit="step", leave=True
        )

    def writer(self) -> Any:
        """The TensorBoard writer of the run (rank 0), made on first use."""
        if self._writer is None and self.backend.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._writer

    def _log(self, loss: float, grad_norm: float, seconds: float, bar: Any) -> None:
        s = self.settings
        samples = s.batch_size * s.grad_accum * self.backend.world_size
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.update(1)
        if self.backend.is_main and (self.step % s.log_every == 0 or self.step == 1):
            w = self.writer()
            w.add_scalar("train/loss", loss, self.step)
            w.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.step)
            w.add_scalar("train/grad_norm", grad_norm, self.step)
            w.add_scalar("perf/step_time_s", seconds, self.step)
            w.add_scalar("perf/samples_per_s", samples / max(seconds, 1e-9), self.step)

    def _validate(self) -> None:
        if self.validate is None:
            return
        weights = self.ema.full_state(self.module) if self.ema is not None else None
        if weights is None:
            weights = self._full_weights()
        if self.backend.is_main:
            self.validate(self.step, weights, self.writer())
        self.backend.barrier()


def _sample_ids(batch: Any) -> list[int]:
    """The dataset indices of a batch (a collated mapping or a list of samples)."""
    if isinstance(batch, Mapping):
        return [int(i) for i in batch["index"]]
    return [int(sample["index"]) for sample in batch]


def list_collate(samples: list[Any]) -> list[Any]:
    """A batch as the list of its samples (for samples of different shapes)."""
    return list(samples)


@contextlib.contextmanager
def _restore_sync(module: nn.Module) -> Iterator[None]:
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)
