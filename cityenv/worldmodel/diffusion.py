"""The SWM-style diffusion world model: retrieval-augmented autoregressive video diffusion.

Per chunk of ``L`` frames (``L`` a multiple of the VAE's temporal ratio ``r``, 4 for Wan's VAE,
so ``n = L / r`` latents) :class:`DiffusionWorldModel`:

1. forward-splats each frame's nearest reference into its camera
   (:class:`~cityenv.worldmodel.referencing.Referencer`) and VAE-encodes the warped video and its
   validity mask (geometric referencing);
2. encodes up to ``K`` references and the lookahead sink (the retrieved view nearest the chunk's
   endpoint) to one latent each (semantic referencing), with their cameras as Plücker rays
   relative to the chunk's first frame (:class:`~cityenv.worldmodel.conditioning.Conditioner`);
3. takes the last ``H`` clean latents of the previous chunks as history;
4. denoises ``n`` target latents with :class:`~diffusers.FlowMatchEulerDiscreteScheduler`
   through :class:`~cityenv.worldmodel.dit.CityDiT` (context tokens at t=0), with
   classifier-free guidance whose unconditional branch drops any of text, references and warp
   (:mod:`cityenv.worldmodel.sampling`);
5. decodes the targets with a streaming VAE decoder, so consecutive chunks meet without seams.

The model is a composition of parts passed in (transformer, VAE, scheduler, text encoder,
referencer, settings); :meth:`~DiffusionWorldModel.from_preset`,
:meth:`~DiffusionWorldModel.from_pretrained`, :meth:`~DiffusionWorldModel.from_wan` and
:meth:`~DiffusionWorldModel.create` build the parts. The first frame comes from a start image
(its weather and cars carry on) or, without one, from the references (warped as the warp model
does). :meth:`DiffusionWorldModel.interpolate` turns sparse keyframes into a video with SWM's
intermittent freeze-frame layout. Presets live in ``configs/worldmodel/``
(:mod:`cityenv.worldmodel.presets`), the folder format in :mod:`cityenv.worldmodel.checkpoint`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from cityenv.errors import InvalidOptionError, ShapeMismatchError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose, Trajectory
from cityenv.worldmodel.base import ChunkOutput, ChunkReferences, WorldModel
from cityenv.worldmodel.checkpoint import TrainedOn, load_folder, refuse_pickles, save_folder
from cityenv.worldmodel.conditioning import (
    PLUCKER_CHANNELS,
    ChunkSequence,
    Conditioner,
    to_uint8,
    to_video,
)
from cityenv.worldmodel.dit import CityDiT, cast_keeping_fp32
from cityenv.worldmodel.freeze import encode_keyframes, plan_freeze_frames
from cityenv.worldmodel.options import DiffusionOptions
from cityenv.worldmodel.presets import PRESETS, load_preset
from cityenv.worldmodel.referencing import Referencer
from cityenv.worldmodel.sampling import denoise, initial_noise, with_shift
from cityenv.worldmodel.settings import CONDITIONS, SamplingSettings
from cityenv.worldmodel.shipped import shipped_model_path
from cityenv.worldmodel.text import LazyTextEncoder, TextEncoder, as_dtype
from cityenv.worldmodel.vae import VideoVAE
from cityenv.worldmodel.warp import first_frame

__all__ = [
    "CONDITIONS",
    "PRESETS",
    "ChunkSequence",
    "DiffusionOptions",
    "DiffusionWorldModel",
    "SamplingSettings",
    "TrainedOn",
    "load_preset",
]


@dataclass
class _Stream:
    """The episode so far: clean latents with the poses of the frames each latent covers."""

    latents: list[torch.Tensor] = field(default_factory=list)  # each (1, z, 1, h, w)
    poses: list[np.ndarray] = field(default_factory=list)  # each (r, 4, 4)

    def push(self, latents: torch.Tensor, poses: np.ndarray, keep: int) -> None:
        for i in range(latents.shape[2]):
            self.latents.append(latents[:, :, i : i + 1])
            self.poses.append(poses[i])
        del self.latents[:-keep], self.poses[:-keep]

    def last(self, count: int) -> tuple[torch.Tensor | None, np.ndarray]:
        """The last ``count`` latents ``(1, z, c, h, w)`` (``None`` if none) and their poses."""
        if count <= 0 or not self.latents:
            return None, np.zeros((0, 4, 4))
        return torch.cat(self.latents[-count:], dim=2), np.asarray(self.poses[-count:])


class DiffusionWorldModel(WorldModel):
    """SWM's retrieval-augmented autoregressive video diffusion behind the WorldModel interface.

    Build it with :meth:`from_preset` (random weights), :meth:`from_pretrained` (a folder written
    by :meth:`save_pretrained`), :meth:`from_wan` (a local diffusers Wan 2.1/2.2 folder) or
    :meth:`create` (the environment's factory); or pass the parts in yourself.

    Args:
        transformer: The denoiser.
        vae: The video VAE (its temporal and spatial ratios set the chunk and frame sizes).
        scheduler: The flow-matching sampler (``settings.shift``, when set, replaces its shift).
        text_encoder: This model's own text encoder (a :class:`LazyTextEncoder` loads on the
            first prompt); a mapping is taken as a :class:`LazyTextEncoder` spec.
        settings: Chunk and sampling settings.
        referencer: Prepares and warps references (``None``: a new one).
        device: Where the models run (``None``: CUDA when available).
        reference_cache: Encoded reference latents kept in memory.
        trained: What the model was trained on (``None``: unknown, as for random weights);
            :meth:`from_pretrained` reads it from the folder, :meth:`save_pretrained` writes it.

    Attributes:
        trained: See above. A recorded frame size or chunk length is enforced by
            :meth:`check_settings`, and the frame size is :attr:`native_size`.
        checkpoint: The folder :meth:`from_pretrained` loaded (``None`` otherwise).

    Raises:
        ShapeMismatchError: If the parts do not fit together (latent or ray channels).
        InvalidOptionError: If ``settings.chunk_frames`` is not a multiple of the VAE's ratio.
    """

    def __init__(
        self,
        *,
        transformer: CityDiT,
        vae: VideoVAE,
        scheduler: FlowMatchEulerDiscreteScheduler,
        text_encoder: TextEncoder | Mapping[str, Any],
        settings: SamplingSettings | None = None,
        referencer: Referencer | None = None,
        device: str | torch.device | None = None,
        reference_cache: int = 64,
        trained: TrainedOn | None = None,
    ) -> None:
        self.settings = settings or SamplingSettings()
        _check_parts(transformer, vae, self.settings)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.transformer = transformer.to(self.device).eval()
        self.vae = vae
        self.vae.vae.to(self.device).eval()
        self.scheduler = with_shift(scheduler, self.settings.shift)
        if not isinstance(text_encoder, TextEncoder):
            text_encoder = LazyTextEncoder(text_encoder)
        self.text_encoder = text_encoder.to(self.device)
        self.referencer = referencer if referencer is not None else Referencer()
        self.conditioner = Conditioner(
            vae=vae,
            referencer=self.referencer,
            text_encoder=self.text_encoder,
            text_dim=transformer.config.text_dim,
            device=self.device,
            dtype=self._dtype,
            reference_cache=reference_cache,
        )
        self._decoder = vae.streaming_decoder()
        self._stream = _Stream()
        self._generator = torch.Generator("cpu").manual_seed(0)
        self.camera: PinholeCamera | None = None
        self.reset_info: dict[str, Any] = {}
        self.checkpoint: Path | None = None  # the folder of from_pretrained (a trained model)
        self.trained = trained

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_preset(
        cls,
        name: str = "tiny",
        *,
        seed: int = 0,
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | str | None = None,
        **settings: Any,
    ) -> DiffusionWorldModel:
        """A randomly initialised model of a preset (``tiny``, ``small``, ``swm-tf``, ``swm-sf``).

        Args:
            name: The preset (``configs/worldmodel/<name>.yaml``).
            seed: Seeds the initial weights (the global RNG is left as it was).
            device: See the class.
            torch_dtype: Weight dtype (``None``: float32).
            **settings: Overrides of the preset's :class:`SamplingSettings`.
        """
        cfg = load_preset(name)
        torch_dtype = _dtype(torch_dtype)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            transformer = CityDiT(**cfg["transformer"])
            vae = VideoVAE.from_config(cfg["vae"])
        if torch_dtype is not None:
            cast_keeping_fp32(transformer, torch_dtype)
            cast_keeping_fp32(vae.vae, torch_dtype)
        return cls._assemble(cfg, transformer, vae, cfg.get("text_encoder", {}), device, settings)

    @classmethod
    def create(
        cls,
        path: str | Path | DiffusionOptions | Mapping[str, Any] | None = None,
        **options: Any,
    ) -> DiffusionWorldModel:
        """The environment's factory (``world_model="diffusion"``), from checked options.

        Called as ``create(**world_model_options)``: ``path`` (a folder written by
        :meth:`save_pretrained`), ``preset`` (random weights of a preset, with a warning: the
        frames are noise until a trained model is used; with neither, the shipped model of the
        built-in town, :func:`~cityenv.worldmodel.shipped.shipped_model_path`),
        ``seed``, ``device``, ``torch_dtype`` and any :class:`SamplingSettings` override. A
        :class:`DiffusionOptions` (or a mapping of it) may be passed as the first argument
        instead.

        Raises:
            UnknownOptionError: If an option is unknown (with "Did you mean").
            InvalidOptionError: If an option has the wrong type.
        """
        if isinstance(path, (DiffusionOptions, Mapping)):
            opts = DiffusionOptions.coerce(path, **options)
        else:
            opts = DiffusionOptions.coerce({"path": path, **options})
        if opts.path is not None or opts.preset is None:
            path = shipped_model_path() if opts.path is None else opts.path
            return cls.from_pretrained(
                path, device=opts.device, torch_dtype=opts.torch_dtype, **opts.sampling
            )
        warnings.warn(
            f"world_model='diffusion' without a path: random weights of the {opts.preset!r} "
            "preset, so frames are noise; pass world_model_options={'path': <a saved model "
            "folder>}.",
            stacklevel=2,
        )
        return cls.from_preset(
            opts.preset,
            seed=opts.seed,
            device=opts.device,
            torch_dtype=opts.torch_dtype,
            **opts.sampling,
        )

    @classmethod
    def from_wan(
        cls,
        path: str | Path,
        *,
        preset: str = "swm-sf",
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | str | None = None,
        **settings: Any,
    ) -> DiffusionWorldModel:
        """A model whose backbone, VAE and text encoder come from a local diffusers Wan folder.

        The folder is a Wan 2.1/2.2 text-to-video diffusers folder (``transformer/``, ``vae/``,
        ``text_encoder/`` + ``tokenizer/`` with UMT5); SWM's new input channels start at zero
        (the Plücker channels sized by the VAE's temporal ratio). The sampling and scheduler
        settings come from ``preset``. Nothing is downloaded.
        """
        path, torch_dtype = Path(path), _dtype(torch_dtype)
        refuse_pickles(path)
        cfg = load_preset(preset)
        vae = VideoVAE.from_pretrained(path / "vae", torch_dtype=torch_dtype)
        transformer = CityDiT.from_wan(
            path,
            plucker_channels=PLUCKER_CHANNELS * vae.temporal_ratio,
            torch_dtype=torch_dtype,
        )
        return cls._assemble(cfg, transformer, vae, _wan_text(cfg, path), device, settings)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | str | None = None,
        **settings: Any,
    ) -> DiffusionWorldModel:
        """Load a folder written by :meth:`save_pretrained` (safetensors only).

        Args:
            path: The folder (:mod:`cityenv.worldmodel.checkpoint`).
            device: See the class.
            torch_dtype: Weight dtype (``None``: as saved).
            **settings: Overrides of the saved :class:`SamplingSettings`.

        Raises:
            CheckpointError: If the folder is not such a folder or holds pickled weights.
        """
        folder = load_folder(path, class_name=cls.__name__, torch_dtype=_dtype(torch_dtype))
        model = cls(
            transformer=folder.transformer,
            vae=folder.vae,
            scheduler=folder.scheduler,
            text_encoder=LazyTextEncoder(folder.text_encoder),
            settings=SamplingSettings.from_mapping(folder.sampling, **settings),
            referencer=Referencer(),
            device=device,
            trained=folder.trained,
        )
        model.checkpoint = folder.path
        return model

    @classmethod
    def _assemble(
        cls,
        cfg: Mapping[str, Any],
        transformer: CityDiT,
        vae: VideoVAE,
        text: Mapping[str, Any],
        device: str | torch.device | None,
        settings: Mapping[str, Any],
    ) -> DiffusionWorldModel:
        """The model of a preset's scheduler, text and sampling groups around built parts."""
        return cls(
            transformer=transformer,
            vae=vae,
            scheduler=FlowMatchEulerDiscreteScheduler(**cfg.get("scheduler", {})),
            text_encoder=LazyTextEncoder(text),
            settings=SamplingSettings.from_mapping(cfg.get("sampling", {}), **settings),
            referencer=Referencer(),
            device=device,
        )

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the model to one folder: ``config.json`` + ``transformer/``, ``vae/`` and
        ``scheduler/`` (safetensors and diffusers configs). The text encoder is not copied: its
        kind and local path are recorded; so is :attr:`trained`, when known.

        Returns:
            The folder.
        """
        return save_folder(
            path,
            class_name=type(self).__name__,
            transformer=self.transformer,
            vae=self.vae,
            scheduler=self.scheduler,
            settings=self.settings,
            text_encoder=self.text_encoder.spec,
            trained=self.trained,
        )

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | str | None = None
    ) -> DiffusionWorldModel:
        """Move this model's own parts (transformer, VAE, text encoder) to ``device`` and cast the
        transformer and VAE to ``dtype`` (keeping Wan's float32 modules); returns ``self``.

        Only this model's parts move: another model's never do. Cached latents are dropped and
        the episode ends (call :meth:`reset` again).
        """
        if dtype is not None:
            dtype = as_dtype(dtype)
            cast_keeping_fp32(self.transformer, dtype)
            cast_keeping_fp32(self.vae.vae, dtype)
        if device is not None:
            self.device = torch.device(device)
            self.transformer.to(self.device)
            self.vae.vae.to(self.device)
            self.text_encoder.to(self.device)
        self.conditioner.to(self.device, self._dtype)
        self._stream, self.camera = _Stream(), None
        self._decoder.reset()
        return self

    # --- WorldModel API -------------------------------------------------------------------------
    @property
    def native_size(self) -> tuple[int, int] | None:
        """``(width, height)`` the model was trained on (:attr:`trained`), or ``None``."""
        return None if self.trained is None else self.trained.frame_size

    def check_settings(self, camera: PinholeCamera, chunk_length: int) -> None:
        """A model that records what it was trained on (:attr:`trained`) takes only that frame
        size and chunk length. Otherwise frames must be multiples of the VAE's spatial ratio
        times the patch (16 pixels for the presets) and chunks multiples of its temporal ratio
        (4 frames); a loaded model (:attr:`checkpoint`) that does not record its chunk length
        warns at another one than its settings' ``chunk_frames``.

        Raises:
            ShapeMismatchError: Saying what the model was trained on, what came, and which
                values to use instead.
        """
        self._check_trained(camera, chunk_length)
        self._check_camera(camera)
        _num_latents(chunk_length, self.vae.temporal_ratio)
        recorded = self.trained is not None and self.trained.chunk_frames is not None
        if (
            self.checkpoint is not None
            and not recorded
            and chunk_length != self.settings.chunk_frames
        ):
            warnings.warn(
                f"chunk_length={chunk_length} differs from the {self.settings.chunk_frames}-frame "
                "chunks this model was set up for (SamplingSettings.chunk_frames); a trained "
                "model may follow the camera less well at another length.",
                stacklevel=2,
            )

    def reset(
        self,
        *,
        pose: Pose,
        camera: PinholeCamera,
        references: ChunkReferences,
        start_image: np.ndarray | None = None,
        prompt: str | None = None,
        generator: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Start an episode; see :meth:`WorldModel.reset`.

        The first frame is ``start_image`` (resized to ``camera``) or, without one, the
        references warped into ``pose`` (:func:`~cityenv.worldmodel.warp.first_frame`); it is
        encoded as the first history latent. ``generator`` seeds the sampling noise of the
        episode.

        Returns:
            The first frame, uint8 ``(H, W, 3)``.

        Raises:
            ShapeMismatchError: If the camera's size is not a multiple of the VAE's spatial
                ratio times the patch (16 pixels for the presets).
        """
        self._check_camera(camera)
        self.camera, self.prompt = camera, prompt
        seed = 0 if generator is None else int(generator.integers(2**62))
        self._generator = torch.Generator("cpu").manual_seed(seed)
        first, info = first_frame(self.referencer, pose, camera, references, start_image)
        latent = self.vae.encode(to_video(first[None], self.device, self._dtype))
        self._stream = _Stream()
        r = self.vae.temporal_ratio  # the first latent holds one frame: its pose fills the group
        self._stream.push(latent, np.repeat(pose.matrix[None, None], r, axis=1), self._keep)
        self._decoder.reset()
        with torch.no_grad():
            self._decoder.decode(latent)  # primes the causal cache: later chunks continue it
        self.reset_info = {"source": info["source"]}
        return first

    def generate(self, trajectory: Trajectory, references: ChunkReferences) -> ChunkOutput:
        """Generate one chunk; see :meth:`WorldModel.generate`.

        Args:
            trajectory: ``L`` camera-to-world poses, ``L`` a multiple of the VAE's temporal
                ratio (4).
            references: The chunk's loaded references.

        Returns:
            ``frames`` uint8 ``(L, H, W, 3)``; ``warps``/``masks`` the geometric-referencing
            input; ``info``: ``encode_s``, ``denoise_s``, ``decode_s``, ``total_s``,
            ``num_tokens``, ``references_used``, ``sink``, ``history``, ``steps``,
            ``prompt_used``.
        """
        camera = self._require_camera()
        start = time.perf_counter()
        r = self.vae.temporal_ratio
        n = _num_latents(len(trajectory), r)
        with torch.no_grad():
            warps, masks = self.warp(trajectory, references)
            seq = self.condition(trajectory, references, warps=warps, masks=masks)
            encode_s = time.perf_counter() - start
            latents = denoise(self.transformer, self.scheduler, seq, self.noise(n), self.settings)
            denoise_s = time.perf_counter() - start - encode_s
            video = self._decoder.decode(latents)
        frames = to_uint8(video)
        self._stream.push(latents, trajectory.matrices.reshape(n, r, 4, 4), self._keep)
        total = time.perf_counter() - start
        info = {
            "encode_s": encode_s,
            "denoise_s": denoise_s,
            "decode_s": total - encode_s - denoise_s,
            "total_s": total,
            "num_tokens": seq.layout.num_frames * self._tokens_per_frame(camera),
            "references_used": int(seq.references.shape[2]),
            "sink": seq.sink is not None,
            "history": int(seq.history.shape[2]),
            "steps": self.settings.num_inference_steps,
            "prompt_used": bool(self.prompt),
        }
        return ChunkOutput(frames, warps, masks, references, info)

    def interpolate(
        self,
        keyframes: np.ndarray,
        key_times: Sequence[int],
        trajectory: Trajectory,
        references: ChunkReferences | None = None,
    ) -> np.ndarray:
        """Intermittent freeze-frame interpolation: ``N`` keyframes -> a ``T``-frame video.

        Each keyframe after the first is repeated ``r`` times (the VAE's temporal ratio) so it
        encodes to one clean latent (:func:`~cityenv.worldmodel.freeze.plan_freeze_frames`);
        those latents stay at t=0 while the others are denoised; after decoding the duplicates
        are dropped. Call :meth:`reset` first (it sets the camera and the noise seed).

        Args:
            keyframes: uint8 ``(N, H, W, 3)``.
            key_times: ``(N,)`` frame index of each keyframe in the output, the first 0.
            trajectory: The ``T`` output frames' poses.
            references: Optional references (semantic referencing and sink only).

        Returns:
            uint8 ``(T, H, W, 3)``.
        """
        camera = self._require_camera()
        plan = plan_freeze_frames(
            key_times, len(trajectory), temporal_ratio=self.vae.temporal_ratio
        )
        keyframes = np.asarray(keyframes)
        want = (plan.num_keyframes, camera.height, camera.width, 3)
        if keyframes.shape != want or keyframes.dtype != np.uint8:
            raise ShapeMismatchError(
                f"keyframes: expected uint8 {want} (one per key time, at the camera's size), got "
                f"{keyframes.dtype} {keyframes.shape}; resize them to the frame size first."
            )
        keys = to_video(keyframes, self.device, self._dtype)  # (1, 3, N, H, W)
        with torch.no_grad():
            clean = encode_keyframes(self.vae, keys)
            groups = plan.latent_pose_groups(trajectory.matrices)
            refs = references or ChunkReferences.none(len(trajectory))
            seq = self._sequence(groups, refs, None, trajectory.matrices[0], history=False)
            seq.clean_targets = torch.as_tensor(plan.clean_latents)
            noise = self.noise(plan.num_latents)
            noise[:, :, seq.clean_targets] = clean
            latents = denoise(self.transformer, self.scheduler, seq, noise, self.settings)
            video = self.vae.decode(latents)
        return to_uint8(plan.drop_duplicates(video))

    # --- the chunk's parts (public for tests, analysis and training code) ----------------------
    def warp(
        self, trajectory: Trajectory, references: ChunkReferences
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each frame's nearest reference forward-splatted into it: warps uint8 ``(L, H, W, 3)``
        and masks bool ``(L, H, W)`` (zeros / false where nothing landed).

        Raises:
            ShapeMismatchError: If ``references.per_frame`` does not have one entry per pose.
        """
        camera = self._require_camera()
        prepared = self.referencer.prepare_chunk(references, len(trajectory), camera)
        return self.referencer.warp_nearest(prepared, trajectory.matrices, camera)

    def condition(
        self,
        trajectory: Trajectory,
        references: ChunkReferences,
        *,
        warps: np.ndarray | None = None,
        masks: np.ndarray | None = None,
    ) -> ChunkSequence:
        """The next chunk's conditions (what :meth:`generate` samples from), after :meth:`reset`.

        Args:
            trajectory: The chunk's ``L`` poses.
            references: Its references (the first ``max_references`` and, with ``use_sink``, the
                sink are encoded; the warp is used when there is a reference). Conditions in
                ``settings.ablate`` are then dropped.
            warps: :meth:`warp`'s output, if already made (computed otherwise).
            masks: Its masks.
        """
        self._require_camera()
        matrices = trajectory.matrices
        groups = matrices.reshape(-1, self.vae.temporal_ratio, 4, 4)
        warp = None
        if references.views:
            if warps is None or masks is None:
                warps, masks = self.warp(trajectory, references)
            warp = self.conditioner.encode_warp(warps, masks)
        seq = self._sequence(groups, references, warp, matrices[0], history=True)
        # settings.ablate: conditions withheld in every branch (City-Bench's ablations)
        return seq.drop(self.settings.ablate) if self.settings.ablate else seq

    def noise(self, num_latents: int) -> torch.Tensor:
        """Initial noise ``(1, z, n, h, w)`` of ``n`` latents at the camera's size, from the
        episode's generator (seeded by :meth:`reset`)."""
        h, w = self.conditioner.latent_size(self._require_camera())
        shape = (1, self.vae.latent_channels, num_latents, h, w)
        return initial_noise(shape, self._generator, self.device, self._dtype)

    @property
    def num_parameters(self) -> int:
        """Parameters of the transformer and the VAE."""
        modules = (self.transformer, self.vae.vae)
        return sum(p.numel() for m in modules for p in m.parameters())

    # --- helpers --------------------------------------------------------------------------------
    def _sequence(
        self,
        target_poses: np.ndarray,
        references: ChunkReferences,
        warp: torch.Tensor | None,
        origin: np.ndarray,
        *,
        history: bool,
    ) -> ChunkSequence:
        """The conditioner's sequence with this model's history, settings and prompt."""
        past, past_poses = self._stream.last(self.settings.history if history else 0)
        return self.conditioner.sequence(
            camera=self._require_camera(),
            origin=origin,
            target_poses=target_poses,
            history=past,
            history_poses=past_poses,
            warp=warp,
            references=references.views[: self.settings.max_references],
            sink=references.sink if self.settings.use_sink else None,
            prompt=self.prompt,
        )

    @property
    def _dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def _keep(self) -> int:
        return max(self.settings.history, 1)

    @property
    def _frame_multiple(self) -> tuple[int, int]:
        """Pixels a frame's height and width must be multiples of: VAE ratio times patch."""
        _, p_h, p_w = self.transformer.config.patch_size
        s = self.vae.spatial_ratio
        return s * p_h, s * p_w

    def _check_trained(self, camera: PinholeCamera, chunk_length: int) -> None:
        """Refuse a frame size or chunk length other than the recorded training ones."""
        t = self.trained
        if t is None:
            return
        size = (camera.width, camera.height)
        wrong_size = t.frame_size is not None and size != tuple(t.frame_size)
        wrong_chunk = t.chunk_frames is not None and chunk_length != t.chunk_frames
        if not (wrong_size or wrong_chunk):
            return
        trained, got, fix = [], [], []
        if t.frame_size is not None:
            trained.append(f"{t.frame_size[0]} x {t.frame_size[1]} frames")
        if t.chunk_frames is not None:
            trained.append(f"{t.chunk_frames}-frame chunks")
        if wrong_size:
            got.append(f"{camera.width} x {camera.height} frames")
            fix.append(f"width={t.frame_size[0]}, height={t.frame_size[1]}")
        if wrong_chunk:
            got.append(f"{chunk_length}-frame chunks")
            fix.append(f"chunk_length={t.chunk_frames}")
        where = f" ({self.checkpoint})" if self.checkpoint is not None else ""
        raise ShapeMismatchError(
            f"this model{where} was trained on {' in '.join(trained)}; got {' in '.join(got)}: "
            f"make the env with {', '.join(fix)}"
            + (" (or leave width and height unset: the model's own size)" if wrong_size else "")
            + "."
        )

    def _check_camera(self, camera: PinholeCamera) -> None:
        m_h, m_w = self._frame_multiple
        if camera.width % m_w or camera.height % m_h:
            size = f"{m_w}" if m_h == m_w else f"{m_w} (width) and {m_h} (height)"
            raise ShapeMismatchError(
                f"the diffusion world model needs frame sizes that are multiples of {size} "
                f"pixels, got {camera.width}x{camera.height}; use e.g. "
                f"{camera.width // m_w * m_w or m_w}x{camera.height // m_h * m_h or m_h}."
            )

    def _tokens_per_frame(self, camera: PinholeCamera) -> int:
        h, w = self.conditioner.latent_size(camera)
        _, p_h, p_w = self.transformer.config.patch_size
        return (h // p_h) * (w // p_w)

    def _require_camera(self) -> PinholeCamera:
        if self.camera is None:
            raise RuntimeError("call reset() before generate(): the model needs the camera.")
        return self.camera


def _check_parts(transformer: CityDiT, vae: VideoVAE, settings: SamplingSettings) -> None:
    """Raise if the transformer, the VAE and the settings do not fit together."""
    cfg, z, r = transformer.config, vae.latent_channels, vae.temporal_ratio
    warp = z if cfg.warp_channels is None else cfg.warp_channels
    wanted = {
        "latent_channels": (cfg.latent_channels, z),
        "warp_channels": (warp, z),
        "mask_channels": (cfg.mask_channels, 1),
        "plucker_channels": (cfg.plucker_channels, PLUCKER_CHANNELS * r),
    }
    wrong = {k: v for k, v in wanted.items() if v[0] != v[1]}
    if wrong:
        raise ShapeMismatchError(
            "the transformer does not fit the VAE (z_dim = "
            f"{z}, temporal ratio {r}): "
            + ", ".join(f"{k} is {got}, expected {want}" for k, (got, want) in wrong.items())
            + "; build the transformer from the same preset as the VAE."
        )
    if settings.chunk_frames % r:
        raise InvalidOptionError(
            f"SamplingSettings: chunk_frames must be a multiple of the VAE's temporal ratio {r}, "
            f"got {settings.chunk_frames}."
        )


def _wan_text(cfg: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The text encoder spec of a Wan folder: its UMT5, or none (with a warning) if absent."""
    text = {**cfg.get("text_encoder", {}), "kind": "umt5", "path": str(path)}
    if not (path / "text_encoder").is_dir():
        # A backbone-only folder still generates; only prompts need the encoder.
        warnings.warn(
            f"the Wan folder {path} has no text_encoder/ (UMT5): the model loads, but a prompt "
            "fails until one is given; copy text_encoder/ and tokenizer/ into the folder.",
            stacklevel=3,
        )
        text["path"] = None
    return text


def _num_latents(num_frames: int, ratio: int) -> int:
    if num_frames <= 0 or num_frames % ratio:
        raise ShapeMismatchError(
            f"the diffusion world model generates chunks of a multiple of {ratio} frames (its "
            f"VAE compresses {ratio} frames into one latent), got {num_frames}; set the "
            f"environment's chunk_length to {ratio}, {2 * ratio}, {3 * ratio}, ..."
        )
    return num_frames // ratio


def _dtype(torch_dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A dtype given as a name (``"bfloat16"``, from a YAML or Hydra config) as a torch dtype."""
    return None if torch_dtype is None else as_dtype(torch_dtype)
