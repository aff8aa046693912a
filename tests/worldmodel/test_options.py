"""Typed world-model options and sampling settings: unknown keys, wrong types, both forms."""

from __future__ import annotations

import pytest

from cityenv.errors import InvalidOptionError, UnknownNameError, UnknownOptionError
from cityenv.worldmodel.options import DiffusionOptions, WarpOptions
from cityenv.worldmodel.settings import SamplingSettings
from cityenv.worldmodel.warp import WarpWorldModel


def test_diffusion_options_from_a_mapping_take_flat_sampling_overrides() -> None:
    opts = DiffusionOptions.coerce({"preset": "tiny", "device": "cpu", "num_inference_steps": 1})
    assert opts == DiffusionOptions(
        preset="tiny", device="cpu", sampling={"num_inference_steps": 1}
    )
    assert DiffusionOptions.coerce(opts) is opts
    assert DiffusionOptions.coerce(opts, seed=3).seed == 3


def test_unknown_option_keys_say_did_you_mean() -> None:
    with pytest.raises(UnknownOptionError, match=r"got 'presett'\. Did you mean 'preset'\?"):
        DiffusionOptions.coerce({"presett": "tiny"})
    with pytest.raises(TypeError, match=r"got 'histroy'\. Did you mean 'history'\?"):
        DiffusionOptions.coerce(histroy=2)  # also a TypeError, as an unexpected keyword is
    with pytest.raises(UnknownNameError, match=r"Did you mean 'hole_threshold'\?"):
        WarpWorldModel.create({"hole_treshold": 0.1})


def test_wrong_option_types_are_named() -> None:
    with pytest.raises(InvalidOptionError, match=r"seed must be an int, got str '3'"):
        DiffusionOptions(seed="3")
    with pytest.raises(TypeError, match=r"device must be a name \(str\), a torch.device"):
        DiffusionOptions(device=0)
    with pytest.raises(InvalidOptionError, match=r"use_sink must be a bool .*got str 'yes'"):
        SamplingSettings(use_sink="yes")
    with pytest.raises(InvalidOptionError, match=r"hole_threshold in \[0, 1\]"):
        WarpOptions(hole_threshold=2.0)
    with pytest.raises(InvalidOptionError, match=r"expected a WarpOptions or a mapping"):
        WarpOptions.coerce(["max_extra_references"])


def test_warp_factory_accepts_the_dataclass_or_a_mapping() -> None:
    model = WarpWorldModel.create(WarpOptions(max_extra_references=0, cache_size=8))
    assert model.max_extra_references == 0 and model.referencer.cache.capacity == 8
    assert WarpWorldModel.create({"hole_threshold": 0.1}).hole_threshold == 0.1


def test_sampling_settings_check_values() -> None:
    assert SamplingSettings(guidance_drop=["text", "warp"]).guidance_drop == ("text", "warp")
    assert SamplingSettings(shift=3).shift == 3.0  # an int from a CLI is a number
    with pytest.raises(UnknownNameError, match=r"got 'referencs'\. Did you mean 'references'\?"):
        SamplingSettings(guidance_drop=["referencs"])
    with pytest.raises(ValueError, match="history and max_references must be >= 0"):
        SamplingSettings(history=-1)
    with pytest.raises(UnknownOptionError, match=r"Did you mean 'gap'\?"):
        SamplingSettings.from_mapping({"gapp": 3})
