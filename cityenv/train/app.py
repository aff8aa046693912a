"""The training run: a typed config in, the library's parts wired together, a run folder out."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from cityenv.errors import ConfigError
from cityenv.train.config import TrainConfig, check_config
from cityenv.train.data import PairSettings, TrainPairs
from cityenv.train.latents import CachedPairs, precompute_latents
from cityenv.train.loop import LoopSettings, Trainer, TrainResult, list_collate
from cityenv.train.parallel import ParallelBackend
from cityenv.train.tasks import ObjectiveSettings, TransformerTask, VAETask, vae_clip
from cityenv.train.validate import ValidationSettings, Validator
from cityenv.worldmodel.checkpoint import TrainedOn
from cityenv.worldmodel.diffusion import DiffusionWorldModel

__all__ = ["build_data", "build_model", "build_validator", "run"]

log = logging.getLogger("cityenv.train")


def build_model(cfg: TrainConfig, backend: ParallelBackend) -> DiffusionWorldModel:
    """The world model to train: ``init_from`` (a saved world model or a Wan folder) or a preset.

    Raises:
        ConfigError: If ``init_from`` is neither.
    """
    m, device = cfg.model, backend.device
    sampling = dict(m.sampling)
    if m.init_from is None:
        return DiffusionWorldModel.from_preset(m.preset, seed=m.seed, device=device, **sampling)
    path = Path(m.init_from).expanduser()
    if (path / "config.json").is_file():
        return DiffusionWorldModel.from_pretrained(path, device=device, **sampling)
    if (path / "transformer").is_dir() and (path / "vae").is_dir():
        return DiffusionWorldModel.from_wan(path, preset=m.preset, device=device, **sampling)
    raise ConfigError(
        f"model.init_from expected a world-model folder (config.json, written by "
        f"save_pretrained or by a training checkpoint's world_model/) or a local Wan diffusers "
        f"folder (transformer/ and vae/), got {str(path)!r}"
        + ("" if path.exists() else ", which does not exist")
        + "."
    )


def build_data(cfg: TrainConfig, model: DiffusionWorldModel) -> TrainPairs | CachedPairs:
    """The training pairs for ``model``'s chunk length, history and references; with
    ``data.latent_cache`` their latents, precomputed on first use (every rank calls this).

    Raises:
        ConfigError: If ``data.latent_cache`` is asked for another stage than ``transformer``.
    """
    d, s = cfg.data, model.settings
    if d.latent_cache and cfg.stage != "transformer":
        raise ConfigError(
            f"data.latent_cache=true caches the frozen VAE's latents for stage transformer, got "
            f"stage={cfg.stage} (which trains the VAE); set data.latent_cache=false."
        )
    root = Path(d.root) if d.root else None
    citydb = Path(d.citydb) if d.citydb else root / "citydb"
    clips = Path(d.clips) if d.clips else root / "clips"
    settings = PairSettings(
        chunk_frames=s.chunk_frames,
        history_frames=s.history * model.vae.temporal_ratio,
        num_references=s.max_references if d.num_references is None else d.num_references,
        sink_offsets=(int(d.sink_offsets[0]), int(d.sink_offsets[1])),
        stride=d.stride,
        cross_temporal=d.cross_temporal,
        time_window_s=d.time_window_s,
    )
    size = (int(d.size[0]), int(d.size[1])) if d.size else None
    pairs = TrainPairs(citydb, clips, settings, size=size)
    if not d.latent_cache:
        return pairs
    root = Path(d.latent_cache_dir).expanduser() if d.latent_cache_dir else None
    cache = precompute_latents(pairs, model, root, progress=cfg.progress, num_workers=d.num_workers)
    log.info("training on the latent cache %s (%d samples)", cache.folder, len(cache))
    return CachedPairs(cache, pairs)


def _task(
    cfg: TrainConfig, model: DiffusionWorldModel, data: TrainPairs | CachedPairs | None = None
) -> TransformerTask | VAETask:
    o = cfg.objective
    if cfg.stage == "vae":
        return VAETask(
            model,
            kl_weight=o.kl_weight,
            calibration=_calibration_clips(data) if o.vae_parts == "all" and data else None,
            decoder_only=o.vae_parts == "decoder",
            decoder_base_dim=o.vae_decoder_base_dim,
            crop=o.vae_crop,
            frames=o.vae_frames,
        )
    drops = {"text": o.drop_text, "references": o.drop_references, "warp": o.drop_warp}
    objective = ObjectiveSettings(
        drops, o.timestep_shift, o.gradient_checkpointing, episode_start=o.episode_start
    )
    return TransformerTask(model, objective, _trained_on(data))


def _trained_on(data: TrainPairs | CachedPairs | None) -> TrainedOn | None:
    """The data's frame size and chunk length, which the exported model records."""
    pairs = getattr(data, "pairs", None) or data  # the pairs behind a latent cache
    if not isinstance(pairs, TrainPairs):
        return None
    return TrainedOn(
        frame_size=(int(pairs.size[0]), int(pairs.size[1])),
        chunk_frames=int(pairs.settings.chunk_frames),
    )


CALIBRATION_CLIPS = 32
"""Samples (spread over the data) whose clips set the exported VAE's latents_mean/std."""


def _calibration_clips(data: TrainPairs | CachedPairs) -> Callable[[], Iterator[np.ndarray]]:
    """The VAE stage's calibration clips: :data:`CALIBRATION_CLIPS` samples evenly spread."""

    def clips() -> Iterator[np.ndarray]:
        n = len(data)
        for index in sorted({int(i) for i in np.linspace(0, n - 1, min(n, CALIBRATION_CLIPS))}):
            yield vae_clip(data.get_seeded(index, 0))

    return clips


def _loop_settings(cfg: TrainConfig) -> LoopSettings:
    o = cfg.optim
    return LoopSettings(
        steps=o.steps,
        batch_size=o.batch_size,
        grad_accum=o.grad_accum,
        lr=o.lr,
        weight_decay=o.weight_decay,
        betas=(float(o.betas[0]), float(o.betas[1])),
        warmup_steps=o.warmup_steps,
        schedule=o.schedule,
        grad_clip=o.grad_clip,
        ema_decay=o.ema_decay,
        mixed_precision=o.mixed_precision,
        seed=cfg.seed,
        num_workers=cfg.data.num_workers,
        checkpoint_every=cfg.checkpoint.every,
        keep_checkpoints=cfg.checkpoint.keep,
        log_every=cfg.log_every,
        validate_every=_validate_every(cfg),
        progress=cfg.progress,
        stop_at=cfg.stop_at,
    )


def _validate_every(cfg: TrainConfig) -> int:
    """The loop's ``validate_every``: ``validation.every`` steps; 0 = once, at the last step."""
    every = cfg.validation.every
    return every if every > 0 else (cfg.optim.steps if every == 0 else 0)


def build_validator(
    cfg: TrainConfig,
    task: TransformerTask | VAETask,
    model: DiffusionWorldModel,
    data: TrainPairs | CachedPairs,
    backend: ParallelBackend,
) -> Validator | None:
    """The validation hook (``None`` for ``validation.every=-1``); every rank builds it (the
    loop calls it on rank 0 only), so a store without usable test clips fails before training.

    Raises:
        EvaluationError: If the clip store has no test clip long enough for the windows.
    """
    v = cfg.validation
    if v.every < 0:
        return None
    data = getattr(data, "pairs", None) or data  # the pairs behind a latent cache
    settings = ValidationSettings(
        clips=v.clips,
        chunks=v.chunks,
        video=v.video,
        seed=v.seed,
        num_references=data.settings.num_references,
        time_window_s=data.settings.time_window_s,
        size=data.size,
    )
    return Validator(
        task, data.citydb_path, data.clips_path, cfg.out, model.settings.chunk_frames,
        settings, device=backend.device,
    )  # fmt: skip


def run(cfg: TrainConfig) -> TrainResult:
    """Train as ``cfg`` says; returns the result (rank 0's is the one that wrote files).

    Raises:
        ConfigError: For a bad config (see :func:`~cityenv.train.config.check_config`).
        TrainingDataError: If the data cannot make samples for the model.
        CheckpointError: If ``resume`` names no usable checkpoint.
        NonFiniteLossError: If the loss becomes NaN/inf (a checkpoint is saved first).
    """
    if not isinstance(cfg, TrainConfig):
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg))
    check_config(cfg)
    backend = ParallelBackend.from_environment(cfg.parallel.strategy, cfg.parallel.device)
    try:
        out = Path(cfg.out)
        model = build_model(cfg, backend)
        data = build_data(cfg, model)
        task = _task(cfg, model, data)
        validate = build_validator(cfg, task, model, data, backend)
        trainer = Trainer(
            task, data, _loop_settings(cfg), out, backend, collate=list_collate, validate=validate
        )
        if backend.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
            log.info(
                "training %s (%s stage) on %d samples, %d process(es) on %s -> %s",
                cfg.model.preset, cfg.stage, len(data), backend.world_size, backend.device, out,
            )  # fmt: skip
        if cfg.resume == "auto":  # continue when the folder has a checkpoint, else start
            if trainer.checkpoints.latest() is not None:
                trainer.resume("latest")
        elif cfg.resume:
            trainer.resume(cfg.resume)
        return trainer.fit()
    finally:
        backend.close()
