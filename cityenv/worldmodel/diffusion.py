"""The SWM-style diffusion world model: retrieval-augmented autoregressive video diffusion.

Per chunk of ``L`` frames (``L`` a multiple of the VAE's 4x temporal compression, so ``n = L/4``
latents) :class:`DiffusionWorldModel`:

1. forward-splats each frame's nearest reference into its camera
   (:class:`~cityenv.worldmodel.warp.WarpWorldModel`) and VAE-encodes the warped video and its
   validity mask (geometric referencing);
2. encodes up to ``K`` references and the lookahead sink (the retrieved view nearest the chunk's
   endpoint) to one latent each (semantic referencing), with their cameras as Plücker rays
   relative to the chunk's first frame;
3. takes the last ``H`` clean latents of the previous chunks as history;
4. denoises ``n`` target latents with :class:`~diffusers.FlowMatchEulerDiscreteScheduler`
   through :class:`~cityenv.worldmodel.dit.CityDiT` (context tokens at t=0), with
   classifier-free guidance whose unconditional branch drops any of text, references and warp;
5. decodes the targets with a streaming VAE decoder, so consecutive chunks meet without seams.

The first frame comes from a start image (its weather and cars carry on) or, without one, from
the references (warped). :meth:`DiffusionWorldModel.interpolate` turns sparse keyframes into a
video with SWM's intermittent freeze-frame layout. Presets live in ``configs/worldmodel/``.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from diffusers import FlowMatchEulerDiscreteScheduler

from cityenv.config import config_dir
from cityenv.errors import CheckpointError, ShapeMismatchError, UnknownNameError
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.pose import Pose, Trajectory
from cityenv.geometry.rays import plucker_rays
from cityenv.worldmodel.base import ChunkOutput, ChunkReferences, ReferenceView, WorldModel
from cityenv.worldmodel.dit import (
    CityDiT,
    SequenceLayout,
    cast_keeping_fp32,
    sequence_positions,
)
from cityenv.worldmodel.freeze import plan_freeze_frames
from cityenv.worldmodel.text import MiniLMTextEncoder, TextEncoder, as_dtype, make_text_encoder
from cityenv.worldmodel.vae import PICKLED_WEIGHT_SUFFIXES, VideoVAE
from cityenv.worldmodel.warp import WarpWorldModel

__all__ = [
    "PRESETS",
    "ChunkSequence",
    "DiffusionWorldModel",
    "RolloutSettings",
    "load_preset",
]

PRESETS = ("tiny", "small", "swm-tf", "swm-sf")
CONDITIONS = ("text", "references", "warp")


def load_preset(name: str) -> dict[str, Any]:
    """The settings of a preset in ``configs/worldmodel/<name>.yaml``.

    Returns:
        A dict with ``vae``, ``transformer``, ``text_encoder``, ``scheduler`` and ``rollout``.

    Raises:
        UnknownNameError: If ``name`` is not a preset (with "did you mean").
    """
    path = config_dir() / "worldmodel" / f"{name}.yaml"
    if not path.is_file():
        import difflib

        close = difflib.get_close_matches(str(name), PRESETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"world-model preset must be one of {PRESETS}, got {name!r}.{hint}")
    return yaml.safe_load(path.read_text())


@dataclass(frozen=True)
class RolloutSettings:
    """How the model is run chunk after chunk (SWM's hyper-parameters).

    Attributes:
        chunk_frames: Frames per chunk the preset was made for (a multiple of 4).
        history: ``H``: clean history latents from the previous chunks.
        max_references: ``K``: reference latents per chunk.
        gap: ``G``: RoPE gap between the generation window and the references.
        sink_offset: ``dVL``: RoPE offset of the lookahead sink after the targets.
        reference_stride: ``dref``: RoPE spacing of the references.
        use_sink: Whether the lookahead sink is used.
        num_inference_steps: Sampler steps per chunk.
        shift: The flow-matching timestep shift; ``None`` keeps the scheduler's own.
        guidance_scale: Classifier-free guidance scale (1 = no unconditional pass).
        guidance_drop: Conditions the unconditional branch drops: any of ``text``,
            ``references`` (references and sink) and ``warp``.
    """

    chunk_frames: int = 12
    history: int = 3
    max_references: int = 1
    gap: int = 50
    sink_offset: int = 5
    reference_stride: int = 1
    use_sink: bool = True
    num_inference_steps: int = 4
    shift: float | None = None
    guidance_scale: float = 1.0
    guidance_drop: tuple[str, ...] = ("text",)

    def __post_init__(self) -> None:
        unknown = [c for c in self.guidance_drop if c not in CONDITIONS]
        if unknown:
            raise UnknownNameError(
                f"guidance_drop may name {CONDITIONS}, got {tuple(self.guidance_drop)!r}."
            )
        object.__setattr__(self, "guidance_drop", tuple(self.guidance_drop))
        if self.chunk_frames % 4 or self.history < 0 or self.max_references < 0:
            raise ValueError(
                "chunk_frames must be a multiple of 4 and history/max_references >= 0, got "
                f"{self.chunk_frames}, {self.history}, {self.max_references}."
            )


@dataclass(eq=False)
class ChunkSequence:
    """Everything a chunk is conditioned on, as latent frames at the latent resolution.

    Shapes use ``z`` latent channels, ``(h, w)`` the latent size, ``P`` Plücker channels.

    Attributes:
        history: Clean history latents ``(1, z, Hh, h, w)``.
        history_rays: Their Plücker rays ``(1, P, Hh, h, w)``.
        target_rays: The target latents' rays ``(1, P, n, h, w)``.
        warp: Encoded warped video + mask ``(1, z + 1, n, h, w)``, or ``None`` (none / dropped).
        sink: The lookahead-sink latent ``(1, z, 1, h, w)`` or ``None``.
        sink_rays: Its rays ``(1, P, 1, h, w)`` or ``None``.
        references: Reference latents ``(1, z, K, h, w)`` (``K`` may be 0).
        reference_rays: Their rays ``(1, P, K, h, w)``.
        text: Text token embeddings ``(1, S, D)`` (zeros = no text).
        clean_targets: bool ``(n,)``: targets that are given clean (freeze-frame keyframes) and
            are kept at t=0, or ``None``.
    """

    history: torch.Tensor
    history_rays: torch.Tensor
    target_rays: torch.Tensor
    warp: torch.Tensor | None
    sink: torch.Tensor | None
    sink_rays: torch.Tensor | None
    references: torch.Tensor
    reference_rays: torch.Tensor
    text: torch.Tensor
    clean_targets: torch.Tensor | None = None

    @property
    def layout(self) -> SequenceLayout:
        """Where each group of frames sits in the token sequence."""
        return SequenceLayout(
            history=self.history.shape[2],
            target=self.target_rays.shape[2],
            sink=self.sink is not None,
            references=self.references.shape[2],
        )

    def drop(self, conditions: Sequence[str]) -> ChunkSequence:
        """The same sequence without some conditions (classifier-free guidance).

        Args:
            conditions: Any of ``text`` (zero text embedding), ``references`` (no reference and
                no sink tokens) and ``warp`` (no warp channels).
        """
        out = dataclasses.replace(self)
        if "text" in conditions:
            out.text = torch.zeros_like(self.text)
        if "references" in conditions:
            out.sink = out.sink_rays = None
            out.references = self.references[:, :, :0]
            out.reference_rays = self.reference_rays[:, :, :0]
        if "warp" in conditions:
            out.warp = None
        return out

    def inputs(
        self, targets: torch.Tensor, t: torch.Tensor | float, settings: RolloutSettings
    ) -> dict[str, torch.Tensor]:
        """The keyword arguments of :meth:`CityDiT.forward` for target latents at timestep ``t``.

        Args:
            targets: Noisy target latents ``(1, z, n, h, w)``.
            t: The sampler's timestep.
            settings: Positions come from its ``history``, ``gap``, ``sink_offset`` and
                ``reference_stride``.
        """
        layout = self.layout
        parts = [self.history, targets]
        rays = [self.history_rays, self.target_rays]
        if self.sink is not None:
            parts.append(self.sink)
            rays.append(self.sink_rays)
        parts.append(self.references)
        rays.append(self.reference_rays)
        latents = torch.cat(parts, dim=2)
        timestep = layout.frame_timesteps(torch.as_tensor(t, device=latents.device))
        if self.clean_targets is not None:
            timestep[:, layout.target_slice][:, self.clean_targets] = 0.0
        b, z, f, h, w = latents.shape
        conditions = latents.new_zeros(b, z + 1, f, h, w)
        if self.warp is not None:
            conditions[:, :, layout.target_slice] = self.warp
        positions = sequence_positions(
            layout,
            max_history=max(settings.history, layout.history),
            gap=settings.gap,
            sink_offset=settings.sink_offset,
            reference_stride=settings.reference_stride,
        )
        return {
            "hidden_states": latents,
            "timestep": timestep.to(latents.device),
            "encoder_hidden_states": self.text,
            "positions": positions,
            "conditions": conditions,
            "plucker": torch.cat(rays, dim=2).to(latents.dtype),
        }


@dataclass
class _Stream:
    """The episode so far: clean latents with the poses of the frames each latent covers."""

    latents: list[torch.Tensor] = field(default_factory=list)  # each (1, z, 1, h, w)
    poses: list[np.ndarray] = field(default_factory=list)  # each (4, 4, 4)

    def push(self, latents: torch.Tensor, poses: np.ndarray, keep: int) -> None:
        for i in range(latents.shape[2]):
            self.latents.append(latents[:, :, i : i + 1])
            self.poses.append(poses[i])
        del self.latents[:-keep], self.poses[:-keep]


class DiffusionWorldModel(WorldModel):
    """SWM's retrieval-augmented autoregressive video diffusion behind the WorldModel interface.

    Build it with :meth:`from_preset` (random weights), :meth:`from_pretrained` (a folder written
    by :meth:`save_pretrained`) or :meth:`from_wan` (a local diffusers Wan 2.1/2.2 folder).

    Args:
        transformer: The denoiser.
        vae: The video VAE.
        scheduler: The flow-matching sampler (``settings.shift``, when set, replaces its shift).
        text_encoder: A loaded text encoder, or the keyword arguments of
            :func:`~cityenv.worldmodel.text.make_text_encoder` to load one on the first prompt.
        settings: Chunk and sampling settings.
        device: Where the models run (``None``: CUDA when available).
        reference_cache: Encoded reference latents kept in memory.
    """

    def __init__(
        self,
        *,
        transformer: CityDiT,
        vae: VideoVAE,
        scheduler: FlowMatchEulerDiscreteScheduler,
        text_encoder: TextEncoder | Mapping[str, Any],
        settings: RolloutSettings | None = None,
        device: str | torch.device | None = None,
        reference_cache: int = 64,
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.transformer = transformer.to(self.device).eval()
        self.vae = vae
        self.vae.vae.to(self.device).eval()
        self.settings = settings or RolloutSettings()
        if self.settings.shift is not None:
            scheduler = FlowMatchEulerDiscreteScheduler.from_config(
                scheduler.config, shift=self.settings.shift
            )
        self.scheduler = scheduler
        self._text_spec = None if isinstance(text_encoder, TextEncoder) else dict(text_encoder)
        self._text_encoder = text_encoder if isinstance(text_encoder, TextEncoder) else None
        self._text_cache: dict[str | None, torch.Tensor] = {}
        self._ref_cache: OrderedDict[tuple[int, int, int], tuple[ReferenceView, torch.Tensor]] = (
            OrderedDict()
        )
        self._ref_capacity = int(reference_cache)
        self._warper = WarpWorldModel()
        self._decoder = vae.streaming_decoder()
        self._stream = _Stream()
        self._generator = torch.Generator("cpu").manual_seed(0)
        self.camera: PinholeCamera | None = None
        self.reset_info: dict[str, Any] = {}
        self.checkpoint: Path | None = None  # the folder of from_pretrained (a trained model)

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_preset(
        cls,
        name: str = "tiny",
        *,
        seed: int = 0,
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | None = None,
        **settings: Any,
    ) -> DiffusionWorldModel:
        """A randomly initialised model of a preset (``tiny``, ``small``, ``swm-tf``, ``swm-sf``).

        Args:
            name: The preset (``configs/worldmodel/<name>.yaml``).
            seed: Seeds the initial weights (the global RNG is left as it was).
            device: See the class.
            torch_dtype: Weight dtype (``None``: float32).
            **settings: Overrides of the preset's :class:`RolloutSettings`.
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
        return cls(
            transformer=transformer,
            vae=vae,
            scheduler=FlowMatchEulerDiscreteScheduler(**cfg.get("scheduler", {})),
            text_encoder=cfg.get("text_encoder", {"kind": "minilm"}),
            settings=RolloutSettings(**{**cfg.get("rollout", {}), **settings}),
            device=device,
        )

    @classmethod
    def create(
        cls,
        path: str | Path | None = None,
        *,
        preset: str = "small",
        seed: int = 0,
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | None = None,
        **settings: Any,
    ) -> DiffusionWorldModel:
        """The environment's factory (``world_model="diffusion"``).

        Args:
            path: A folder written by :meth:`save_pretrained`; ``None`` gives random weights of
                ``preset`` (with a warning: the frames are noise until a trained model is used).
            preset: The preset for random weights.
            seed: Seeds random weights.
            device: See the class.
            torch_dtype: Weight dtype.
            **settings: :class:`RolloutSettings` overrides.
        """
        if path is not None:
            return cls.from_pretrained(path, device=device, torch_dtype=torch_dtype, **settings)
        warnings.warn(
            f"world_model='diffusion' without a path: random weights of the {preset!r} preset, "
            "so frames are noise; pass world_model_options={'path': <a saved model folder>}.",
            stacklevel=2,
        )
        return cls.from_preset(
            preset, seed=seed, device=device, torch_dtype=torch_dtype, **settings
        )

    @classmethod
    def from_wan(
        cls,
        path: str | Path,
        *,
        preset: str = "swm-sf",
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | None = None,
        **settings: Any,
    ) -> DiffusionWorldModel:
        """A model whose backbone, VAE and text encoder come from a local diffusers Wan folder.

        The folder is a Wan 2.1/2.2 text-to-video diffusers folder (``transformer/``, ``vae/``,
        ``text_encoder/`` + ``tokenizer/`` with UMT5); SWM's new input channels start at zero.
        The rollout and scheduler settings come from ``preset``. Nothing is downloaded.
        """
        path, torch_dtype = Path(path), _dtype(torch_dtype)
        _refuse_pickles(path)
        cfg = load_preset(preset)
        transformer = CityDiT.from_wan(path, torch_dtype=torch_dtype)
        vae = VideoVAE.from_pretrained(path / "vae", torch_dtype=torch_dtype)
        text = {**cfg.get("text_encoder", {}), "kind": "umt5", "path": str(path)}
        return cls(
            transformer=transformer,
            vae=vae,
            scheduler=FlowMatchEulerDiscreteScheduler(**cfg.get("scheduler", {})),
            text_encoder=text,
            settings=RolloutSettings(**{**cfg.get("rollout", {}), **settings}),
            device=device,
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | None = None,
        **settings: Any,
    ) -> DiffusionWorldModel:
        """Load a folder written by :meth:`save_pretrained` (safetensors only).

        Raises:
            CheckpointError: If the folder is not such a folder or holds pickled weights.
        """
        path, torch_dtype = Path(path), _dtype(torch_dtype)
        meta_path = path / "config.json"
        if not meta_path.is_file():
            raise CheckpointError(
                f"expected a world-model folder with config.json (written by "
                f"DiffusionWorldModel.save_pretrained) at {path}; none is there."
            )
        _refuse_pickles(path)
        meta = json.loads(meta_path.read_text())
        if meta.get("_class_name") != cls.__name__:
            raise CheckpointError(
                f"{meta_path} describes a {meta.get('_class_name')!r}, not a {cls.__name__}."
            )
        transformer = CityDiT.from_pretrained(
            path / "transformer",
            use_safetensors=True,
            local_files_only=True,
            torch_dtype=torch_dtype,
        )
        vae = VideoVAE.from_pretrained(path / "vae", torch_dtype=torch_dtype)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path / "scheduler")
        rollout = {**meta["rollout"], **settings}
        model = cls(
            transformer=transformer,
            vae=vae,
            scheduler=scheduler,
            text_encoder=meta["text_encoder"],
            settings=RolloutSettings(**rollout),
            device=device,
        )
        model.checkpoint = path
        return model

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the model to one folder: ``config.json`` + ``transformer/``, ``vae/`` and
        ``scheduler/`` (safetensors and diffusers configs). The text encoder is not copied: its
        kind and local path are recorded.

        Returns:
            The folder.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.transformer.save_pretrained(path / "transformer", safe_serialization=True)
        self.vae.vae.save_pretrained(path / "vae", safe_serialization=True)
        self.scheduler.save_pretrained(path / "scheduler")
        meta = {
            "_class_name": type(self).__name__,
            "rollout": dataclasses.asdict(self.settings),
            "text_encoder": self._text_spec or _text_spec_of(self.text_encoder),
        }
        (path / "config.json").write_text(json.dumps(meta, indent=2))
        return path

    # --- WorldModel API -------------------------------------------------------------------------
    def check_settings(self, camera: PinholeCamera, chunk_length: int) -> None:
        """Frames must be multiples of 16 pixels and chunks multiples of 4 frames; a trained
        model (:attr:`checkpoint`) warns at another chunk length than it was set up for.

        Raises:
            ShapeMismatchError: Saying which value to use instead.
        """
        _check_camera(camera, self.vae.spatial_ratio * self.transformer.config.patch_size[1])
        _num_latents(chunk_length, self.vae.temporal_ratio)
        if self.checkpoint is not None and chunk_length != self.settings.chunk_frames:
            warnings.warn(
                f"chunk_length={chunk_length} differs from the {self.settings.chunk_frames}-frame "
                "chunks this model was set up for (RolloutSettings.chunk_frames); a trained model "
                "may follow the camera less well at another length.",
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
        references warped into ``pose``; it is encoded as the first history latent. ``generator``
        seeds the sampling noise of the episode.

        Returns:
            The first frame, uint8 ``(H, W, 3)``.

        Raises:
            ShapeMismatchError: If the camera's size is not a multiple of 16 pixels (8x VAE
                downsampling times the 2x2 patch).
        """
        _check_camera(camera, self.vae.spatial_ratio * self.transformer.config.patch_size[1])
        self.camera, self.prompt = camera, prompt
        seed = 0 if generator is None else int(generator.integers(2**62))
        self._generator = torch.Generator("cpu").manual_seed(seed)
        first = self._warper.reset(
            pose=pose, camera=camera, references=references, start_image=start_image
        )
        latent = self.vae.encode(_to_video(first[None], self.device, self._dtype))
        self._stream = _Stream()
        r = self.vae.temporal_ratio  # the first latent holds one frame: its pose fills the group
        self._stream.push(latent, np.repeat(pose.matrix[None, None], r, axis=1), self._keep)
        self._decoder.reset()
        with torch.no_grad():
            self._decoder.decode(latent)  # primes the causal cache: later chunks continue it
        self.reset_info = {"source": self._warper.reset_info.get("source", "start_image")}
        return first

    def generate(self, trajectory: Trajectory, references: ChunkReferences) -> ChunkOutput:
        """Generate one chunk; see :meth:`WorldModel.generate`.

        Args:
            trajectory: ``L`` camera-to-world poses, ``L`` a multiple of 4.
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
            warped = self._warper.generate(trajectory, references)
            seq = self._sequence(trajectory, references, warped, camera)
            encode_s = time.perf_counter() - start
            noise = self._noise(n, camera)
            latents = self._denoise(seq, noise)
            denoise_s = time.perf_counter() - start - encode_s
            video = self._decoder.decode(latents)
        frames = _to_uint8(video)
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
        return ChunkOutput(frames, warped.warps, warped.masks, references, info)

    def interpolate(
        self,
        keyframes: np.ndarray,
        key_times: Sequence[int],
        trajectory: Trajectory,
        references: ChunkReferences | None = None,
    ) -> np.ndarray:
        """Intermittent freeze-frame interpolation: ``N`` keyframes -> a ``T``-frame video.

        Each keyframe after the first is repeated 4 times so it encodes to one clean latent
        (:func:`~cityenv.worldmodel.freeze.plan_freeze_frames`); those latents stay at t=0 while
        the others are denoised; after decoding the duplicates are dropped. Call :meth:`reset`
        first (it sets the camera and the noise seed).

        Args:
            keyframes: uint8 ``(N, H, W, 3)``.
            key_times: ``(N,)`` frame index of each keyframe in the output, the first 0.
            trajectory: The ``T`` output frames' poses.
            references: Optional references (semantic referencing and sink only).

        Returns:
            uint8 ``(T, H, W, 3)``.
        """
        camera = self._require_camera()
        plan = plan_freeze_frames(key_times, len(trajectory))
        keyframes = np.asarray(keyframes)
        want = (plan.num_keyframes, camera.height, camera.width, 3)
        if keyframes.shape != want or keyframes.dtype != np.uint8:
            raise ShapeMismatchError(
                f"keyframes: expected uint8 {want} (one per key time, at the camera's size), got "
                f"{keyframes.dtype} {keyframes.shape}; resize them to the frame size first."
            )
        keys = _to_video(keyframes, self.device, self._dtype)  # (1, 3, N, H, W)
        with torch.no_grad():
            clean = self._encode_keyframes(keys)
            poses = trajectory.matrices[plan.expanded_times]  # (expanded, 4, 4)
            r = self.vae.temporal_ratio  # latent 0 holds frame 0 alone: its pose fills the group
            groups = np.concatenate([np.repeat(poses[:1], r - 1, axis=0), poses])
            groups = groups.reshape(-1, r, 4, 4)
            refs = references or ChunkReferences.none(len(trajectory))
            seq = self._sequence_parts(groups, refs, None, camera, poses[0], history=False)
            seq.clean_targets = torch.as_tensor(plan.clean_latents)
            noise = self._noise(plan.num_latents, camera)
            noise[:, :, seq.clean_targets] = clean
            latents = self._denoise(seq, noise)
            video = self.vae.decode(latents)
        return _to_uint8(plan.drop_duplicates(video))

    @property
    def text_encoder(self) -> TextEncoder:
        """The text encoder (loaded on first use)."""
        if self._text_encoder is None:
            self._text_encoder = make_text_encoder(**self._text_spec).to(self.device)
        return self._text_encoder

    @property
    def num_parameters(self) -> int:
        """Parameters of the transformer and the VAE."""
        modules = (self.transformer, self.vae.vae)
        return sum(p.numel() for m in modules for p in m.parameters())

    # --- conditioning ---------------------------------------------------------------------------
    def _sequence(
        self,
        trajectory: Trajectory,
        references: ChunkReferences,
        warped: ChunkOutput,
        camera: PinholeCamera,
    ) -> ChunkSequence:
        matrices = trajectory.matrices
        groups = matrices.reshape(-1, self.vae.temporal_ratio, 4, 4)
        warp = None
        if references.views and warped.warps is not None:
            warp = self._encode_warp(warped.warps, warped.masks)
        return self._sequence_parts(groups, references, warp, camera, matrices[0], history=True)

    def _sequence_parts(
        self,
        target_poses: np.ndarray,
        references: ChunkReferences,
        warp: torch.Tensor | None,
        camera: PinholeCamera,
        origin: np.ndarray,
        *,
        history: bool,
    ) -> ChunkSequence:
        """Assemble a chunk's conditions; Plücker rays relative to the camera ``origin`` (4, 4)."""
        z, (h, w), r = self.vae.latent_channels, self._latent_size(camera), self.vae.temporal_ratio
        rays = _RayMaker(camera.rescaled(w, h), origin, r, self.device, self._dtype)
        views = references.views[: self.settings.max_references]
        keep = self.settings.history if history else 0
        past = self._stream.latents[-keep:] if keep else []
        past_poses = np.asarray(self._stream.poses[-keep:] if keep else []).reshape(-1, r, 4, 4)
        empty = torch.zeros(1, z, 0, h, w, device=self.device, dtype=self._dtype)
        sink = references.sink if self.settings.use_sink else None
        return ChunkSequence(
            history=torch.cat(past, dim=2) if past else empty,
            history_rays=rays.groups(past_poses),
            target_rays=rays.groups(target_poses),
            warp=warp,
            sink=None if sink is None else self._encode_reference(sink, camera),
            sink_rays=None if sink is None else rays.views([sink]),
            references=torch.cat([empty, *(self._encode_reference(v, camera) for v in views)], 2),
            reference_rays=rays.views(views),
            text=self._text_embedding(self.prompt),
        )

    def _encode_warp(self, warps: np.ndarray, masks: np.ndarray) -> torch.Tensor:
        """Warped video uint8 ``(L, H, W, 3)`` + masks ``(L, H, W)`` -> ``(1, z + 1, n, h, w)``."""
        latents = self.vae.encode_chunk(_to_video(warps, self.device, self._dtype))
        mask = torch.from_numpy(masks).to(self.device, torch.float32)[None, None]
        t, s = self.vae.temporal_ratio, self.vae.spatial_ratio
        pooled = F.avg_pool3d(mask, (t, s, s)).to(self._dtype)  # (no bf16 pooling on CPU)
        return torch.cat([latents, pooled], dim=1)

    def _encode_reference(self, view: ReferenceView, camera: PinholeCamera) -> torch.Tensor:
        """One reference image resized to the target size -> ``(1, z, 1, h, w)`` (cached; a hit
        must be the very same view object, so databases whose view ids collide never mix)."""
        key = (view.view_id, camera.width, camera.height)
        hit = self._ref_cache.get(key)
        if hit is not None and hit[0] is view:
            self._ref_cache.move_to_end(key)
            return hit[1]
        image, _ = self._warper.reference_at_size(view, camera.width, camera.height)
        latent = self.vae.encode(_to_video(image[None], self.device, self._dtype))
        self._ref_cache[key] = (view, latent)
        self._ref_cache.move_to_end(key)
        while len(self._ref_cache) > self._ref_capacity:
            self._ref_cache.popitem(last=False)
        return latent

    def _encode_keyframes(self, keys: torch.Tensor) -> torch.Tensor:
        """Keyframes ``(1, 3, N, H, W)`` -> clean latents ``(1, z, N, h, w)``: the first as an
        episode's first frame, the others each repeated 4 times (one latent each)."""
        first = self.vae.encode(keys[:, :, :1])
        rest = [
            self.vae.encode_chunk(keys[:, :, i : i + 1].repeat(1, 1, 4, 1, 1))
            for i in range(1, keys.shape[2])
        ]
        return torch.cat([first, *rest], dim=2)

    def _text_embedding(self, prompt: str | None) -> torch.Tensor:
        key = prompt or None
        hit = self._text_cache.get(key)
        if hit is None:
            if key is None:
                shape = (1, self._text_length, self.transformer.config.text_dim)
                hit = torch.zeros(shape, device=self.device, dtype=self._dtype)
            else:
                hit = self.text_encoder.encode([key]).to(self.device, self._dtype)
            self._text_cache = {k: v for k, v in self._text_cache.items() if k is None}
            self._text_cache[key] = hit
        return hit

    # --- sampling -------------------------------------------------------------------------------
    def _noise(self, n: int, camera: PinholeCamera) -> torch.Tensor:
        h, w = self._latent_size(camera)
        shape = (1, self.vae.latent_channels, n, h, w)
        return torch.randn(shape, generator=self._generator).to(self.device, self._dtype)

    def _denoise(self, seq: ChunkSequence, latents: torch.Tensor) -> torch.Tensor:
        """Run the sampler from ``latents`` (noise, clean where ``seq.clean_targets``)."""
        settings = self.settings
        clean = None if seq.clean_targets is None else latents[:, :, seq.clean_targets].clone()
        uncond = seq.drop(settings.guidance_drop) if settings.guidance_scale != 1.0 else None
        self.scheduler.set_timesteps(settings.num_inference_steps, device=self.device)
        for t in self.scheduler.timesteps:
            velocity = self._velocity(seq, latents, t)
            if uncond is not None:
                base = self._velocity(uncond, latents, t)
                velocity = base + settings.guidance_scale * (velocity - base)
            latents = self.scheduler.step(velocity, t, latents, return_dict=False)[0]
            if clean is not None:
                latents[:, :, seq.clean_targets] = clean
        return latents

    def _velocity(self, seq: ChunkSequence, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.transformer(**seq.inputs(latents, t, self.settings), return_dict=False)[0]
        return out[:, :, seq.layout.target_slice]

    # --- helpers --------------------------------------------------------------------------------
    @property
    def _dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def _keep(self) -> int:
        return max(self.settings.history, 1)

    @property
    def _text_length(self) -> int:
        if self._text_encoder is not None:
            return self._text_encoder.max_length
        return int(self._text_spec.get("max_length") or 32)

    def _latent_size(self, camera: PinholeCamera) -> tuple[int, int]:
        s = self.vae.spatial_ratio
        return camera.height // s, camera.width // s

    def _tokens_per_frame(self, camera: PinholeCamera) -> int:
        h, w = self._latent_size(camera)
        _, p_h, p_w = self.transformer.config.patch_size
        return (h // p_h) * (w // p_w)

    def _require_camera(self) -> PinholeCamera:
        if self.camera is None:
            raise RuntimeError("call reset() before generate(): the model needs the camera.")
        return self.camera


class _RayMaker:
    """Plücker rays ``(1, 6 r, F, h, w)`` of latent frames that each cover ``r`` video frames
    (the VAE's temporal ratio), relative to the camera ``origin`` ``(4, 4)``."""

    def __init__(
        self,
        camera: PinholeCamera,
        origin: np.ndarray,
        ratio: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.camera, self.origin, self.ratio = camera, origin, int(ratio)
        self.device, self.dtype = device, dtype

    def groups(self, poses: np.ndarray, camera: PinholeCamera | None = None) -> torch.Tensor:
        """Rays of latent frames seen through ``camera`` (the target's by default), each frame
        covering ``r`` poses: ``poses`` ``(F, r, 4, 4)``."""
        camera = camera or self.camera
        f, channels = poses.shape[0], 6 * self.ratio
        if f == 0:
            shape = (1, channels, 0, camera.height, camera.width)
            return torch.zeros(shape, device=self.device, dtype=self.dtype)
        rays = plucker_rays(camera, poses.reshape(-1, 4, 4), self.origin)
        rays = rays.reshape(f, channels, camera.height, camera.width)
        return rays.permute(1, 0, 2, 3)[None].to(self.device, self.dtype)

    def views(self, views: Sequence[ReferenceView]) -> torch.Tensor:
        """Rays of reference views, each through its own intrinsics (rescaled to the latent grid,
        as its image is resized to the frame) with its pose repeated over the ``r`` slots:
        ``(1, 6 r, K, h, w)``."""
        h, w = self.camera.height, self.camera.width
        parts = [self.groups(np.zeros((0, self.ratio, 4, 4)))]
        for v in views:
            poses = np.repeat(v.pose.matrix[None, None], self.ratio, axis=1)
            parts.append(self.groups(poses, v.camera.rescaled(w, h)))
        return torch.cat(parts, dim=2)


def _num_latents(num_frames: int, ratio: int) -> int:
    if num_frames <= 0 or num_frames % ratio:
        raise ShapeMismatchError(
            f"the diffusion world model generates chunks of a multiple of {ratio} frames (its "
            f"VAE compresses {ratio} frames into one latent), got {num_frames}; set the "
            f"environment's chunk_length to {ratio}, {2 * ratio}, {3 * ratio}, ..."
        )
    return num_frames // ratio


def _check_camera(camera: PinholeCamera, multiple: int) -> None:
    if camera.width % multiple or camera.height % multiple:
        raise ShapeMismatchError(
            f"the diffusion world model needs frame sizes that are multiples of {multiple} "
            f"pixels, got {camera.width}x{camera.height}; use e.g. "
            f"{camera.width // multiple * multiple or multiple}x"
            f"{camera.height // multiple * multiple or multiple}."
        )


def _to_video(frames: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` -> float ``(1, 3, T, H, W)`` in [-1, 1]."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    return (video.permute(3, 0, 1, 2)[None].to(dtype) / 127.5 - 1.0).contiguous()


def _to_uint8(video: torch.Tensor) -> np.ndarray:
    """float ``(1, 3, T, H, W)`` in [-1, 1] -> uint8 ``(T, H, W, 3)``."""
    v = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return v.permute(1, 2, 3, 0).cpu().numpy()


def _dtype(torch_dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A dtype given as a name (``"bfloat16"``, from a YAML or Hydra config) as a torch dtype."""
    return None if torch_dtype is None else as_dtype(torch_dtype)


def _text_spec_of(encoder: TextEncoder) -> dict[str, Any]:
    """The :func:`make_text_encoder` arguments that load ``encoder`` again."""
    if isinstance(encoder, MiniLMTextEncoder):  # the packaged model: no machine-specific path
        return {"kind": "minilm", "path": None, "max_length": encoder.max_length}
    return {"kind": "umt5", "path": str(encoder.path), "max_length": encoder.max_length}


def _refuse_pickles(path: Path) -> None:
    pickled = sorted(p for p in path.rglob("*") if p.suffix in PICKLED_WEIGHT_SUFFIXES)
    if pickled:
        raise CheckpointError(
            f"{path} holds pickled weights ({', '.join(str(p.name) for p in pickled[:3])}); "
            "pickles can run code when loaded, so cityenv loads safetensors only. Convert them "
            "(e.g. load with torch.load(weights_only=True) and save_pretrained(..., "
            "safe_serialization=True)) and remove the pickled files."
        )
