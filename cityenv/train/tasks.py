"""The two training stages as :class:`~cityenv.train.loop.TrainTask` objects.

- :class:`TransformerTask` (stage ``transformer``): the rectified-flow objective of
  :mod:`cityenv.worldmodel.objective` on the world model's ``CityDiT`` with independent text /
  reference / warp drops, the VAE frozen. Each sample is conditioned exactly as the model
  conditions a chunk at inference (:class:`~cityenv.worldmodel.conditioning.Conditioner`), with
  the sink a ground-truth future frame.
- :class:`VAETask` (stage ``vae``): the preset's ``AutoencoderKLWan`` on the clips' frames
  (reconstruction + KL), for presets without a pretrained VAE.

``export`` writes the user-facing world-model folder (``DiffusionWorldModel.from_pretrained``)
with the given weights (the EMA's), built from copies so training is never disturbed. The
transformer stage's folder records what it was trained on (``"trained"``:
:class:`~cityenv.worldmodel.checkpoint.TrainedOn`: the data's frame size and chunk length, the
stage and its step), so the model refuses other sizes and makes frames of its own by default.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cityenv.errors import ConfigError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose
from cityenv.train.data import TrainingDataError
from cityenv.worldmodel.checkpoint import TrainedOn, save_folder
from cityenv.worldmodel.conditioning import ChunkSequence, Conditioner, RayMaker, to_video
from cityenv.worldmodel.diffusion import DiffusionWorldModel
from cityenv.worldmodel.dit import cast_keeping_fp32
from cityenv.worldmodel.objective import (
    DEFAULT_DROP_RATES,
    flow_matching_loss,
    sample_drops,
    sample_timestep,
)
from cityenv.worldmodel.referencing import Referencer, ReferenceView
from cityenv.worldmodel.vae import VideoVAE

__all__ = [
    "LATENTS",
    "ObjectiveSettings",
    "TransformerTask",
    "VAETask",
    "encode_latents",
    "episode_start",
    "make_conditioner",
]

LATENTS = "latents"
"""Key of a sample's precomputed tensors (:class:`~cityenv.train.latents.CachedPairs`): with it,
:meth:`TransformerTask.encode` does no VAE or text-encoder work."""


@dataclass(frozen=True)
class ObjectiveSettings:
    """The transformer stage's objective.

    Attributes:
        drop_rates: Probability of dropping each condition (``text``, ``references``, ``warp``)
            per sample, independently.
        timestep_shift: Shift of the training timesteps (``None``: the model's sampler shift, so
            training visits the noise levels sampling does).
        gradient_checkpointing: Recompute each transformer block in the backward pass (less
            memory, about a third more compute).
        episode_start: Probability that a sample with a warp starts an episode without a start
            image (:func:`episode_start`): its history is replaced by its warp's first latent.
    """

    drop_rates: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_DROP_RATES))
    timestep_shift: float | None = None
    gradient_checkpointing: bool = False
    episode_start: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.episode_start <= 1.0:
            raise ConfigError(
                f"objective.episode_start is a probability in [0, 1], got {self.episode_start}."
            )


class TransformerTask:
    """Trains a world model's transformer with its VAE and text encoder frozen.

    Args:
        model: The world model (its transformer is trained in place; the other parts are used
            frozen). Training runs on ``model.device``.
        objective: Drop rates, timestep shift, activation checkpointing.
        data: What the training data is: its frame size and chunk length (the training app's
            :class:`~cityenv.train.data.TrainPairs`), recorded by :meth:`export`. ``None``:
            only the model's chunk length (``settings.chunk_frames``) is recorded.
    """

    def __init__(
        self,
        model: DiffusionWorldModel,
        objective: ObjectiveSettings,
        data: TrainedOn | None = None,
    ) -> None:
        self.model, self.objective = model, objective
        self.data = data or TrainedOn(chunk_frames=model.settings.chunk_frames)
        self.module = model.transformer
        self.module.train()
        if objective.gradient_checkpointing:
            self.module.enable_gradient_checkpointing()
        model.vae.vae.requires_grad_(False).eval()
        self.conditioner = make_conditioner(model)
        shift = objective.timestep_shift
        self.shift = float(model.scheduler.config.shift if shift is None else shift)

    def blocks(self) -> list[nn.Module]:
        """The transformer blocks (FSDP shards them one by one)."""
        return list(self.module.blocks)

    def loss(self, module: nn.Module, batch: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """The mean flow-matching loss of a list of samples (:class:`TrainPairs` dicts)."""
        losses = [self._sample_loss(module, sample) for sample in batch]
        return torch.stack(losses).mean()

    def _sample_loss(self, module: nn.Module, sample: Mapping[str, Any]) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(sample["seed"]))
        with torch.no_grad():
            sequence, targets = self.encode(sample)
        rate = self.objective.episode_start
        # drawn only when enabled, so runs without it keep their exact draws
        if rate > 0 and sequence.warp is not None and float(torch.rand((), generator=g)) < rate:
            sequence = episode_start(sequence, targets.shape[1])
        drops = sample_drops(self.objective.drop_rates, g)
        timestep = sample_timestep(g, shift=self.shift)
        noise = torch.randn(targets.shape, generator=g).to(targets.device, targets.dtype)
        return flow_matching_loss(
            module,
            sequence.drop(drops),
            targets,
            timestep=timestep,
            noise=noise,
            settings=self.model.settings,
        )

    @torch.no_grad()
    def encode(self, sample: Mapping[str, Any]) -> tuple[ChunkSequence, torch.Tensor]:
        """A sample's conditions and clean target latents ``(1, z, n, h, w)``, as at inference.

        A sample that carries precomputed tensors under :data:`LATENTS` (a
        :class:`~cityenv.train.latents.CachedPairs` sample) is assembled from them with no VAE
        or text-encoder work; the result equals the uncached one.
        """
        if LATENTS in sample:
            return self._assemble(sample)
        vae, settings, cond = self.model.vae, self.model.settings, self.conditioner
        dev, dtype, r = self.model.device, self.module.dtype, vae.temporal_ratio
        frames = np.asarray(sample["target_frames"])
        camera = _camera(sample["intrinsics"], frames.shape[2], frames.shape[1])
        targets = vae.encode_chunk(to_video(frames, dev, dtype))
        history_frames = np.asarray(sample["history_frames"])
        history = (
            vae.encode_chunk(to_video(history_frames, dev, dtype)) if len(history_frames) else None
        )
        references = _views(sample)[: settings.max_references]
        warp = None
        if references:  # as at inference: the warp joins when there is a reference
            warp = cond.encode_warp(
                np.asarray(sample["warp_frames"]), np.asarray(sample["warp_masks"])
            )
        sink = None
        if settings.use_sink:
            sink = ReferenceView(
                -1,
                np.asarray(sample["sink_frame"]),
                np.zeros(camera.shape, np.float32),
                camera,
                Pose.from_matrix(np.asarray(sample["sink_pose"])),
                "sink",
            )
        poses = np.asarray(sample["target_poses"])
        sequence = cond.sequence(
            camera=camera,
            origin=poses[0],
            target_poses=poses.reshape(-1, r, 4, 4),
            history=history,
            history_poses=np.asarray(sample["history_poses"]).reshape(-1, r, 4, 4),
            warp=warp,
            references=references,
            sink=sink,
            prompt=str(sample["caption"]),
        )
        return sequence, targets

    def _assemble(self, sample: Mapping[str, Any]) -> tuple[ChunkSequence, torch.Tensor]:
        """:meth:`encode` from precomputed tensors: only the Plücker rays are computed, with the
        very :class:`RayMaker` and layout of :meth:`Conditioner.sequence`."""
        dev, dtype = self.model.device, self.module.dtype
        t = {k: v.to(dev, dtype) for k, v in sample[LATENTS].items()}
        width, height = (int(v) for v in np.asarray(sample["frame_size"]))
        camera = _camera(sample["intrinsics"], width, height)
        (h, w), r = self.conditioner.latent_size(camera), self.model.vae.temporal_ratio
        poses = np.asarray(sample["target_poses"])
        rays = RayMaker(camera.rescaled(w, h), poses[0], r, dev, dtype)
        views = _pose_views(sample["reference_poses"], sample["reference_intrinsics"], camera)
        sink = t.get("sink")
        sequence = ChunkSequence(
            history=t["history"],
            history_rays=rays.groups(np.asarray(sample["history_poses"]).reshape(-1, r, 4, 4)),
            target_rays=rays.groups(poses.reshape(-1, r, 4, 4)),
            warp=t.get("warp"),
            sink=sink,
            sink_rays=None if sink is None else rays.views([_sink_view(sample, camera)]),
            references=t["references"],
            reference_rays=rays.views(views[: t["references"].shape[2]]),
            text=t["text"],
        )
        return sequence, t["targets"]

    def export(
        self, folder: Path, weights: Mapping[str, torch.Tensor], *, step: int | None = None
    ) -> None:
        """Write the world-model folder with ``weights`` as the transformer's, recording the
        data's frame size and chunk length, the stage and ``step`` (``"trained"``)."""
        base = _unwrap(self.module)
        transformer = type(base).from_config(base.config)  # fresh: the trained one may be sharded
        transformer.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
        if self.module.dtype != torch.float32:
            cast_keeping_fp32(transformer, self.module.dtype)
        m = self.model
        save_folder(
            folder,
            class_name=type(m).__name__,
            transformer=transformer,
            vae=m.vae,
            scheduler=m.scheduler,
            settings=m.settings,
            text_encoder=m.text_encoder.spec,
            trained=dataclasses.replace(self.data, stage="transformer", steps=step),
        )


def episode_start(sequence: ChunkSequence, latent_channels: int) -> ChunkSequence:
    """``sequence`` as the first chunk of an episode that began without a start image.

    At inference without a start image, :meth:`DiffusionWorldModel.reset` warps the references
    into the first pose and encodes that as the only history latent; the references were
    captured at another time, so the history then shows their light and weather, not the
    prompt's. Training history always comes from the clip itself and carries the clip's look,
    so a model trained only on it learns to copy the history and ignore the prompt. This
    replaces the history with the sample's warp's first latent (the same references warped into
    the chunk's first poses, cross-temporal like at inference) and its rays with the first
    target latent's, so the prompt is the only source of the target's look.

    Args:
        sequence: A sample's conditions, with a warp.
        latent_channels: ``z``: the warp carries ``z`` latent channels + its mask.

    Returns:
        A new sequence (the input is not changed).
    """
    if sequence.warp is None:
        raise ValueError("episode_start needs a sequence with a warp (the references warped).")
    return dataclasses.replace(
        sequence,
        history=sequence.warp[:, :latent_channels, :1],
        history_rays=sequence.target_rays[:, :, :1],
    )


class _VAEForward(nn.Module):
    """The VAE's encode -> sample -> decode as one ``forward`` (so DDP syncs its gradients)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, video: torch.Tensor, noise_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(video).latent_dist
        g = torch.Generator().manual_seed(int(noise_seed))
        eps = torch.randn(posterior.mean.shape, generator=g).to(posterior.mean)
        recon = self.vae.decode(posterior.mean + posterior.std * eps).sample
        return recon, posterior.kl().mean()


class VAETask:
    """Trains a world model's video VAE: reconstruction (L1 + MSE) plus a small KL term.

    Args:
        model: The world model whose VAE (``model.vae.vae``, an ``AutoencoderKLWan``) is trained.
        kl_weight: Weight of the KL divergence to the unit Gaussian.
        calibration: Clips ``(1 + 4n, H, W, 3)`` uint8 on which the export measures the latents'
            mean and std (:func:`calibrate_latents`); ``None`` keeps the config's.
        crop: Train on a random square crop of this many pixels of each clip (``None``: whole).
        frames: Train on a random run of this many frames of each clip (``None``: whole).
        decoder_only: Freeze the encoder (and its latents): train the decoder alone.
        decoder_base_dim: With ``decoder_only``: first replace the decoder by a fresh one of this
            width (:meth:`~cityenv.worldmodel.vae.VideoVAE.replace_decoder`).

    Raises:
        ConfigError: If ``crop`` is not a multiple of the VAE's spatial ratio.
    """

    def __init__(
        self,
        model: DiffusionWorldModel,
        kl_weight: float = 1e-6,
        calibration: Callable[[], Iterable[np.ndarray]] | None = None,
        crop: int | None = None,
        frames: int | None = None,
        decoder_only: bool = False,
        decoder_base_dim: int | None = None,
    ) -> None:
        self.model, self.kl_weight = model, float(kl_weight)
        if decoder_base_dim is not None:
            if not decoder_only:
                raise ConfigError(
                    "objective.vae_decoder_base_dim gives the VAE a new decoder, trained on the "
                    "frozen encoder's latents; it needs objective.vae_parts=decoder, got "
                    "vae_parts=all."
                )
            model.vae.replace_decoder(decoder_base_dim)
        self.calibration, self.crop, self.frames = calibration, crop, frames
        ratio = model.vae.spatial_ratio
        if crop is not None and crop % ratio:
            raise ConfigError(
                f"objective.vae_crop must be a multiple of the VAE's spatial ratio {ratio}, got "
                f"{crop}; use {max(ratio, crop // ratio * ratio)}"
            )
        vae = model.vae.vae.requires_grad_(True).train()
        if decoder_only:  # the latents (and their calibration) stay those of the frozen encoder
            vae.encoder.requires_grad_(False)
            vae.quant_conv.requires_grad_(False)
        self.module = _VAEForward(vae)

    def blocks(self) -> list[nn.Module]:
        return [self.module.vae.encoder, self.module.vae.decoder]

    def loss(self, module: nn.Module, batch: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """Reconstruction of each sample's last history frame + targets (a causal clip)."""
        losses = []
        for sample in batch:
            clip = self._cut(vae_clip(sample), int(sample["seed"]))
            video = to_video(clip, self.model.device, torch.float32)
            recon, kl = module(video, int(sample["seed"]))
            losses.append(F.l1_loss(recon, video) + F.mse_loss(recon, video) + self.kl_weight * kl)
        return torch.stack(losses).mean()

    def _cut(self, clip: np.ndarray, seed: int) -> np.ndarray:
        """A random run of ``frames`` frames and square crop of ``crop`` pixels of ``clip``
        ``(T, H, W, 3)``, drawn from the sample's seed (so resumed runs cut alike)."""
        rng = np.random.default_rng(seed)
        t, h, w = clip.shape[:3]
        if self.frames is not None and self.frames < t:
            start = int(rng.integers(0, t - self.frames + 1))
            clip = clip[start : start + self.frames]
        if self.crop is not None and self.crop < min(h, w):
            y, x = (int(rng.integers(0, n - self.crop + 1)) for n in (h, w))
            clip = clip[:, y : y + self.crop, x : x + self.crop]
        return np.ascontiguousarray(clip)

    def export(
        self, folder: Path, weights: Mapping[str, torch.Tensor], *, step: int | None = None
    ) -> None:
        """Write the world-model folder with ``weights`` (of ``vae.*``) as the VAE's.

        The model's ``"trained"`` record is kept as it was: it describes the transformer, which
        this stage leaves alone (a VAE trained from a preset records nothing; the VAE itself is
        convolutional and works at any multiple of its ratio). ``step`` is not recorded.
        """
        m = self.model
        vae = copy.copy(m.vae)
        vae.vae = type(self.module.vae).from_config(self.module.vae.config)
        vae.vae.load_state_dict({k.removeprefix("vae."): v for k, v in weights.items()})
        vae.vae.to(self.model.device)
        if self.calibration is not None:
            vae = calibrate_latents(vae, self.calibration())
        save_folder(
            folder,
            class_name=type(m).__name__,
            transformer=m.transformer,
            vae=vae,
            scheduler=m.scheduler,
            settings=m.settings,
            text_encoder=m.text_encoder.spec,
            trained=m.trained,
        )


@torch.no_grad()
def calibrate_latents(vae: VideoVAE, videos: Iterable[np.ndarray]) -> VideoVAE:
    """``vae`` with ``latents_mean``/``latents_std`` measured on ``videos``, so the diffusion
    model works on latents of zero mean and unit variance per channel (as with Wan's VAE).

    Args:
        vae: The trained VAE (its config's current mean/std are ignored).
        videos: Clips ``(T, H, W, 3)`` uint8, ``T = 1 + 4n``.

    Returns:
        A new :class:`VideoVAE` around ``vae.vae`` with the measured statistics in its config.

    Raises:
        TrainingDataError: If ``videos`` is empty.
    """
    raw = vae.vae.eval()
    total, total_sq, count = 0.0, 0.0, 0
    for frames in videos:
        video = to_video(np.asarray(frames), vae.device, vae.dtype)
        mu = raw.encode(video).latent_dist.mean.double()  # (1, z, t, h, w), unnormalised
        total = total + mu.sum(dim=(0, 2, 3, 4))
        total_sq = total_sq + (mu**2).sum(dim=(0, 2, 3, 4))
        count += mu[:, 0].numel()
    if count == 0:
        raise TrainingDataError(
            "latent calibration expected at least one clip to measure the VAE's latents on, got "
            "none; check the training data"
        )
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(1e-12).sqrt()
    raw.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
    return VideoVAE(raw)


def make_conditioner(model: DiffusionWorldModel) -> Conditioner:
    """The conditioner training encodes samples with: the model's VAE and text encoder, on its
    device in the transformer's dtype, with no reference cache (every sample brings its own)."""
    return Conditioner(
        vae=model.vae,
        referencer=Referencer(cache_size=0),
        text_encoder=model.text_encoder,
        text_dim=model.transformer.config.text_dim,
        device=model.device,
        dtype=model.transformer.dtype,
        reference_cache=0,  # every sample brings its own references
    )


@torch.no_grad()
def encode_latents(
    model: DiffusionWorldModel, conditioner: Conditioner, sample: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """Everything :meth:`TransformerTask.encode` computes with the VAE and the text encoder
    (the latent cache's content).

    Args:
        model: The world model (its VAE, text encoder and sampling settings).
        conditioner: :func:`make_conditioner` of ``model``.
        sample: A :class:`~cityenv.train.data.TrainPairs` sample.

    Returns:
        Tensors on the model's device in the transformer's dtype (``n`` target latents,
        ``Hh`` history latents, ``K' <= max_references`` references): ``targets``
        ``(1, z, n, h, w)``, ``history`` ``(1, z, Hh, h, w)``, ``references``
        ``(1, z, K', h, w)``, ``text`` ``(1, S, D)``, and where ``encode`` makes them
        ``warp`` ``(1, z + 1, n, h, w)`` (only with a reference) and ``sink``
        ``(1, z, 1, h, w)`` (only with ``use_sink``).
    """
    vae, cond, settings = model.vae, conditioner, model.settings
    dev, dtype = conditioner.device, conditioner.dtype
    frames = np.asarray(sample["target_frames"])
    camera = _camera(sample["intrinsics"], frames.shape[2], frames.shape[1])
    (h, w), z = cond.latent_size(camera), vae.latent_channels
    history_frames = np.asarray(sample["history_frames"])
    out = {
        "targets": vae.encode_chunk(to_video(frames, dev, dtype)),
        "history": vae.encode_chunk(to_video(history_frames, dev, dtype))
        if len(history_frames)
        else torch.zeros(1, z, 0, h, w, device=dev, dtype=dtype),
        "text": cond.text_embedding(str(sample["caption"])),
    }
    references = _views(sample)[: settings.max_references]
    out["references"] = torch.cat(
        [out["history"][:, :, :0], *(cond.encode_reference(v, camera) for v in references)], 2
    )
    if references:
        warps, masks = np.asarray(sample["warp_frames"]), np.asarray(sample["warp_masks"])
        out["warp"] = cond.encode_warp(warps, masks)
    if settings.use_sink:
        out["sink"] = cond.encode_reference(_sink_view(sample, camera), camera)
    return out


def vae_clip(sample: Mapping[str, Any]) -> np.ndarray:
    """The clip the VAE stage reconstructs: the last history frame + the targets, ``(1 + L, H,
    W, 3)`` uint8 (a causal clip of ``1 + 4n`` frames)."""
    return np.concatenate([sample["history_frames"][-1:], sample["target_frames"]])


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def _camera(intrinsics: Any, width: int, height: int) -> PinholeCamera:
    fx, fy, cx, cy = (float(v) for v in np.asarray(intrinsics).reshape(4))
    return PinholeCamera(int(width), int(height), fx, fy, cx, cy)


def _views(sample: Mapping[str, Any]) -> list[ReferenceView]:
    """The sample's references as views at the frame size (depth unused by the conditioner)."""
    images = np.asarray(sample["reference_images"])
    out = []
    for i in range(len(images)):
        h, w = images[i].shape[:2]
        camera = _camera(sample["reference_intrinsics"][i], w, h)
        pose = Pose.from_matrix(np.asarray(sample["reference_poses"][i]))
        view_id = int(sample["reference_view_ids"][i])
        out.append(ReferenceView(view_id, images[i], np.zeros((h, w), np.float32), camera, pose))
    return out


def _sink_view(sample: Mapping[str, Any], camera: PinholeCamera) -> ReferenceView:
    """The sink frame as a view through the target camera (``encode``'s own construction; a
    cached sample has no ``sink_frame``, and its rays need only the pose and camera)."""
    image = sample.get("sink_frame")
    image = np.zeros((camera.height, camera.width, 3), np.uint8) if image is None else image
    pose = Pose.from_matrix(np.asarray(sample["sink_pose"]))
    return ReferenceView(
        -1, np.asarray(image), np.zeros(camera.shape, np.float32), camera, pose, "sink"
    )


def _pose_views(poses: Any, intrinsics: Any, frame: PinholeCamera) -> list[ReferenceView]:
    """References as image-less views (only their poses and cameras at the frame size): what
    :meth:`RayMaker.views` reads."""
    out = []
    for matrix, k in zip(np.asarray(poses), np.asarray(intrinsics), strict=True):
        camera = _camera(k, frame.width, frame.height)
        empty = np.zeros((0, 0, 3), np.uint8)
        out.append(
            ReferenceView(-1, empty, np.zeros((0, 0), np.float32), camera, Pose.from_matrix(matrix))
        )
    return out
