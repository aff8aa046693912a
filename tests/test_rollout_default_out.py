"""``python -m cityenv.rollout`` without ``out=``: the run goes to ``outputs/rollout-<timestamp>``.

A regression of the typed ``RolloutConfig``: a ``Path`` default kept Hydra's ``${now:...}``
unresolved, so the run folder was named literally and Hydra's log file could not be opened.
Real subprocesses in an empty working folder, on a tiny town.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cityenv.rollout import RolloutConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
RUN_NAME = re.compile(r"rollout-\d{8}-\d{6}")

SCENARIO = """
name: smoke
start: 0
prompts:
  - {step: 0, prompt: golden sunset}
action_mode: velocity
max_steps: 1
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One town cache for the module's rollouts (the tiny town is built by the first run)."""
    return tmp_path_factory.mktemp("default-out-cache")


def _rollout_without_out(cwd: Path, cache: Path, *overrides: str) -> subprocess.CompletedProcess:
    scenario = cwd / "smoke.yaml"
    scenario.write_text(SCENARIO)
    args = [
        f"scenario={scenario}",
        "width=32",
        "height=32",
        "chunk_length=4",
        "town.blocks=[1,1]",
        "town.size=64",
        "progress=false",
        *overrides,
    ]
    env = {**os.environ, "CITYENV_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, "-m", "cityenv.rollout", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)


def test_the_default_out_is_a_timestamped_folder_with_the_outputs(tmp_path, cache) -> None:
    done = _rollout_without_out(tmp_path, cache)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "outputs").iterdir())
    assert len(runs) == 1 and RUN_NAME.fullmatch(runs[0].name), runs
    run = runs[0]
    for name in ("rollout.mp4", "rollout.rrd", "summary.json"):
        assert (run / name).stat().st_size > 0, name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["scenario"] == "smoke" and summary["frames"] == 1 + 4 * summary["steps"]
    assert "Traceback" not in done.stderr


def test_an_error_without_out_leaves_no_run_folder(tmp_path, cache) -> None:
    done = _rollout_without_out(tmp_path, cache, "width=0")
    assert done.returncode == 2, done.stderr[-3000:]
    assert re.search(r"error: InvalidOptionError: width must be", done.stderr)
    outputs = tmp_path / "outputs"
    assert not outputs.exists() or list(outputs.iterdir()) == []


def test_the_default_out_is_resolved_outside_hydra() -> None:
    assert RUN_NAME.fullmatch(RolloutConfig().out.name)
    config = load_config({})
    assert isinstance(config.out, Path) and config.out.parent == Path("outputs")
    assert RUN_NAME.fullmatch(config.out.name)
