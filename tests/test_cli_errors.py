"""The command lines report a typed error as one message and exit 2 (issue 15, part 4).

Real subprocesses of ``python -m cityenv.rollout`` (and one of ``cityenv.train``): the message
on stderr, no traceback unless ``--verbose`` or ``HYDRA_FULL_ERROR=1``, no run folder left
behind, ``max_steps`` below 1 refused, and a warning for a prompt scheduled after the episode.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cityenv.cli import take_verbose_flag

ROOT = Path(__file__).resolve().parents[1]

SCENARIO = """
name: smoke
start: 0
prompts:
  - {step: 0, prompt: golden sunset}
  - {step: 5, prompt: a flooded street}
action_mode: velocity
max_steps: 1
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One town cache for the module's rollouts (the tiny town is built by the first run)."""
    return tmp_path_factory.mktemp("cli-cache")


def _run(module: str, args: list[str], *, cache: Path, extra_env: dict | None = None):
    env = {**os.environ, "CITYENV_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(extra_env or {})
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def _rollout(tmp_path: Path, cache: Path, *overrides: str, extra_env: dict | None = None):
    scenario = tmp_path / "smoke.yaml"
    scenario.write_text(SCENARIO)
    args = [
        f"scenario={scenario}",
        f"out={tmp_path / 'run'}",
        "width=32",
        "height=32",
        "chunk_length=4",
        "town.blocks=[1,1]",
        "town.size=64",
        "progress=false",
        "rrd=false",
        *overrides,
    ]
    return _run("cityenv.rollout", args, cache=cache, extra_env=extra_env)


TYPED = [
    ("scenario=nope", r"error: ScenarioError: scenario must be one of \['town_route'\], got"),
    ("max_steps=0", r"error: ConfigError: rollout config: max_steps must be .* >= 1.* got 0"),
    ("max_steps=-1", r"error: ConfigError: .*max_steps must be .* got -1"),
    ("env_id=CityWorld-Twn-v0", r"got 'CityWorld-Twn-v0'\. Did you mean 'CityWorld-Town-v0'\?"),
    ("world_model=warpp", r"error: UnknownNameError: world_model .* Did you mean 'warp'\?"),
    ("world_model=os:system", r"error: UnsafeImportError: .*write 'import:os:system'"),
    ("width=0", r"error: InvalidOptionError: width must be a whole number >= 1, got 0"),
    ("fov_deg=200", r"error: InvalidOptionError: fov_deg must be .* \(0, 180\)"),
]


@pytest.mark.parametrize(("override", "match"), TYPED, ids=[t[0] for t in TYPED])
def test_a_typed_error_is_one_message_exit_2_and_no_run_folder(tmp_path, cache, override, match):
    done = _rollout(tmp_path, cache, override)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert re.search(match, done.stderr), done.stderr[-2000:]
    assert "--verbose or HYDRA_FULL_ERROR=1" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("how", ["--verbose", "HYDRA_FULL_ERROR=1"])
def test_the_traceback_is_there_when_asked_for(tmp_path, cache, how):
    flag, env = ([how], None) if how.startswith("--") else ([], {"HYDRA_FULL_ERROR": "1"})
    done = _rollout(tmp_path, cache, "scenario=nope", *flag, extra_env=env)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ScenarioError" in done.stderr
    assert not (tmp_path / "run").exists()


def test_a_folder_that_held_files_keeps_them(tmp_path, cache):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    done = _rollout(tmp_path, cache, "max_steps=0")
    assert done.returncode == 2
    assert sorted(os.listdir(tmp_path / "run")) == [".hydra", "notes.txt", "rollout.log"]


def test_a_prompt_after_the_episode_warns_and_the_opt_in_import_runs(tmp_path, cache):
    done = _rollout(tmp_path, cache, "world_model=import:cityenv.worldmodel.warp:WarpWorldModel")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the prompt 'a flooded street' is scheduled at step 5" in done.stderr
    assert "max_steps=1" in done.stderr and "never used" in done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["prompts"] == [{"step": 0, "prompt": "golden sunset"}]


def test_train_prints_the_message_and_exits_2(tmp_path, cache):
    args = ["data.root=/nowhere/data", f"out={tmp_path / 'train'}", "optim.steps=1"]
    done = _run("cityenv.train", args, cache=cache)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: ClipStoreNotFoundError: expected a clip store" in done.stderr
    assert "Traceback" not in done.stderr


def test_take_verbose_flag_removes_it_and_asks_for_tracebacks(monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    argv = ["prog", "--verbose", "width=3"]
    assert take_verbose_flag(argv) and argv == ["prog", "width=3"]
    assert os.environ["HYDRA_FULL_ERROR"] == "1"
    assert not take_verbose_flag(argv)
