"""The bench as data: spec checks, clip selection, typed errors, the Town-Bench provider."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cityenv.citydb.clips import ClipStore
from cityenv.errors import BenchError, ConfigError, UnknownNameError
from cityenv.eval.bench import BENCH_PROVIDERS, BenchSpec, resolve_bench_data, select_clips

ROOT = Path(__file__).resolve().parents[2]


def test_the_filter_picks_test_clips_long_enough_at_most_n_per_kind(eval_data):
    store = ClipStore(eval_data / "clips")
    spec = BenchSpec(root=str(eval_data), window_frames=9, max_clips=1)
    plans = select_clips(spec, store)
    kinds = [p.kind for p in plans]
    assert len(kinds) == len(set(kinds)) >= 1
    assert all(store.info(p.clip_id).split == "test" for p in plans)
    assert [p.index for p in plans] == list(range(len(plans)))
    assert all((p.start, p.num_frames) == (0, 9) for p in plans)
    kind = kinds[0]
    only = select_clips(BenchSpec(root=str(eval_data), window_frames=9, kinds=[kind]), store)
    assert {p.kind for p in only} == {kind}
    assert len(only) == len(store.clip_ids(split="test", kind=kind))


def test_named_clips_that_do_not_exist_or_are_too_short_are_typed_errors(eval_data):
    store = ClipStore(eval_data / "clips")
    first = store.clip_ids()[0]
    spec = BenchSpec(root=str(eval_data), clip_ids=[first, "clip-0000x"], window_frames=9)
    with pytest.raises(BenchError, match=r"got 'clip-0000x'\. Did you mean 'clip-0000"):
        select_clips(spec, store)
    long = BenchSpec(root=str(eval_data), clip_ids=[first], window_frames=99)
    with pytest.raises(BenchError, match=r"hold fewer than the 99 frames"):
        select_clips(long, store)
    with pytest.raises(BenchError, match="leaves none of the"):
        select_clips(BenchSpec(root=str(eval_data), min_frames=1000), store)


def test_spec_checks_say_which_key(eval_data, tmp_path):
    with pytest.raises(ConfigError, match="bench.window_frames"):
        BenchSpec(root=str(eval_data), window_frames=1).check()
    with pytest.raises(ConfigError, match="no row to replay"):
        from cityenv.eval.app import EvalConfig, row_specs

        row_specs(EvalConfig(warp=False))
    with pytest.raises(ConfigError, match="a bench needs data"):
        BenchSpec().check()
    with pytest.raises(UnknownNameError, match="Did you mean 'caption'"):
        BenchSpec(root=str(eval_data), prompt="captions").check()
    with pytest.raises(BenchError, match="must be an existing folder"):
        resolve_bench_data(BenchSpec(root=str(tmp_path / "nothing")))


def test_the_town_yaml_fits_the_schema():
    yaml = OmegaConf.load(ROOT / "configs" / "eval" / "bench" / "town.yaml")
    spec = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(BenchSpec), yaml))
    assert spec.provider == "town" and spec.split == "test"
    assert (spec.window_frames - 1) % spec.chunk_frames == 0


def test_pyproject_declares_the_town_bench_entry_point():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    target = project["entry-points"]["cityenv.benches"]["town"]
    assert target == "carla_tools.town_bench:town_bench_provider"
    assert any(d.startswith("matplotlib") for d in project["dependencies"])


def test_the_town_bench_provider_builds_once_through_the_registry(tmp_path, monkeypatch):
    """A tiny Town-Bench (1 x 1 blocks, 32 px, 2 clips per kind) built into the cache on first
    use and opened from it after; every clip covers about ``distance_m``."""
    from carla_tools.town_bench import TownBenchSpec, town_bench_provider

    monkeypatch.setenv("CITYENV_CACHE", str(tmp_path / "cache"))
    if "town" not in BENCH_PROVIDERS._items:  # the entry point, when the venv predates it
        BENCH_PROVIDERS.register("town", town_bench_provider)
        monkeypatch.setattr(BENCH_PROVIDERS, "_items", dict(BENCH_PROVIDERS._items))
    options = {
        "blocks": [1, 1], "size": 32, "clips_per_kind": 2, "num_frames": 9,
        "distance_m": 30.0, "cell_m": 400.0, "test_fraction": 1.0, "spacing_m": 20.0,
    }  # fmt: skip
    spec = BenchSpec(provider="town", provider_options=options, window_frames=9, chunk_frames=4)
    data = resolve_bench_data(spec, progress=False)
    folder = data.clips.parent
    assert folder.parent == tmp_path / "cache"
    assert folder.name == TownBenchSpec.from_options(options).folder_name
    store = ClipStore(data.clips)
    assert {i.kind for i in store.clips(split="test")} == {"vehicle", "pedestrian", "free"}
    assert len(store.clip_ids()) == 6 and (data.citydb / "manifest.json").is_file()
    for info in store.clips():
        positions = store.read_trajectory(info.clip_id).positions
        length = float(((positions[1:] - positions[:-1]) ** 2).sum(axis=1).__pow__(0.5).sum())
        assert 20.0 < length < 40.0, (info.kind, length)
    mtime = (folder / "bench.json").stat().st_mtime_ns
    assert resolve_bench_data(spec, progress=False) == data  # cached: not built again
    assert (folder / "bench.json").stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match="Did you mean 'clips_per_kind'"):
        TownBenchSpec.from_options({"clip_per_kind": 2})
