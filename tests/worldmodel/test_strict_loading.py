"""Strict loading of a saved world-model folder, and world models by name (issue 15, part 3).

Each case damages a real folder written by ``save_pretrained`` on disk and loads it: every
disagreement between a config and its weights, and every setting that cannot generate, is a
:class:`CheckpointError` at load that names what is wrong.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from cityenv.errors import (
    CheckpointError,
    ConfigError,
    TextEncoderNotFoundError,
    UnknownNameError,
    UnsafeImportError,
)
from cityenv.worldmodel import WORLD_MODELS, make_world_model
from cityenv.worldmodel.checkpoint import weights_mismatch
from cityenv.worldmodel.diffusion import DiffusionWorldModel
from cityenv.worldmodel.text import LazyTextEncoder
from cityenv.worldmodel.warp import WarpWorldModel


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A tiny model's folder, written once; each test damages a copy."""
    model = DiffusionWorldModel.from_preset("tiny", device="cpu")
    return model.save_pretrained(tmp_path_factory.mktemp("saved") / "wm")


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


T_CFG, V_CFG, META = "transformer/config.json", "vae/config.json", "config.json"
T_WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"

DAMAGE = {
    "one transformer block fewer": (
        lambda f: _edit_json(f / T_CFG, lambda c: c.update(num_layers=1)),
        r"transformer do not fit its config.json: 27 unexpected keys \['blocks\.1\.",
    ),
    "one transformer block more": (
        lambda f: _edit_json(f / T_CFG, lambda c: c.update(num_layers=3)),
        r"27 missing keys \['blocks\.2\.",
    ),
    "another transformer width": (
        lambda f: _edit_json(f / T_CFG, lambda c: c.update(ffn_dim=64)),
        r"6 reshaped keys \['blocks\.0\.ffn\.net\.0\.proj\.bias: saved \(48,\), model \(64,\)",
    ),
    "another VAE width": (
        lambda f: _edit_json(f / V_CFG, lambda c: c.update(base_dim=16)),
        r"vae do not fit its config.json: \d+ reshaped keys",
    ),
    "weights truncated": (
        lambda f: _truncate(f / T_WEIGHTS),
        r"cannot be read as safetensors .* truncated or damaged",
    ),
    "weights deleted": (
        lambda f: (f / T_WEIGHTS).unlink(),
        r"expected safetensors weights in .*transformer.* found none",
    ),
    "config.json not JSON": (
        lambda f: (f / META).write_text("{not json"),
        r"config.json \(the world model's config\) must be JSON",
    ),
    "config.json a list": (
        lambda f: (f / META).write_text("[1]"),
        r"must hold a JSON object .* got a list",
    ),
    "transformer config not JSON": (
        lambda f: (f / T_CFG).write_text("nope"),
        r"\(the transformer's config\) must be JSON",
    ),
    "transformer config impossible": (
        lambda f: _edit_json(f / T_CFG, lambda c: c.update(num_attention_heads=0)),
        r"does not describe a model that can be built",
    ),
    "scheduler config not JSON": (
        lambda f: (f / "scheduler" / "scheduler_config.json").write_text("nope"),
        r"\(the scheduler's settings\) must be JSON",
    ),
    "num_inference_steps 0": (
        lambda f: _edit_json(f / META, lambda c: c["sampling"].update(num_inference_steps=0)),
        r"saved 'sampling' settings cannot generate: .*num_inference_steps must be >= 1",
    ),
    "no sampling or rollout key": (
        lambda f: _edit_json(f / META, lambda c: c.pop("sampling")),
        r"lacks \['sampling'\]",
    ),
    "an unknown setting": (
        lambda f: _edit_json(f / META, lambda c: c["sampling"].update(stepz=2)),
        r"cannot generate: .*got 'stepz'",
    ),
    "sampling not a mapping": (
        lambda f: _edit_json(f / META, lambda c: c.update(sampling=[1])),
        r"'sampling' must be a mapping of SamplingSettings, got list",
    ),
    "text encoder of an unknown kind": (
        lambda f: _edit_json(f / META, lambda c: c.update(text_encoder={"kind": "clip"})),
        r"'text_encoder' is not a text encoder spec: text encoder kind must be one of",
    ),
    "text encoder not a mapping": (
        lambda f: _edit_json(f / META, lambda c: c.update(text_encoder="umt5")),
        r"'text_encoder' must be a mapping",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_folder_is_a_checkpoint_error_at_load(saved: Path, tmp_path, case) -> None:
    damage, match = DAMAGE[case]
    folder = Path(shutil.copytree(saved, tmp_path / "wm"))
    damage(folder)
    with pytest.raises(CheckpointError, match=match):
        DiffusionWorldModel.from_pretrained(folder, device="cpu")


def test_the_undamaged_copy_loads(saved: Path, tmp_path) -> None:
    folder = Path(shutil.copytree(saved, tmp_path / "wm"))
    assert DiffusionWorldModel.from_pretrained(folder, device="cpu").settings.history == 3


def test_a_missing_umt5_folder_fails_at_load_not_at_the_first_prompt(saved, tmp_path) -> None:
    folder = Path(shutil.copytree(saved, tmp_path / "wm"))
    gone = tmp_path / "wan" / "nowhere"
    spec = {"kind": "umt5", "path": str(gone), "max_length": 16}
    _edit_json(folder / META, lambda c: c.update(text_encoder=spec))
    with pytest.raises(
        TextEncoderNotFoundError, match=r"nowhere does not exist.*text_encoder\.path"
    ):
        DiffusionWorldModel.from_pretrained(folder, device="cpu")
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        LazyTextEncoder(spec)  # the spec alone, as a preset gives it


def test_an_incomplete_umt5_folder_is_named(tmp_path) -> None:
    (tmp_path / "wan" / "text_encoder").mkdir(parents=True)
    with pytest.raises(TextEncoderNotFoundError, match="has text_encoder/ but no tokenizer/"):
        LazyTextEncoder({"kind": "umt5", "path": str(tmp_path / "wan")})


def test_an_override_that_cannot_generate_is_the_callers_error(saved) -> None:
    from cityenv.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="num_inference_steps must be >= 1"):
        DiffusionWorldModel.from_pretrained(saved, device="cpu", num_inference_steps=0)


def test_weights_mismatch_names_each_kind_and_counts() -> None:
    expected = {f"k{i}": (2,) for i in range(10)}
    saved = {**{f"k{i}": (2,) for i in range(1, 10)}, "extra": (1,), "k9": (3,)}
    text = weights_mismatch(expected, saved, few=2)
    assert text == (
        "1 missing keys ['k0']; 1 unexpected keys ['extra']; "
        "1 reshaped keys ['k9: saved (3,), model (2,)']"
    )
    many = weights_mismatch({f"k{i}": (1,) for i in range(5)}, {}, few=2)
    assert many == "5 missing keys ['k0', 'k1'] and 3 more"
    assert weights_mismatch(expected, expected) == ""


# --- world models by name -----------------------------------------------------------------------
def test_registered_names_build_their_models() -> None:
    assert {"warp", "diffusion"} <= set(WORLD_MODELS.names())
    assert isinstance(make_world_model("warp", {"cache_size": 4}), WarpWorldModel)


def test_an_unknown_name_says_did_you_mean() -> None:
    with pytest.raises(UnknownNameError, match=r"got 'warpp'\. Did you mean 'warp'\?"):
        make_world_model("warpp")


def test_an_import_path_is_refused_without_the_opt_in() -> None:
    with pytest.raises(UnsafeImportError, match=r"looks like an import path.*'import:os:system'"):
        make_world_model("os:system")


def test_the_opt_in_imports_and_says_what_failed() -> None:
    model = make_world_model("import:cityenv.worldmodel.warp:WarpWorldModel.create")
    assert isinstance(model, WarpWorldModel)
    with pytest.raises(ConfigError, match="AttributeError: .*nonexist"):
        make_world_model("import:cityenv.worldmodel.warp:nonexist")
    with pytest.raises(ConfigError, match="got no ':attr' part"):
        make_world_model("import:cityenv.worldmodel.warp")


def test_a_registered_factory_is_found_by_name() -> None:
    WORLD_MODELS.register("test-warp", WarpWorldModel.create)
    try:
        assert isinstance(make_world_model("test-warp"), WarpWorldModel)
    finally:
        WORLD_MODELS.unregister("test-warp")


@pytest.mark.parametrize(
    ("spec", "options", "match"),
    [
        (WarpWorldModel(), {"cache_size": 4}, "already built WarpWorldModel"),
        ("warp", ["cache_size"], "world_model_options must be a mapping"),
        (42, None, "must be a registered name, a WorldModel or a callable"),
        (lambda: torch.zeros(1), None, "must build a cityenv WorldModel, got a Tensor"),
    ],
)
def test_other_specs_are_config_errors(spec, options, match) -> None:
    with pytest.raises(ConfigError, match=match):
        make_world_model(spec, options)
