"""The latent cache of the transformer stage, on the generated town data with the tiny model."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cityenv.errors import ConfigError, LatentCacheError
from cityenv.train.app import _loop_settings, _task, build_data, build_model, run
from cityenv.train.config import (
    CheckpointConfig,
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from cityenv.train.latents import (
    CachedPairs,
    FixedChoices,
    LatentCache,
    cache_key,
    choice_seed,
    key_inputs,
    precompute_latents,
)
from cityenv.train.loop import Trainer, list_collate
from cityenv.train.parallel import ParallelBackend
from cityenv.train.tasks import (
    ObjectiveSettings,
    TransformerTask,
    encode_latents,
    episode_start,
    make_conditioner,
)
from cityenv.worldmodel.diffusion import DiffusionWorldModel
from cityenv.worldmodel.objective import flow_matching_loss, sample_drops, sample_timestep

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from conftest import TINY_SAMPLING  # noqa: E402

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))

#: Two windows a clip (8 samples): the tiny VAE costs about 2 s a sample on this CPU.
STRIDE = 8


def _config(data: Path, out: Path, caches: Path, **data_changes) -> TrainConfig:
    return TrainConfig(
        out=str(out),
        data=DataConfig(
            root=str(data), stride=STRIDE, latent_cache_dir=str(caches), **data_changes
        ),
        model=ModelConfig(preset="tiny", sampling=dict(TINY_SAMPLING)),
        optim=OptimConfig(steps=3, lr=1e-3, warmup_steps=1),
        checkpoint=CheckpointConfig(every=100, keep=1),
        progress=False,
    )


@pytest.fixture(scope="module")
def made(town_data, tmp_path_factory):
    """A cache of the town data for the tiny model (built once for this module)."""
    root = tmp_path_factory.mktemp("latents")
    cfg = _config(town_data, root / "run", root / "caches")
    model = build_model(cfg, ParallelBackend())
    pairs = build_data(cfg, model)
    cache = precompute_latents(pairs, model, root / "caches", progress=False)
    return SimpleNamespace(cfg=cfg, model=model, pairs=pairs, cache=cache, root=root)


def test_the_cache_holds_every_sample_with_its_key(made):
    cache = made.cache
    assert len(cache) == len(made.pairs) == 8
    assert cache.folder == made.root / "caches" / cache.key
    assert sorted(p.name for p in cache.folder.iterdir())[-1] == "sample-0000007.safetensors"
    sample = CachedPairs(cache.folder)[1]
    assert "target_frames" not in sample and "sink_frame" not in sample  # no pixels at all
    z = made.model.vae.latent_channels
    assert sample["latents"]["targets"].shape == (1, z, 1, 8, 8)
    assert sample["latents"]["history"].shape == (1, z, 1, 8, 8)
    assert sample["latents"]["sink"].shape == (1, z, 1, 8, 8)
    assert sample["target_poses"].shape == (4, 4, 4) and sample["target_poses"].dtype == np.float64
    assert list(sample["frame_size"]) == [64, 64]
    assert sample["sink_offset"] == made.pairs.get_seeded(1, choice_seed(1))["sink_offset"]


def test_cached_encode_equals_the_uncached_encode_with_no_vae_work(made):
    task = TransformerTask(made.model, ObjectiveSettings())
    fixed, cached = FixedChoices(made.pairs), CachedPairs(made.cache)
    calls = []
    hook = made.model.vae.vae.encoder.register_forward_pre_hook(lambda *_: calls.append(1))
    with_references = [i for i in range(len(cached)) if len(cached[i]["reference_view_ids"])]
    without = [i for i in range(len(cached)) if not len(cached[i]["reference_view_ids"])]
    assert with_references, "the data gives some windows references (warp and reference tokens)"
    try:
        for index in [with_references[0], *without[:1], len(cached) - 1]:
            calls.clear()
            seq, targets = task.encode(cached[index])
            assert not calls, "the cached path does no VAE work"
            seq_u, targets_u = task.encode(fixed[index])
            assert calls, "the uncached path does"
            torch.testing.assert_close(targets, targets_u, rtol=1e-6, atol=1e-6)
            for f in dataclasses.fields(seq):
                a, b = getattr(seq, f.name), getattr(seq_u, f.name)
                assert (a is None) == (b is None), f.name
                if a is not None:
                    assert a.shape == b.shape and a.dtype == b.dtype, f.name
                    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=f.name)
            assert seq.layout == seq_u.layout
            assert (seq.warp is None) == (index in without)
    finally:
        hook.remove()


def test_training_on_the_cache_gives_the_uncached_loss_trajectory(made, town_data, tmp_path):
    """Same seeds, same samples: the cache's fixed sink offsets are given to the uncached run
    through :class:`FixedChoices` (plain ``TrainPairs`` draw a new offset every epoch, so only
    runs with the same choices can be compared)."""
    caches = made.root / "caches"
    cfg = replace(_config(town_data, tmp_path / "cached", caches, latent_cache=True), seed=5)
    written = {p.name: p.stat().st_mtime_ns for p in made.cache.folder.iterdir()}
    cached = run(cfg)
    assert [p.name for p in caches.iterdir()] == [made.cache.key]
    assert {p.name: p.stat().st_mtime_ns for p in made.cache.folder.iterdir()} == written, "reused"
    plain = replace(cfg, out=str(tmp_path / "plain"), data=replace(cfg.data, latent_cache=False))
    model = build_model(plain, ParallelBackend())
    data = FixedChoices(build_data(plain, model))
    trainer = Trainer(
        _task(plain, model), data, _loop_settings(plain), plain.out, collate=list_collate
    )
    uncached = trainer.fit()
    assert len(cached.losses) == 3
    # The same float operations on the same inputs: equal up to float rounding.
    np.testing.assert_allclose(cached.losses, uncached.losses, rtol=1e-5, atol=1e-7)


def test_the_key_changes_with_vae_weights_settings_and_data(made, town_data, tmp_path):
    base = cache_key(key_inputs(made.pairs, made.model))
    assert base == made.cache.key
    fresh = build_model(made.cfg, ParallelBackend())
    assert cache_key(key_inputs(made.pairs, fresh)) == base, "the key is stable"
    with torch.no_grad():
        next(fresh.vae.vae.parameters()).view(-1)[0] += 1e-3
    keys = {"vae": cache_key(key_inputs(made.pairs, fresh))}
    for change in ({"max_references": 1}, {"use_sink": False}, {"history": 0}):
        other = DiffusionWorldModel.from_preset("tiny", device="cpu", **(TINY_SAMPLING | change))
        keys[str(change)] = cache_key(key_inputs(made.pairs, other))
    strided = build_data(replace(made.cfg, data=replace(made.cfg.data, stride=4)), made.model)
    keys["stride"] = cache_key(key_inputs(strided, made.model))
    keys["seed"] = cache_key(key_inputs(made.pairs, made.model, seed=1))
    copy = tmp_path / "town"
    shutil.copytree(town_data, copy)
    (copy / "clips" / "index").joinpath("extra.parquet").write_bytes(b"")  # the data changed
    moved = build_data(replace(made.cfg, data=replace(made.cfg.data, root=str(copy))), made.model)
    keys["data"] = cache_key(key_inputs(moved, made.model))
    assert base not in keys.values() and len(set(keys.values())) == len(keys), keys
    with pytest.raises(LatentCacheError, match="made for other data, VAE or settings"):
        LatentCache.open(made.cache.folder, key=keys["vae"])


def test_a_lost_or_foreign_sample_file_is_refused_and_made_again(made, tmp_path):
    folder = tmp_path / made.cache.key
    shutil.copytree(made.cache.folder, folder)
    (folder / "sample-0000003.safetensors").unlink()
    with pytest.raises(LatentCacheError, match=r"lacks samples \[3\] of 8"):
        LatentCache.open(folder)
    cache = precompute_latents(made.pairs, made.model, tmp_path, progress=False)
    assert cache.folder == folder and len(CachedPairs(cache)) == 8
    a, b = cache.load(3)["latents"], made.cache.load(3)["latents"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    other = tmp_path / "other"  # sample files moved into a cache of another key
    shutil.copytree(folder, other)
    meta = json.loads((other / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps(meta | {"key": "0" * 20}))
    with pytest.raises(LatentCacheError, match="got a file of key"):
        LatentCache.open(other).load(1)


def test_a_latent_cache_is_refused_for_the_vae_stage(made, town_data, tmp_path):
    cfg = replace(_config(town_data, tmp_path, tmp_path, latent_cache=True), stage="vae")
    with pytest.raises(ConfigError, match="data.latent_cache=true .* got stage=vae"):
        build_data(cfg, made.model)


def _cli(out: Path, data: Path, caches: Path, *extra: str) -> list[str]:
    return [
        "-m", "cityenv.train", f"data.root={data}", "model=tiny", f"out={out}",
        "+model.sampling.chunk_frames=4", "+model.sampling.history=1",
        "+model.sampling.max_references=2", "data.latent_cache=true",
        f"data.latent_cache_dir={caches}", "optim.steps=1", "progress=false", *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[1]), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed next to this Python")
def test_a_killed_precomputation_is_never_read_and_resumes_under_torchrun(
    made, town_data, tmp_path
):
    """SIGKILL a real ``python -m cityenv.train`` while it precomputes, leave a half-written
    temporary file, then finish with ``torchrun --nproc_per_node=2`` (ranks share the rest)."""
    # Stride 3: 12 samples, so the kill lands mid-way (a sample takes ~0.05-2 s here).
    cfg = replace(made.cfg, data=replace(made.cfg.data, stride=3))
    pairs = build_data(cfg, made.model)
    caches = tmp_path / "caches"
    folder = caches / cache_key(key_inputs(pairs, made.model))
    job = subprocess.Popen(
        [sys.executable, *_cli(tmp_path / "run1", town_data, caches, "data.stride=3")],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(folder.glob("sample-*.safetensors")) and time.monotonic() < deadline:
        assert job.poll() is None, job.stderr.read().decode()[-3000:]
        time.sleep(0.005)
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=60)
    job.stderr.close()
    done = sorted(folder.glob("sample-*.safetensors"))
    assert 1 <= len(done) < len(pairs) and not (folder / "meta.json").exists(), len(done)
    with pytest.raises(LatentCacheError, match="did not finish"):
        CachedPairs(folder)
    # What a kill during a write leaves: part of a file under a temporary name.
    half = done[0].read_bytes()[:-100]
    leftover = folder / f".sample-{len(pairs) - 1:07d}.safetensors.4242.tmp"
    leftover.write_bytes(half)
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done}

    resumed = subprocess.run(
        [TORCHRUN, "--standalone", "--nproc_per_node=2",
         *_cli(tmp_path / "run2", town_data, caches, "data.stride=3")],
        env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(folder.glob(".*.tmp")), "partial files are removed, never read"
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done} == kept, "kept"
    assert (tmp_path / "run2" / "checkpoints" / "step-00000001").is_dir(), "then it trained"
    cache = LatentCache.open(folder, key=folder.name)
    samples = [cache.load(i) for i in range(len(cache))]
    fixed, conditioner = FixedChoices(pairs), make_conditioner(made.model)
    first = int(done[0].stem.split("-")[1])
    for index in sorted({first, 1, 2, len(cache) - 1}):  # killed run, both ranks, the leftover
        a, b = samples[index], fixed[index]
        expected = encode_latents(made.model, conditioner, b)
        assert a["latents"].keys() == expected.keys()
        for name, value in expected.items():  # other processes and thread counts: rounding
            torch.testing.assert_close(a["latents"][name], value, rtol=1e-5, atol=1e-5)
        for name in ("target_poses", "sink_pose"):
            np.testing.assert_array_equal(a[name], b[name])
        assert (a["clip_id"], a["start"], a["sink_offset"]) == (
            b["clip_id"], b["start"], b["sink_offset"]
        )  # fmt: skip


def test_episode_start_replaces_the_history_with_the_warps_first_latent(made):
    """objective.episode_start: a sample begins like an episode without a start image (the
    references warped into its first poses are the only history), so the prompt must set the
    look. Without a warp there is nothing to start from."""
    cached = CachedPairs(made.cache)
    with_warp = next(i for i in range(len(cached)) if len(cached[i]["reference_view_ids"]))
    plain = TransformerTask(made.model, ObjectiveSettings())
    seq, targets = plain.encode(cached[with_warp])
    z = targets.shape[1]
    start = episode_start(seq, z)
    assert start.history.shape == (1, z, 1, *targets.shape[3:])
    torch.testing.assert_close(start.history, seq.warp[:, :z, :1])
    torch.testing.assert_close(start.history_rays, seq.target_rays[:, :, :1])
    assert start.layout.history == 1 and seq.history is not start.history
    for name in ("warp", "references", "text", "target_rays", "sink"):
        assert getattr(start, name) is getattr(seq, name), name
    always = TransformerTask(made.model, ObjectiveSettings(episode_start=1.0))
    module = made.model.transformer
    with torch.no_grad():
        sample = {**cached[with_warp], "seed": 7}  # the loop adds each sample's seed
        g = torch.Generator().manual_seed(7)
        torch.rand((), generator=g)  # the episode-start draw comes first
        drops = sample_drops(always.objective.drop_rates, g)
        timestep = sample_timestep(g, shift=always.shift)
        noise = torch.randn(targets.shape, generator=g)
        expected = flow_matching_loss(
            module,
            start.drop(drops),
            targets,
            timestep=timestep,
            noise=noise,
            settings=made.model.settings,
        )
        torch.testing.assert_close(always.loss(module, [sample]), expected)
        assert not torch.allclose(plain.loss(module, [sample]), expected)
    with pytest.raises(ValueError, match="needs a sequence with a warp"):
        episode_start(dataclasses.replace(seq, warp=None), z)
    with pytest.raises(ConfigError, match=r"episode_start is a probability in \[0, 1\]"):
        ObjectiveSettings(episode_start=1.5)
