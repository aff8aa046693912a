"""The generator's settings are its Hydra schema: one source of defaults, every key checked."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf.errors import ConfigKeyError, ValidationError

from carla_tools.generate import ClipSettings, GenerateSettings, ReferenceSettings, SimSettings
from carla_tools.generate.config import GenerateConfig, register, settings_from_config
from cityenv.config import config_dir
from cityenv.errors import UnknownNameError

REPO = Path(__file__).resolve().parents[2]
PARTS = {"sim": SimSettings, "references": ReferenceSettings, "clips": ClipSettings}


def composed(*overrides: str) -> GenerateConfig:
    """Settings from ``configs/generate.yaml`` and overrides, as the command line builds them."""
    register()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"provider=hydra\.searchpath.*not available")
        with initialize_config_dir(str(config_dir()), version_base=None):
            cfg = compose("generate", overrides=["out=/tmp/unused", *overrides])
    return settings_from_config(cfg)


def _default(cls: type, name: str) -> object:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def test_the_yaml_sets_only_values_that_differ_from_the_dataclasses():
    data = yaml.safe_load((config_dir() / "generate.yaml").read_text())
    assert data["defaults"][0] == "generate_schema"
    for key, value in data.items():
        if key in ("defaults", "hydra"):
            continue
        if key in PARTS:
            for name, inner in value.items():
                if key == "sim" and name == "options":
                    continue  # the backend's arguments, listed so the command line can set them
                assert inner != _default(PARTS[key], name), f"{key}.{name} repeats its default"
        else:
            assert value != _default(GenerateSettings, key), f"{key} repeats its default"


def test_composed_settings_take_the_dataclass_defaults():
    settings = composed("preset=demo")
    assert isinstance(settings, GenerateSettings) and settings.stage == "generate"
    assert settings.references == ReferenceSettings()  # nothing of it is set in YAML
    assert (settings.clips.count, settings.clips.num_frames, settings.clips.fps) == (21, 49, 10.0)
    assert settings.clips.width == ClipSettings().width
    assert settings.cell_m == GenerateSettings(out="x").cell_m and settings.workers == 2
    assert settings.sim.options["blocks"] == [3, 2]
    assert settings.out == Path("/tmp/unused")


def test_the_tiny_preset_and_overrides():
    settings = composed("preset=tiny", "clips.count=5", "sim.options.seed=7", "cell_m=30")
    assert (settings.clips.count, settings.sim.options["seed"], settings.cell_m) == (5, 7, 30.0)
    assert settings.test_fraction == 0.3 and settings.clips.kinds == ("vehicle", "free")
    assert settings.clips.start_times == (datetime(2024, 5, 1, 10, 10, tzinfo=timezone.utc),)


def test_unknown_keys_and_wrong_types_name_the_key():
    with pytest.raises(ConfigKeyError, match=r"Key 'cont' not in 'ClipSettings'"):
        settings_from_config({"out": "x", "clips": {"cont": 3}})
    with pytest.raises(ValidationError, match=r"full_key: clips\.count"):
        settings_from_config({"out": "x", "clips": {"count": "many"}})
    with pytest.raises(ConfigKeyError, match=r"Key 'split' not in 'GenerateConfig'"):
        settings_from_config({"out": "x", "split": {"cell_m": 50}})


def test_values_and_names_are_checked_alike_from_python_and_config():
    with pytest.raises(UnknownNameError, match=r"clips\.weathers .* Did you mean 'fog'\?"):
        ClipSettings(weathers=("clear", "fgo"))
    with pytest.raises(UnknownNameError, match=r"clips\.weathers .* Did you mean 'fog'\?"):
        settings_from_config({"out": "x", "clips": {"weathers": ["fgo"]}})
    with pytest.raises(UnknownNameError, match=r"Did you mean 'merge'\?"):
        settings_from_config({"out": "x", "stage": "mrge"})
    with pytest.raises(UnknownNameError, match=r"sim\.backend .* Did you mean 'town'\?"):
        SimSettings("tonw")
    with pytest.raises(ValueError, match=r"references\.times must hold ISO 8601 times"):
        ReferenceSettings(times=("noon",))
    with pytest.raises(ValueError, match=r"clips\.num_frames must be >= 2, got 1"):
        ClipSettings(num_frames=1)
    with pytest.raises(ValueError, match=r"shard must lie in \[0, num_shards=2\), got 2"):
        GenerateSettings(out="x", shard=2, num_shards=2)


def test_times_are_held_as_utc_text():
    naive = ReferenceSettings(times=(datetime(2024, 5, 1, 3, 0),))
    seoul = datetime.fromisoformat("2024-05-01T12:00:00+09:00")
    assert naive.times == ReferenceSettings(times=(seoul,)).times == ("2024-05-01T03:00:00Z",)
    assert naive == ReferenceSettings()
    assert naive.capture_times == (datetime(2024, 5, 1, 3, 0, tzinfo=timezone.utc),)


def test_docs_name_every_key():
    text = (REPO / "docs" / "generate.md").read_text()
    for prefix, cls in (("", GenerateConfig), *((f"{k}.", c) for k, c in PARTS.items())):
        for f in dataclasses.fields(cls):
            if f.name not in PARTS:
                assert f"`{prefix}{f.name}`" in text, f"docs/generate.md lacks `{prefix}{f.name}`"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("clips.cont=3", "Key 'cont' not in 'ClipSettings'"),
        ("clips.weathers=[fgo]", "clips.weathers must be one of"),
    ],
)
def test_the_command_line_refuses_bad_overrides(tmp_path, override, message):
    cmd = [sys.executable, "-m", "carla_tools.generate", "preset=tiny", f"out={tmp_path}", override]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "citydb").exists()  # refused before any work
