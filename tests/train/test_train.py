"""``python -m cityenv.train`` on real generated town data with the tiny world model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cityenv.citydb.clips import ClipStore, split_traversals
from cityenv.citydb.reader import CityDB
from cityenv.errors import ConfigError, UnknownNameError
from cityenv.train.app import _task, build_data, build_model, run
from cityenv.train.config import (
    CheckpointConfig,
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    ValidationConfig,
    check_config,
)
from cityenv.train.data import PairSettings, TrainingDataError, TrainPairs
from cityenv.train.parallel import ParallelBackend
from cityenv.train.tasks import vae_clip
from cityenv.worldmodel.base import ChunkReferences
from cityenv.worldmodel.checkpoint import TrainedOn
from cityenv.worldmodel.conditioning import to_video
from cityenv.worldmodel.diffusion import DiffusionWorldModel
from cityenv.worldmodel.referencing import ReferenceLoader

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from conftest import TINY_SAMPLING  # noqa: E402

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))


def _config(data: Path, out: Path, steps: int = 4, **changes) -> TrainConfig:
    cfg = TrainConfig(
        out=str(out),
        data=DataConfig(root=str(data)),
        model=ModelConfig(preset="tiny", sampling=dict(TINY_SAMPLING)),
        optim=OptimConfig(steps=steps, lr=1e-3, warmup_steps=1),
        checkpoint=CheckpointConfig(every=2, keep=10),
        validation=ValidationConfig(every=-1),  # tests/train/test_validate.py covers validation
        progress=False,
    )
    return replace(cfg, **changes)


def _pairs(town_data: Path, **settings) -> TrainPairs:
    base = {"chunk_frames": 4, "history_frames": 4, "num_references": 2}
    return TrainPairs(town_data / "citydb", town_data / "clips", PairSettings(**(base | settings)))


# --- data -----------------------------------------------------------------------------------------
def test_samples_are_train_only_cross_temporal_and_reproducible(town_data):
    pairs = _pairs(town_data)
    store = ClipStore(town_data / "clips")
    train_ids = set(store.clip_ids(split="train"))
    assert train_ids and set(store.clip_ids(split="test")), "the data has both splits"
    assert {w.clip_id for w in pairs.windows} <= train_ids  # test clips are never windows
    db = CityDB.open(town_data / "citydb")
    loader = ReferenceLoader(db)
    test_refs = set(split_traversals(db.traversal_ids, "test"))
    found = 0
    for index in range(len(pairs)):
        sample = pairs.get_seeded(index, seed=index)
        info = store.info(sample["clip_id"])
        for view_id in sample["reference_view_ids"]:
            view = loader.view(int(view_id))
            assert view.traversal_id not in test_refs and view.traversal_id != info.traversal_id
            assert abs(view.pose.position - sample["target_poses"][0][:3, 3]).max() < 60
            found += 1
        assert sample["target_frames"].shape == (4, 64, 64, 3)
        assert sample["history_frames"].shape == (4, 64, 64, 3)
        assert 1 <= sample["sink_offset"] <= 8
        assert sample["warp_masks"].shape == (4, 64, 64)
    assert found > 0, "some windows found references"
    a, b = pairs.get_seeded(3, seed=7), pairs.get_seeded(3, seed=7)
    assert all(np.array_equal(a[k], b[k]) for k in a if isinstance(a[k], np.ndarray))
    offsets = {pairs.get_seeded(3, seed=s)["sink_offset"] for s in range(20)}
    assert len(offsets) > 1, "the sink offset is drawn from the seed"


def test_the_warp_is_the_models_own_warp(town_data):
    """Training sees exactly the geometric-referencing input the model makes at inference."""
    pairs = _pairs(town_data)
    sample = next(s for s in map(pairs.get_seeded, range(len(pairs)), range(len(pairs)))
                  if len(s["reference_view_ids"]))  # fmt: skip
    db = CityDB.open(town_data / "citydb")
    views = [ReferenceLoader(db).view(int(i)) for i in sample["reference_view_ids"]]
    model = DiffusionWorldModel.from_preset("tiny", device="cpu", **TINY_SAMPLING)
    model.camera = pairs.camera
    info = ClipStore(town_data / "clips").info(sample["clip_id"])
    window = timedelta(seconds=pairs.settings.time_window_s)
    retrieved = pairs._retriever.retrieve(
        _trajectory(sample),
        pairs.camera,
        k=2,
        exclude_traversals=sorted(pairs._test_traversals | {info.traversal_id}),
        exclude_time=(info.start_time, window),
    )
    assert [r.view_id for r in retrieved.references] == list(sample["reference_view_ids"])
    per_frame = retrieved.per_frame
    warps, masks = model.warp(_trajectory(sample), ChunkReferences(views, per_frame, None))
    np.testing.assert_array_equal(warps, sample["warp_frames"])
    np.testing.assert_array_equal(masks, sample["warp_masks"])
    assert masks.mean() > 0.05


def _trajectory(sample):
    from cityenv.geometry.pose import Pose, Trajectory

    poses = [Pose.from_matrix(m) for m in sample["target_poses"]]
    return Trajectory.from_poses(poses, fps=10.0)


def test_same_traversal_references_are_allowed_only_for_the_ablation(town_data):
    strict = _pairs(town_data, time_window_s=1e9)  # every capture time excluded
    assert all(len(strict.get_seeded(i, 0)["reference_view_ids"]) == 0 for i in range(len(strict)))
    loose = _pairs(town_data, time_window_s=1e9, cross_temporal=False)
    assert any(len(loose.get_seeded(i, 0)["reference_view_ids"]) for i in range(len(loose)))


# --- bad input ------------------------------------------------------------------------------------
def test_data_that_cannot_fill_the_chunk_is_a_typed_error(town_data):
    with pytest.raises(TrainingDataError, match=r"a sample needs 46 frames of one clip .* has 17"):
        _pairs(town_data, chunk_frames=12, history_frames=12, sink_offsets=(22, 30))


def test_a_store_without_train_clips_is_a_typed_error(town_data, tmp_path):
    clips = Path(shutil.copytree(town_data / "clips", tmp_path / "clips"))
    for part in (clips / "index").glob("*.parquet"):
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        table = pq.read_table(part)
        pq.write_table(table.filter(pc.equal(table["split"], "test")), part)
    with pytest.raises(TrainingDataError, match="expected train clips in .* found none"):
        TrainPairs(town_data / "citydb", clips, PairSettings(4, 4))


def test_a_citydb_of_another_anchor_is_a_typed_error(town_data, tmp_path):
    clips = Path(shutil.copytree(town_data / "clips", tmp_path / "clips"))
    marker = json.loads((clips / "store.json").read_text())
    marker["anchor"]["lat"] += 0.01
    (clips / "store.json").write_text(json.dumps(marker))
    with pytest.raises(TrainingDataError, match="poses are in different ENU frames"):
        TrainPairs(town_data / "citydb", clips, PairSettings(4, 4))


def test_bad_configs_are_typed_errors(town_data, tmp_path):
    with pytest.raises(ConfigError, match="expected data.root=FOLDER"):
        check_config(TrainConfig())
    with pytest.raises(UnknownNameError, match=r"got 'tranformer'\. Did you mean 'transformer'"):
        check_config(_config(town_data, tmp_path, stage="tranformer"))
    with pytest.raises(ConfigError, match="optim.steps"):
        check_config(_config(town_data, tmp_path, steps=0))
    cfg = _config(town_data, tmp_path)
    cfg.model.init_from = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="nowhere', which does not exist"):
        build_model(cfg, ParallelBackend())


# --- training -------------------------------------------------------------------------------------
def test_training_moves_the_transformer_and_exports_a_loadable_world_model(town_data, tmp_path):
    cfg = _config(town_data, tmp_path / "run", steps=4)
    before = {
        k: v.clone()
        for k, v in build_model(cfg, ParallelBackend()).transformer.state_dict().items()
    }
    result = run(cfg)
    assert result.step == 4 and all(np.isfinite(result.losses))
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000004"
    trained = load_file(str(ckpt / "trainable.safetensors"))
    assert any(not torch.equal(before[k], trained[k]) for k in before)
    model = DiffusionWorldModel.from_pretrained(ckpt / "world_model", device="cpu")
    ema = load_file(str(ckpt / "ema.safetensors"))
    for k, v in model.transformer.state_dict().items():
        torch.testing.assert_close(v, ema[k].to(v.dtype))  # users get the EMA weights
    assert model.settings.chunk_frames == 4
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["model"]["preset"] == "tiny" and saved["stage"] == "transformer"
    # the folder records what it was trained on: the clips' 64 x 64 frames in 4-frame chunks
    assert model.trained == TrainedOn((64, 64), 4, stage="transformer", steps=4)
    assert model.native_size == (64, 64)
    earlier = DiffusionWorldModel.from_pretrained(
        tmp_path / "run" / "checkpoints" / "step-00000002" / "world_model", device="cpu"
    )
    assert earlier.trained == TrainedOn((64, 64), 4, stage="transformer", steps=2)


def test_the_export_records_the_datas_frame_size(town_data, tmp_path):
    """data.size resizes the frames: the exported model records that size, not the clips'."""
    cfg = _config(town_data, tmp_path / "run")
    cfg.data.size = [48, 32]
    model = build_model(cfg, ParallelBackend())
    task = _task(cfg, model, build_data(cfg, model))
    task.export(tmp_path / "wm", task.module.state_dict(), step=9)
    meta = json.loads((tmp_path / "wm" / "config.json").read_text())
    assert meta["trained"] == {
        "frame_size": [48, 32],
        "chunk_frames": 4,
        "stage": "transformer",
        "steps": 9,
    }


def test_resume_is_exact(town_data, tmp_path):
    run(_config(town_data, tmp_path / "straight", steps=4))
    # a job that ran out of time; resume=auto starts afresh in an empty folder
    run(_config(town_data, tmp_path / "resumed", steps=4, stop_at=2, resume="auto"))
    assert (tmp_path / "resumed/checkpoints/latest").read_text().strip() == "step-00000002"
    run(_config(town_data, tmp_path / "resumed", steps=4, resume="latest"))
    a = load_file(str(tmp_path / "straight/checkpoints/step-00000004/trainable.safetensors"))
    b = load_file(str(tmp_path / "resumed/checkpoints/step-00000004/trainable.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_vae_stage_trains_the_vae(town_data, tmp_path):
    cfg = _config(town_data, tmp_path / "vae", steps=2, stage="vae")
    cfg.optim.ema_decay = None
    result = run(cfg)
    assert result.step == 2
    initial = DiffusionWorldModel.from_preset("tiny", device="cpu", **TINY_SAMPLING)
    trained = DiffusionWorldModel.from_pretrained(
        tmp_path / "vae/checkpoints/step-00000002/world_model", device="cpu"
    )
    a, b = initial.vae.vae.state_dict(), trained.vae.vae.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    t0, t1 = initial.transformer.state_dict(), trained.transformer.state_dict()
    assert all(torch.equal(t0[k], t1[k]) for k in t0), "the transformer is untouched"
    assert trained.trained is None  # an untrained transformer: no size or chunk length to keep
    # the export measured the latents' statistics: the calibration clips encode to zero mean,
    # unit variance per channel (the preset's config says 0 and 1, the raw encoder does not)
    config = trained.vae.vae.config
    assert list(config.latents_mean) != list(initial.vae.vae.config.latents_mean)
    pairs = build_data(cfg, trained)
    video = to_video(vae_clip(pairs.get_seeded(0, 0)), "cpu", torch.float32)
    with torch.no_grad():
        z = trained.vae.encode(video)
    assert z.mean().abs() < 0.5 and 0.5 < z.std() < 2.0


def test_vae_stage_on_crops_and_frame_runs(town_data, tmp_path):
    """objective.vae_crop / vae_frames cut every clip to a random crop and run of frames."""
    cfg = _config(town_data, tmp_path / "vae", steps=1, stage="vae")
    cfg.optim.ema_decay = None
    cfg.objective.vae_crop, cfg.objective.vae_frames = 16, 1
    model = build_model(cfg, ParallelBackend.from_environment("ddp", "cpu"))
    seen = []
    model.vae.vae.encoder.register_forward_pre_hook(
        lambda _, args: seen.append(tuple(args[0].shape))
    )
    data = build_data(cfg, model)
    task = _task(cfg, model, data)
    task.loss(task.module, [data.get_seeded(0, 0) | {"seed": 0}])
    assert seen == [(1, 3, 1, 16, 16)]
    cfg.objective.vae_crop = 12
    with pytest.raises(ConfigError, match="multiple of the VAE's spatial ratio 8, got 12"):
        _task(cfg, model, build_data(cfg, model))
    cfg.objective.vae_crop, cfg.objective.vae_frames = None, 4
    with pytest.raises(ConfigError, match="objective.vae_frames"):
        run(cfg)


def test_vae_stage_decoder_only_keeps_the_encoder_and_its_latents(town_data, tmp_path):
    cfg = _config(town_data, tmp_path / "dec", steps=2, stage="vae")
    cfg.optim.ema_decay = None
    cfg.objective.vae_parts = "decoder"
    run(cfg)
    initial = DiffusionWorldModel.from_preset("tiny", device="cpu", **TINY_SAMPLING)
    trained = DiffusionWorldModel.from_pretrained(
        tmp_path / "dec/checkpoints/step-00000002/world_model", device="cpu"
    )
    a, b = initial.vae.vae.state_dict(), trained.vae.vae.state_dict()
    frozen = [k for k in a if k.startswith(("encoder.", "quant_conv."))]
    assert frozen and all(torch.equal(a[k], b[k]) for k in frozen)
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))
    assert trained.vae.vae.config.latents_mean == initial.vae.vae.config.latents_mean
    cfg.objective.vae_parts = "encoder"
    with pytest.raises(UnknownNameError, match="Did you mean 'decoder'"):
        run(cfg)


def test_vae_stage_trains_a_narrower_decoder_on_the_frozen_encoder(town_data, tmp_path):
    """objective.vae_decoder_base_dim: a fresh decoder of another width, trained on the frozen
    encoder's latents; the export records it, loads and decodes the same latents to frames."""
    cfg = _config(town_data, tmp_path / "dec", steps=2, stage="vae")
    cfg.optim.ema_decay = None
    cfg.objective.vae_parts, cfg.objective.vae_decoder_base_dim = "decoder", 4
    run(cfg)
    initial = DiffusionWorldModel.from_preset("tiny", device="cpu", **TINY_SAMPLING)
    trained = DiffusionWorldModel.from_pretrained(
        tmp_path / "dec/checkpoints/step-00000002/world_model", device="cpu"
    )
    assert trained.vae.vae.config.decoder_base_dim == 4
    assert initial.vae.vae.config.base_dim == trained.vae.vae.config.base_dim != 4
    a, b = initial.vae.vae.state_dict(), trained.vae.vae.state_dict()
    frozen = [k for k in a if k.startswith(("encoder.", "quant_conv."))]
    assert frozen and all(torch.equal(a[k], b[k]) for k in frozen)
    width = [(k, a[k].shape, b[k].shape) for k in a if k.startswith("decoder.")]
    assert any(x != y for _, x, y in width), "the decoder is narrower"
    assert sum(v.numel() for k, v in b.items() if k.startswith("decoder.")) < sum(
        v.numel() for k, v in a.items() if k.startswith("decoder.")
    )
    video = to_video(vae_clip(build_data(cfg, trained).get_seeded(0, 0)), "cpu", torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(trained.vae.encode(video), initial.vae.encode(video))
        assert trained.vae.decode(trained.vae.encode(video)).shape == video.shape
    cfg.objective.vae_parts = "all"
    with pytest.raises(ConfigError, match="needs objective.vae_parts=decoder"):
        run(cfg)


def _cli(out: Path, data: Path, *extra: str) -> list[str]:
    return [
        "-m", "cityenv.train", f"data.root={data}", "model=tiny", f"out={out}",
        "+model.sampling.chunk_frames=4", "+model.sampling.history=1",
        "+model.sampling.max_references=2", "optim.warmup_steps=1", "checkpoint.every=2",
        "validation.every=-1", "progress=false", *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[1]), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_cli_refuses_an_unknown_key_with_its_name(town_data, tmp_path):
    done = subprocess.run(
        [sys.executable, *_cli(tmp_path / "x", town_data, "optim.stesp=3")],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0 and "stesp" in done.stderr


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed next to this Python")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_two_processes_equal_one_process_with_the_doubled_batch(
    town_data, tmp_path, strategy
):
    """DDP or FSDP2 over gloo, a real torchrun: 2 x batch 1 == 1 x batch 2 (same samples and
    seeds; the tolerance covers the order of float sums in gloo's all-reduce)."""
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(
        [sys.executable, *_cli(one, town_data, "optim.steps=3", "optim.batch_size=2")],
        env=_env(), check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    done = subprocess.run(
        [TORCHRUN, "--standalone", "--nproc_per_node=2",
         *_cli(two, town_data, "optim.steps=3", "optim.batch_size=1",
               f"parallel.strategy={strategy}")],
        env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    a = load_file(str(one / "checkpoints/step-00000003/trainable.safetensors"))
    b = load_file(str(two / "checkpoints/step-00000003/trainable.safetensors"))
    # Only the order of float sums differs (gloo's all-reduce vs one batch mean).
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, worst
    assert (two / "checkpoints/step-00000003/rng-rank1.json").is_file()
    assert not (two / ".hydra").exists() or (two / ".hydra" / "config.yaml").is_file()


def test_a_non_finite_loss_names_the_step_and_the_clips(town_data, tmp_path):
    from cityenv.train.loop import NonFiniteLossError

    cfg = _config(town_data, tmp_path / "nan", steps=3)
    cfg.optim.lr = float("inf")  # the first update makes every weight non-finite
    with pytest.raises(NonFiniteLossError, match=r"at step 2 on samples \[\d+\] \(clip-\d+@\d+\)"):
        run(cfg)
    assert (tmp_path / "nan/checkpoints/step-00000001/trainer.json").is_file()


def test_fine_tuning_from_a_local_wan_folder(town_data, tmp_path):
    """init_from a Wan diffusers folder (tiny, same format): SWM's new channels start at zero and
    are trained; the text comes from the folder's UMT5."""
    import importlib.util

    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from cityenv.worldmodel.presets import load_preset

    here = HERE.parent / "worldmodel"
    spec = importlib.util.spec_from_file_location("wm_text_tests", here / "test_text.py")
    text_tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(text_tests)
    spec = importlib.util.spec_from_file_location("wm_conftest", here / "conftest.py")
    wm_conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wm_conf)

    wan = tmp_path / "wan"
    torch.manual_seed(0)
    WanTransformer3DModel(**wm_conf.WAN_TINY).save_pretrained(wan / "transformer")
    AutoencoderKLWan(**load_preset("tiny")["vae"]).save_pretrained(wan / "vae")
    tokenizer = text_tests._tiny_tokenizer()
    tokenizer.save_pretrained(wan / "tokenizer")
    text_tests._tiny_umt5(len(tokenizer)).save_pretrained(wan / "text_encoder")

    cfg = _config(town_data, tmp_path / "ft", steps=2)
    cfg.model.init_from, cfg.model.preset = str(wan), "swm-sf"
    start = build_model(cfg, ParallelBackend())
    assert float(start.transformer.plucker_embedding.weight.detach().abs().sum()) == 0.0
    run(cfg)
    tuned = load_file(str(tmp_path / "ft/checkpoints/step-00000002/trainable.safetensors"))
    assert float(tuned["plucker_embedding.weight"].abs().sum()) > 0.0  # the new input learns
    model = DiffusionWorldModel.from_pretrained(
        tmp_path / "ft/checkpoints/step-00000002/world_model", device="cpu"
    )
    assert model.text_encoder.spec["kind"] == "umt5"


def test_worker_processes_give_the_same_training(town_data, tmp_path):
    """DataLoader workers (each opens the data itself) change nothing: samples come from seeds."""
    run(_config(town_data, tmp_path / "w0", steps=2))
    cfg = _config(town_data, tmp_path / "w2", steps=2)
    cfg.data.num_workers = 2
    run(cfg)
    a = load_file(str(tmp_path / "w0/checkpoints/step-00000002/trainable.safetensors"))
    b = load_file(str(tmp_path / "w2/checkpoints/step-00000002/trainable.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_equals_the_bigger_batch(town_data, tmp_path):
    big = _config(town_data, tmp_path / "b2", steps=2)
    big.optim.batch_size = 2
    run(big)
    acc = _config(town_data, tmp_path / "a2", steps=2)
    acc.optim.grad_accum = 2
    run(acc)
    a = load_file(str(tmp_path / "b2/checkpoints/step-00000002/trainable.safetensors"))
    b = load_file(str(tmp_path / "a2/checkpoints/step-00000002/trainable.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def test_activation_checkpointing_changes_memory_not_results(town_data, tmp_path):
    plain = _config(town_data, tmp_path / "plain", steps=2)
    ckpt = _config(town_data, tmp_path / "ckpt", steps=2)
    ckpt.objective.gradient_checkpointing = True
    assert run(plain).losses == pytest.approx(run(ckpt).losses, rel=1e-6)
    a = load_file(str(tmp_path / "plain/checkpoints/step-00000002/trainable.safetensors"))
    b = load_file(str(tmp_path / "ckpt/checkpoints/step-00000002/trainable.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
