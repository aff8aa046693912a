"""``python -m cityenv.train``'s typed config: the single source of its defaults.

The dataclasses below are registered in Hydra's ConfigStore as ``train_schema``;
``configs/train.yaml`` lists it first and then only what differs, and the groups
``configs/train/{model,stage,optim,data}/`` hold presets. OmegaConf checks every override's key
and type against these dataclasses (an unknown key or a wrong type fails before any work starts,
naming the key); :func:`check_config` checks values and names that types cannot.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from cityenv.errors import ConfigError, check_name

__all__ = [
    "STAGES",
    "CheckpointConfig",
    "DataConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "ParallelConfig",
    "TrainConfig",
    "ValidationConfig",
    "check_config",
    "register_configs",
    "run_id",
]

STAGES = ("vae", "transformer")
"""Training stages: the VAE alone, or the transformer with the VAE frozen."""


@dataclass
class DataConfig:
    """Where the training pairs come from and how they are cut."""

    root: str | None = None
    """A generator output folder holding ``citydb/`` and ``clips/``
    (``python -m carla_tools.generate out=ROOT``)."""
    citydb: str | None = None
    """The CityDB folder (default ``ROOT/citydb``)."""
    clips: str | None = None
    """The clip store folder (default ``ROOT/clips``)."""
    num_references: int | None = None
    """``K`` references per sample (default: the model's ``max_references``)."""
    sink_offsets: list[int] = field(default_factory=lambda: [1, 8])
    """Range of frames after the window's end the sink frame is drawn from."""
    stride: int | None = None
    """Frames between window starts in a clip (default: the chunk length)."""
    cross_temporal: bool = True
    """References from other traversals and capture times only (false: the ablation)."""
    time_window_s: float = 1800.0
    """Panoramas captured within this many seconds of a clip are not its references."""
    size: list[int] | None = None
    """``[width, height]`` of frames and references (default: the clips' size)."""
    num_workers: int = 0
    """``DataLoader`` worker processes (each opens the data once)."""
    latent_cache: bool = False
    """Stage transformer: encode every sample with the VAE and text encoder once, before
    training, into a cache on disk, and train from it with no VAE work per step (each
    sample's sink offset is then fixed across epochs; see ``cityenv/train/latents.py``)."""
    latent_cache_dir: str | None = None
    """Folder of latent caches, one sub-folder per key of data, VAE and settings (default
    ``$CITYENV_CACHE/train-latents``, else ``~/.cache/cityenv/train-latents``)."""


@dataclass
class ModelConfig:
    """The world model that is trained."""

    preset: str = "tiny"
    """Architecture and sampling settings: tiny | small | swm-tf | swm-sf (configs/worldmodel)."""
    init_from: str | None = None
    """Start from a saved world-model folder or a local Wan diffusers folder (else random)."""
    seed: int = 0
    """Seed of the random initial weights."""
    sampling: dict[str, Any] = field(default_factory=dict)
    """Overrides of the preset's sampling settings (``chunk_frames``, ``history``, ...)."""


@dataclass
class OptimConfig:
    """AdamW, warm-up + cosine, clipping, EMA, batch sizes."""

    steps: int = 1000
    """Optimizer steps in all."""
    batch_size: int = 1
    """Samples per process per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 1e-4
    """Peak learning rate (SWM: 4.8e-5 for the 2B model)."""
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 100
    schedule: str = "cosine"
    """cosine | linear | constant_with_warmup."""
    grad_clip: float = 1.0
    """Clip the gradient's global norm (0 = off)."""
    ema_decay: float | None = 0.999
    """EMA of the weights, used by sampling and exported (null = off)."""
    mixed_precision: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""


@dataclass
class ObjectiveConfig:
    """The stage's loss."""

    drop_text: float = 0.1
    drop_references: float = 0.1
    drop_warp: float = 0.1
    episode_start: float = 0.0
    """Probability that a sample starts an episode without a start image: its history becomes
    its warp's first latent (the references, captured at other times, warped into its first
    poses: what the model's reset encodes), so the prompt, not the history, must set the
    look. Teaches prompt adherence from a reference start (0 = history always from the clip)."""
    timestep_shift: float | None = None
    """Training timestep shift (default: the model's sampler shift)."""
    gradient_checkpointing: bool = False
    """Recompute transformer blocks in the backward pass (less memory)."""
    kl_weight: float = 1e-6
    """Stage vae: weight of the KL term."""
    vae_crop: int | None = None
    """Stage vae: train on a random square crop of this many pixels (a multiple of the VAE's
    spatial ratio) of every clip instead of whole frames; the VAE is convolutional, so crops
    train it for any frame size at a fraction of the cost (null = whole frames)."""
    vae_parts: str = "all"
    """Stage vae: ``all`` trains encoder and decoder; ``decoder`` trains the decoder alone on the
    frozen encoder's latents (and keeps their latents_mean/std), so a transformer trained on
    those latents stays valid: the way to improve a shipped model's decoder later."""
    vae_decoder_base_dim: int | None = None
    """Stage vae with ``vae_parts=decoder``: replace the decoder by a fresh one of this width
    (diffusers' ``decoder_base_dim``) before training it on the frozen encoder's latents: a
    lighter, faster decoder for a trained model (null = train the model's own decoder)."""
    vae_frames: int | None = None
    """Stage vae: train on a random run of this many frames (``1 + 4n``) of every clip (null =
    the whole clip: the last history frame + the chunk)."""


@dataclass
class ParallelConfig:
    """How processes share the work (``torchrun --nproc_per_node=N -m cityenv.train``)."""

    strategy: str = "ddp"
    """ddp (replicated) | fsdp (FSDP2, sharded; for models that do not fit one GPU)."""
    device: str | None = None
    """cpu | cuda (default: cuda when available)."""


@dataclass
class CheckpointConfig:
    every: int = 500
    """Steps between checkpoints (and one at the end)."""
    keep: int = 3
    """Complete checkpoints kept."""


@dataclass
class ValidationConfig:
    """Validation passes on held-out ``test`` clips: the model and the warp baseline replay the
    same windows; static-region PSNR/SSIM go to TensorBoard and ``samples/step-<step>.json``,
    a ground truth | warp | model video to ``samples/step-<step>.mp4``."""

    every: int = 0
    """Steps between validation passes on held-out test clips (0 = only at the end, -1 = never)."""
    clips: int = 2
    """Test clips replayed per pass (a fixed, seeded choice)."""
    chunks: int = 2
    """Chunks generated per clip (a window of 1 + chunks x chunk_frames frames)."""
    seed: int = 0
    """Seeds the choice of clips and windows and the model's sampling noise."""
    video: bool = True
    """Write a side-by-side video (ground truth | warp | model)."""


@dataclass
class TrainConfig:
    """``python -m cityenv.train``: see ``docs/train.md``."""

    out: str = "outputs/train-${cityenv_run_id:}"
    """Run folder (checkpoints, TensorBoard, configs, samples); give it again to resume."""
    stage: str = "transformer"
    """vae | transformer."""
    resume: str | None = None
    """latest | a step | a checkpoint folder | auto (latest when there is one, else start)."""
    stop_at: int | None = None
    """End this run at this step with a checkpoint (the schedule still spans optim.steps);
    ``resume=latest`` continues. For jobs with a time limit."""
    seed: int = 0
    """Data order and every sample's randomness."""
    log_every: int = 10
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


def run_id() -> str:
    """One name for all ranks of a run: torchrun's run id, else the start time."""
    rid = os.environ.get("TORCHELASTIC_RUN_ID")
    if rid and rid != "none":
        return rid
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore (idempotent) and the run-id resolver in OmegaConf."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    if not OmegaConf.has_resolver("cityenv_run_id"):
        OmegaConf.register_new_resolver("cityenv_run_id", run_id)


VAE_PARTS = ("all", "decoder")
"""What stage vae trains (``objective.vae_parts``)."""


def check_config(cfg: TrainConfig) -> None:
    """Check what types cannot: names, ranges, required combinations.

    Raises:
        UnknownNameError: For an unknown stage, strategy or schedule (with "Did you mean").
        ConfigError: For a value out of range or a missing data folder setting.
    """
    check_name("stage", cfg.stage, STAGES)
    check_name("parallel.strategy", cfg.parallel.strategy, ("ddp", "fsdp"))
    check_name("optim.schedule", cfg.optim.schedule, ("cosine", "linear", "constant_with_warmup"))
    check_name("objective.vae_parts", cfg.objective.vae_parts, VAE_PARTS)
    o = cfg.optim
    bad = {
        "optim.steps": o.steps >= 1,
        "optim.batch_size": o.batch_size >= 1,
        "optim.grad_accum": o.grad_accum >= 1,
        "optim.lr": o.lr > 0,
        "optim.warmup_steps": o.warmup_steps >= 0,
        "optim.ema_decay": o.ema_decay is None or 0 <= o.ema_decay < 1,
        "checkpoint.every": cfg.checkpoint.every >= 1,
        "data.num_workers": cfg.data.num_workers >= 0,
        "data.sink_offsets": len(cfg.data.sink_offsets) == 2,
        "validation.every": cfg.validation.every >= -1,
        "validation.clips": cfg.validation.clips >= 1,
        "validation.chunks": cfg.validation.chunks >= 1,
        "objective.vae_crop": cfg.objective.vae_crop is None or cfg.objective.vae_crop >= 8,
        "objective.vae_frames": cfg.objective.vae_frames is None
        or (cfg.objective.vae_frames >= 1 and cfg.objective.vae_frames % 4 == 1),
    }
    wrong = [k for k, ok in bad.items() if not ok]
    if wrong:
        raise ConfigError(f"out of range: {', '.join(wrong)} (see docs/train.md); got {cfg}")
    d = cfg.data
    if d.root is None and (d.citydb is None or d.clips is None):
        raise ConfigError(
            "expected data.root=FOLDER (a generator output with citydb/ and clips/) or both "
            f"data.citydb and data.clips, got root={d.root}, citydb={d.citydb}, "
            f"clips={d.clips}; make data with python -m carla_tools.generate out=FOLDER."
        )
