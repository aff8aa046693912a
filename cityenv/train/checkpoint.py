"""Training checkpoints that survive a kill and resume exactly.

A run folder holds ``checkpoints/step-<8 digits>/`` folders and a ``checkpoints/latest`` file
naming the newest complete one. A checkpoint is written into ``step-<n>.tmp`` and renamed into
place only when every file of every rank is on disk; ``latest`` is replaced atomically after that.
A process killed mid-save (even by SIGKILL) leaves the previous checkpoint and ``latest`` as they
were; the leftover ``.tmp`` folder is removed by the next save.

Contents (weights in safetensors; no pickle is ever loaded, the optimizer's state is read with
``torch.load(weights_only=True)``)::

    step-00000100/
      trainable.safetensors   the trained module's full state (un-sharded, un-wrapped names)
      ema.safetensors         its exponential moving average (when EMA is on)
      optimizer.pt            the optimizer's full state (tensors and numbers only)
      trainer.json            step, scheduler state, data position, config fingerprint
      rng-rank<r>.json        Python, NumPy and torch RNG states of rank r (torch as uint8 lists)
      world_model/            what users load (``DiffusionWorldModel.from_pretrained``), written
                              by the trainer's export hook with the EMA weights

Sharded (FSDP2) and replicated (DDP) modules are saved the same way: PyTorch's
``torch.distributed.checkpoint.state_dict`` gathers the full state on rank 0 and scatters it back
at load, so a run can resume on another number of processes.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from cityenv.errors import CheckpointError
from cityenv.train.parallel import ParallelBackend

__all__ = ["CheckpointManager", "LoadedState", "capture_rng", "restore_rng"]

log = logging.getLogger(__name__)

_STEP = re.compile(r"^step-(\d{8})$")


@dataclass
class LoadedState:
    """What :meth:`CheckpointManager.load` restored besides the module and optimizer.

    Attributes:
        path: The checkpoint folder.
        step: Optimizer steps done.
        trainer: The rest of ``trainer.json`` (scheduler state, data position, ...).
        ema: The EMA weights (full state dict on CPU), or ``None``.
    """

    path: Path
    step: int
    trainer: dict[str, Any]
    ema: dict[str, torch.Tensor] | None


def capture_rng() -> dict[str, Any]:
    """This process's Python, NumPy (legacy global) and torch RNG states, as JSON values."""
    state: dict[str, Any] = {
        "python": _jsonable(random.getstate()),
        "numpy": _jsonable(np.random.get_state()),
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Undo :func:`capture_rng` (a state saved with CUDA restores CUDA only where it exists)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class CheckpointManager:
    """Saves and finds the checkpoints of one run folder.

    Args:
        root: The run folder (``checkpoints/`` is made inside it).
        backend: The parallel backend (rank 0 writes the shared files; every rank its RNG).
        keep: Complete checkpoints kept (older ones are deleted after a save); 0 keeps all.
    """

    def __init__(self, root: str | os.PathLike[str], backend: ParallelBackend, keep: int = 3):
        self.dir = Path(root) / "checkpoints"
        self.backend = backend
        self.keep = int(keep)

    # --- finding ----------------------------------------------------------------------------
    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        if not self.dir.is_dir():
            return []
        found = (_STEP.match(p.name) for p in self.dir.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def latest(self) -> Path | None:
        """The newest complete checkpoint (named by ``latest``), or ``None`` when there is none."""
        pointer = self.dir / "latest"
        if pointer.is_file():
            path = self.dir / pointer.read_text().strip()
            if (path / "trainer.json").is_file():
                return path
        steps = self.steps()  # ``latest`` lost: fall back to the newest complete folder
        return self.path(steps[-1]) if steps else None

    def path(self, step: int) -> Path:
        """The folder of the checkpoint of ``step``."""
        return self.dir / f"step-{int(step):08d}"

    def resolve(self, resume: str | os.PathLike[str]) -> Path:
        """The checkpoint folder that ``resume`` names: ``latest``, a step number or a path.

        Raises:
            CheckpointError: If it names no complete checkpoint.
        """
        text = str(resume)
        if text == "latest":
            path = self.latest()
            if path is None:
                raise CheckpointError(
                    f"resume=latest expected a checkpoint under {self.dir}, found none; "
                    "start without resume (or point out= at the run to continue)."
                )
            return path
        path = self.path(int(text)) if text.isdigit() else Path(text)
        if not (path / "trainer.json").is_file():
            raise CheckpointError(
                f"resume expected a checkpoint folder holding trainer.json (or 'latest' or a "
                f"step number), got {text!r}; complete checkpoints: {self.steps()}."
            )
        return path

    # --- saving -----------------------------------------------------------------------------
    def save(
        self,
        step: int,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        trainer: Mapping[str, Any],
        *,
        ema: Mapping[str, torch.Tensor] | None = None,
        export: Callable[[Path], None] | None = None,
    ) -> Path:
        """Write the checkpoint of ``step`` (a collective: every rank calls it).

        Args:
            step: Optimizer steps done.
            module: The trained module (wrapped or not).
            optimizer: Its optimizer.
            trainer: JSON values (scheduler state, data position, config fingerprint).
            ema: Full EMA state (rank 0's is written), or ``None``.
            export: Called on rank 0 with the checkpoint's ``world_model/`` folder to write the
                user-facing model.

        Returns:
            The complete checkpoint folder.
        """
        be = self.backend
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(module, options=options)
        optim = get_optimizer_state_dict(module, optimizer, options=options)
        final = self.path(step)
        tmp = final.with_name(final.name + ".tmp")
        if be.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        be.barrier()
        _write_json(tmp / f"rng-rank{be.rank}.json", capture_rng())
        if be.is_main:
            save_file(_contiguous(weights), str(tmp / "trainable.safetensors"))
            if ema is not None:
                save_file(_contiguous(ema), str(tmp / "ema.safetensors"))
            torch.save(optim, tmp / "optimizer.pt")
            if export is not None:
                export(tmp / "world_model")
            _write_json(tmp / "trainer.json", {"step": int(step), **trainer})
        be.barrier()
        if be.is_main:
            _fsync_tree(tmp)
            shutil.rmtree(final, ignore_errors=True)  # a folder of the same step, superseded
            os.replace(tmp, final)
            _atomic_text(self.dir / "latest", final.name)
            self._prune()
        be.barrier()
        log.info("checkpoint %s written", final)
        return final

    def _prune(self) -> None:
        for path in self.dir.glob("step-*.tmp"):
            shutil.rmtree(path, ignore_errors=True)
        if self.keep > 0:
            for step in self.steps()[: -self.keep]:
                shutil.rmtree(self.path(step), ignore_errors=True)

    # --- loading ----------------------------------------------------------------------------
    def load(
        self, path: str | os.PathLike[str], module: nn.Module, optimizer: torch.optim.Optimizer
    ) -> LoadedState:
        """Restore a checkpoint into ``module`` and ``optimizer`` and this rank's RNG.

        Args:
            path: A complete checkpoint folder (see :meth:`resolve`).
            module: The module, wrapped the same way as when training.
            optimizer: Its optimizer (freshly built).

        Raises:
            CheckpointError: If a file is missing or the weights do not fit the module.
        """
        path = Path(path)
        for name in ("trainable.safetensors", "optimizer.pt", "trainer.json"):
            if not (path / name).is_file():
                raise CheckpointError(f"checkpoint {path} has no {name}; it is incomplete.")
        weights = load_file(str(path / "trainable.safetensors"))
        _check_fits(path, weights, get_model_state_dict(module))
        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(module, weights, options=options)
        optim = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
        set_optimizer_state_dict(module, optimizer, optim, options=options)
        trainer = json.loads((path / "trainer.json").read_text())
        rng = path / f"rng-rank{self.backend.rank}.json"
        if rng.is_file():  # absent when resuming on more processes than were saved
            restore_rng(json.loads(rng.read_text()))
        ema_file = path / "ema.safetensors"
        ema = load_file(str(ema_file)) if ema_file.is_file() else None
        return LoadedState(path, int(trainer.pop("step")), trainer, ema)


def _check_fits(
    path: Path, weights: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> None:
    """Raise a :class:`CheckpointError` naming missing, unexpected and reshaped keys."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    reshaped = [
        f"{k}: saved {tuple(weights[k].shape)}, model {tuple(expected[k].shape)}"
        for k in sorted(set(weights) & set(expected))
        if tuple(weights[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or reshaped:
        raise CheckpointError(
            f"checkpoint {path} does not fit the model being trained: missing keys "
            f"{missing[:8]}, unexpected keys {unexpected[:8]}, other shapes {reshaped[:8]}; "
            "was it made with another model preset?"
        )


def _contiguous(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1) + "\n")


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` to disk before it is renamed into place."""
    for p in folder.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
