"""A toy training task for the loop's tests: a small MLP regression, run in-process or as a script.

``python toy_task.py OUT STEPS BATCH STRATEGY [RESUME] [STOP_AT]`` trains and writes
``OUT/result.json`` (per-step losses, final parameters); under ``torchrun`` it runs data-parallel.
``TOY_HANG_AT_STEP=N`` makes the export of checkpoint N hang (for kill-mid-save tests) after it has
written part of the checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from cityenv.train.loop import LoopSettings, Trainer
from cityenv.train.parallel import ParallelBackend


class ToyData(torch.utils.data.Dataset):
    """64 samples x (8,) -> half their sum, fixed by the index."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = torch.randn(8, generator=torch.Generator().manual_seed(i))
        return {"x": x, "y": x.sum(0, keepdim=True) * 0.5}


class ToyTask:
    """An MLP; each sample's noise comes from its own seed (whatever rank it lands on)."""

    def __init__(self, scale: float = 1.0) -> None:
        torch.manual_seed(0)
        self.module = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        self.scale = scale

    def blocks(self) -> list[nn.Module]:
        return [self.module[0]]

    def loss(self, module: nn.Module, batch: dict) -> torch.Tensor:
        noise = torch.stack(
            [torch.randn(1, generator=torch.Generator().manual_seed(int(s))) for s in batch["seed"]]
        )
        return self.scale * ((module(batch["x"]) + 0.01 * noise - batch["y"]) ** 2).mean()

    def export(self, folder: Path, weights: dict, *, step: int | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "w.safetensors"))
        hang = os.environ.get("TOY_HANG_AT_STEP")
        if hang and folder.parent.name.startswith(f"step-{int(hang):08d}"):
            time.sleep(120)


def settings(steps: int, batch: int) -> LoopSettings:
    return LoopSettings(
        steps=steps,
        batch_size=batch,
        lr=1e-2,
        warmup_steps=2,
        checkpoint_every=2,
        keep_checkpoints=10,
        progress=False,
        ema_decay=0.9,
        log_every=1,
    )


def main(argv: list[str]) -> None:
    out, steps, batch, strategy = argv[0], int(argv[1]), int(argv[2]), argv[3]
    resume = argv[4] if len(argv) > 4 and argv[4] else None
    stop_at = int(argv[5]) if len(argv) > 5 else None
    backend = ParallelBackend.from_environment(strategy, "cpu")
    trainer = Trainer(ToyTask(), ToyData(), settings(steps, batch), out, backend)
    if resume:
        trainer.resume(resume)
    if stop_at:
        trainer.settings.steps = stop_at
    result = trainer.fit()
    params = {k: v.tolist() for k, v in trainer._full_weights().items()}  # a collective
    if backend.is_main:
        record = {"losses": result.losses, "params": params, "step": result.step}
        (Path(out) / "result.json").write_text(json.dumps(record))
    backend.close()


if __name__ == "__main__":
    main(sys.argv[1:])
