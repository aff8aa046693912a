"""The town database build: zero blocks refused, and a killed build leaves no temporary folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carla_tools.town import ProceduralTown
from carla_tools.town.layout import LayoutParams
from carla_tools.town_db import build_town_db
from cityenv.envs.town import TownSpec
from cityenv.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

BUILD = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job inherits SIG_IGN
import carla_tools.generate
from carla_tools.town_db import build_town_db
from cityenv.envs.town import TownSpec

generate = carla_tools.generate.generate

def slow_generate(settings):  # the build stays inside _build until interrupted
    generate(settings)
    (settings.out / "generated").touch()  # the test interrupts from here on
    time.sleep(600)

carla_tools.generate.generate = slow_generate
build_town_db(TownSpec(blocks=[1, 1], size=64), sys.argv[1], progress=False)
"""


@pytest.mark.parametrize("blocks", [(0, 0), (0, 2), (1,), (1.5, 1), (True, 1)])
def test_a_town_without_blocks_is_a_config_error(blocks):
    with pytest.raises(ConfigError, match=r"blocks must be a pair .* whole numbers >= 1"):
        LayoutParams(blocks=blocks)
    with pytest.raises(ConfigError, match="blocks"):
        ProceduralTown(blocks=blocks)


def test_a_spec_edited_to_zero_blocks_is_refused_before_a_folder_is_made(tmp_path):
    spec = TownSpec()
    spec.blocks = [0, 0]  # a plain dataclass: edits skip its checks
    with pytest.raises(ConfigError, match=r"blocks must be an integer >= 1, got 0"):
        build_town_db(spec, tmp_path / "town" / "citydb", progress=False)
    assert not (tmp_path / "town").exists()


def test_an_interrupted_build_removes_its_temporary_folder(tmp_path):
    target = tmp_path / "citydb"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen([sys.executable, "-c", BUILD, str(target)], env=env, cwd=ROOT)
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob(".citydb.tmp-*/generated")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the build ended before its temporary folder was filled"
        time.sleep(0.05)
    assert list(tmp_path.glob(".citydb.tmp-*/generated")), "no temporary folder filled in 240 s"
    proc.send_signal(signal.SIGINT)  # KeyboardInterrupt inside the build
    assert proc.wait(timeout=120) != 0
    assert not list(tmp_path.glob(".citydb.tmp-*"))
    assert not target.exists()
