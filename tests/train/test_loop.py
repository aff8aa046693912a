"""The training loop on a toy task: exact resume, data parallelism under torchrun, kill mid-save."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cityenv.errors import CheckpointError
from cityenv.train.checkpoint import CheckpointManager
from cityenv.train.loop import NonFiniteLossError, Trainer, sample_seed
from cityenv.train.parallel import ParallelBackend

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from toy_task import ToyData, ToyTask, settings  # noqa: E402

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(HERE.parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(args: list[str], timeout: float = 240) -> None:
    done = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _script(out: Path, steps: int, batch: int, strategy: str = "ddp", *extra: str) -> list[str]:
    return [str(HERE / "toy_task.py"), str(out), str(steps), str(batch), strategy, *extra]


def _result(out: Path) -> dict:
    return json.loads((out / "result.json").read_text())


def _max_param_diff(a: dict, b: dict) -> float:
    return max(
        float(np.abs(np.asarray(a["params"][k]) - np.asarray(b["params"][k])).max())
        for k in a["params"]
    )


def _train(out: Path, steps: int, batch: int, stop_at: int | None = None, resume=None):
    trainer = Trainer(ToyTask(), ToyData(), settings(steps, batch), out)
    if resume:
        trainer.resume(resume)
    if stop_at:
        trainer.settings.steps = stop_at
    return trainer, trainer.fit()


def test_resume_equals_straight_run_bitwise(tmp_path):
    straight, r_straight = _train(tmp_path / "a", 8, 4)
    _train(tmp_path / "b", 8, 4, stop_at=4)
    resumed, r_resumed = _train(tmp_path / "b", 8, 4, resume="latest")
    assert r_resumed.step == 8 and len(r_resumed.losses) == 4
    assert r_resumed.losses == r_straight.losses[4:]
    for (name, p), q in zip(
        straight.module.state_dict().items(), resumed.module.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    ema_a, ema_b = straight.ema.full_state(straight.module), resumed.ema.full_state(resumed.module)
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


def test_checkpoint_folder_holds_weights_optimizer_rng_and_export(tmp_path):
    trainer, result = _train(tmp_path, 4, 4)
    ckpt = result.checkpoint
    assert ckpt == tmp_path / "checkpoints" / "step-00000004"
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == [
        "ema.safetensors",
        "optimizer.pt",
        "rng-rank0.json",
        "trainable.safetensors",
        "trainer.json",
        "world_model",
    ]
    assert (ckpt / "world_model" / "w.safetensors").is_file()
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-00000004"
    trainer_json = json.loads((ckpt / "trainer.json").read_text())
    assert trainer_json["step"] == 4 and trainer_json["data"] == {"epoch": 0, "start": 16}
    assert list((tmp_path / "tensorboard").iterdir()), "TensorBoard events were written"


def test_resume_errors_are_typed(tmp_path):
    manager = CheckpointManager(tmp_path, ParallelBackend())
    with pytest.raises(CheckpointError, match="resume=latest expected a checkpoint under"):
        manager.resolve("latest")
    with pytest.raises(CheckpointError, match=r"got '12'; complete checkpoints: \[\]"):
        manager.resolve("12")
    _train(tmp_path, 2, 4)
    bigger = Trainer(ToyTask(), ToyData(), settings(4, 4), tmp_path)
    bigger.module[2] = torch.nn.Linear(16, 2)  # another model than the one saved
    with pytest.raises(CheckpointError, match="does not fit the model being trained"):
        bigger.resume("latest")


def test_non_finite_loss_stops_with_step_samples_and_checkpoint(tmp_path):
    task = ToyTask(scale=float("nan"))
    trainer = Trainer(task, ToyData(), settings(4, 4), tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"at step 1 on samples \[\d+, \d+, \d+, \d+\]"):
        trainer.fit()
    assert (tmp_path / "checkpoints" / "step-00000000" / "trainer.json").is_file()


def test_sample_seed_depends_on_seed_epoch_and_index_only():
    seeds = {sample_seed(0, 0, i) for i in range(1000)}
    assert len(seeds) == 1000
    assert (
        sample_seed(0, 0, 5) == sample_seed(0, 0, 5) != sample_seed(0, 1, 5) != sample_seed(1, 0, 5)
    )


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed next to this Python")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_two_processes_equal_one_process_with_doubled_batch(tmp_path, strategy):
    _run([sys.executable, *_script(tmp_path / "one", 6, 4)])
    _run(
        [TORCHRUN, "--standalone", "--nproc_per_node=2", *_script(tmp_path / "two", 6, 2, strategy)]
    )
    one, two = _result(tmp_path / "one"), _result(tmp_path / "two")
    # Same samples, same per-sample noise; only the order of float sums differs (gloo all-reduce).
    assert _max_param_diff(one, two) < 1e-6
    np.testing.assert_allclose(one["losses"], two["losses"], rtol=1e-6)
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints" / "step-00000006").iterdir())[
        -3:
    ] == ["trainable.safetensors", "trainer.json", "world_model"]


@pytest.mark.slow
def test_sigkill_mid_save_keeps_the_previous_checkpoint_and_resume_is_exact(tmp_path):
    _run([sys.executable, *_script(tmp_path / "straight", 8, 4)])
    out = tmp_path / "killed"
    env = {**_env(), "TOY_HANG_AT_STEP": "6"}
    proc = subprocess.Popen([sys.executable, *_script(out, 8, 4)], env=env)
    partial = out / "checkpoints" / "step-00000006.tmp" / "world_model" / "w.safetensors"
    deadline = time.monotonic() + 120
    while not partial.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert partial.exists(), "the run never reached the save of step 6"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    manager = CheckpointManager(out, ParallelBackend())
    assert manager.latest() == out / "checkpoints" / "step-00000004"
    assert manager.steps() == [2, 4]
    _run([sys.executable, *_script(out, 8, 4, "ddp", "latest")])
    straight, resumed = _result(tmp_path / "straight"), _result(out)
    assert resumed["losses"] == straight["losses"][4:]
    assert _max_param_diff(straight, resumed) == 0.0
    assert not list((out / "checkpoints").glob("*.tmp")), "the next save removed the leftover"
