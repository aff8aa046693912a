"""What a chunk of the diffusion world model is conditioned on, as latent frames.

:class:`Conditioner` turns a chunk's inputs (target camera poses, the warped nearest references
and their masks, the references and the lookahead sink, the history latents, the prompt) into a
:class:`ChunkSequence`, the transformer's inputs apart from the noisy targets:

- geometric referencing: the warped video VAE-encoded, with its validity mask average-pooled to
  the latent grid (``z + 1`` channels concatenated to the target latents);
- semantic referencing: each reference and the sink resized to the frame size
  (:class:`~cityenv.worldmodel.referencing.Referencer`) and encoded to one latent, with Plücker
  rays of its own camera;
- the history latents with their cameras' rays, and the text token embeddings.

:meth:`ChunkSequence.drop` removes conditions for classifier-free guidance and training drops.
The conditioner owns its caches (encoded references, the current prompt's embedding); it takes
plain arrays and :class:`~cityenv.worldmodel.referencing.ReferenceView` objects, so training code
builds the same sequences without a world model object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cityenv.cache import LRUCache
from cityenv.geometry.camera import PinholeCamera
from cityenv.geometry.rays import plucker_rays
from cityenv.worldmodel.dit import SequenceLayout, sequence_positions
from cityenv.worldmodel.referencing import Referencer, ReferenceView
from cityenv.worldmodel.settings import SamplingSettings
from cityenv.worldmodel.text import TextEncoder
from cityenv.worldmodel.vae import VideoVAE

__all__ = ["ChunkSequence", "Conditioner", "RayMaker", "to_uint8", "to_video"]

PLUCKER_CHANNELS = 6
"""Channels of one Plücker ray (direction and moment); a latent frame has this many per video
frame it covers (the VAE's temporal ratio)."""


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
        self, targets: torch.Tensor, t: torch.Tensor | float, settings: SamplingSettings
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


class RayMaker:
    """Plücker rays ``(1, 6 r, F, h, w)`` of latent frames that each cover ``r`` video frames
    (the VAE's temporal ratio), relative to the camera ``origin`` ``(4, 4)``.

    Args:
        camera: The target frames' intrinsics rescaled to the latent grid ``(h, w)``.
        origin: Camera-to-world ``(4, 4)`` the rays are relative to (the chunk's first frame).
        ratio: ``r``.
        device: Where the rays go.
        dtype: Their dtype.
    """

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
        f, channels = poses.shape[0], PLUCKER_CHANNELS * self.ratio
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


class Conditioner:
    """Builds chunks' :class:`ChunkSequence` from a VAE, a referencer and a text encoder.

    Args:
        vae: Encodes warps, references and the sink.
        referencer: Resizes references and the sink to the frame size (its cache is shared with
            the warping).
        text_encoder: Encodes prompts (owned by the model that owns this conditioner).
        text_dim: Width of the transformer's text input (of the all-zero null prompt).
        device: Where the tensors go.
        dtype: Their dtype (the transformer's).
        reference_cache: Encoded reference latents kept (a hit must come from the very same
            view object, so databases whose view ids collide never mix).
    """

    def __init__(
        self,
        *,
        vae: VideoVAE,
        referencer: Referencer,
        text_encoder: TextEncoder,
        text_dim: int,
        device: torch.device,
        dtype: torch.dtype,
        reference_cache: int = 64,
    ) -> None:
        self.vae, self.referencer, self.text_encoder = vae, referencer, text_encoder
        self.text_dim = int(text_dim)
        self.device, self.dtype = torch.device(device), dtype
        self.latents: LRUCache[tuple[int, int, int], tuple[ReferenceView, torch.Tensor]]
        self.latents = LRUCache(reference_cache)
        self._text: dict[str | None, torch.Tensor] = {}

    def to(self, device: torch.device, dtype: torch.dtype) -> None:
        """Make tensors on ``device`` in ``dtype`` from now on (cached ones are dropped)."""
        self.device, self.dtype = torch.device(device), dtype
        self.clear()

    def clear(self) -> None:
        """Drop the cached reference latents and text embeddings."""
        self.latents.clear()
        self._text.clear()

    def latent_size(self, camera: PinholeCamera) -> tuple[int, int]:
        """``(h, w)``: the latent grid of frames of ``camera``'s size."""
        s = self.vae.spatial_ratio
        return camera.height // s, camera.width // s

    # --- the sequence ---------------------------------------------------------------------------
    def sequence(
        self,
        *,
        camera: PinholeCamera,
        origin: np.ndarray,
        target_poses: np.ndarray,
        history: torch.Tensor | None,
        history_poses: np.ndarray,
        warp: torch.Tensor | None,
        references: Sequence[ReferenceView],
        sink: ReferenceView | None,
        prompt: str | None,
    ) -> ChunkSequence:
        """Assemble a chunk's conditions.

        Args:
            camera: The target frames' intrinsics (their size ``(H, W)``).
            origin: Camera-to-world ``(4, 4)`` every ray is relative to (the chunk's first frame).
            target_poses: Camera-to-world of the frames each target latent covers, ``(n, r, 4, 4)``.
            history: Clean history latents ``(1, z, Hh, h, w)``, or ``None`` for none.
            history_poses: Their frames' poses ``(Hh, r, 4, 4)``.
            warp: :meth:`encode_warp` of the chunk, or ``None``.
            references: The references to encode (``K`` of them, already chosen).
            sink: The lookahead sink (a retrieved view, or a future frame in training), or
                ``None``.
            prompt: The text; ``None`` or ``""`` = the all-zero null embedding.

        Returns:
            The sequence (see :class:`ChunkSequence` for the shapes).
        """
        z, (h, w), r = self.vae.latent_channels, self.latent_size(camera), self.vae.temporal_ratio
        rays = RayMaker(camera.rescaled(w, h), origin, r, self.device, self.dtype)
        empty = torch.zeros(1, z, 0, h, w, device=self.device, dtype=self.dtype)
        history_poses = np.asarray(history_poses).reshape(-1, r, 4, 4)
        return ChunkSequence(
            history=empty if history is None else history,
            history_rays=rays.groups(history_poses),
            target_rays=rays.groups(np.asarray(target_poses)),
            warp=warp,
            sink=None if sink is None else self.encode_reference(sink, camera),
            sink_rays=None if sink is None else rays.views([sink]),
            references=torch.cat(
                [empty, *(self.encode_reference(v, camera) for v in references)], 2
            ),
            reference_rays=rays.views(references),
            text=self.text_embedding(prompt),
        )

    # --- the parts ------------------------------------------------------------------------------
    def encode_warp(self, warps: np.ndarray, masks: np.ndarray) -> torch.Tensor:
        """Warped video uint8 ``(L, H, W, 3)`` + masks bool ``(L, H, W)`` ->
        ``(1, z + 1, n, h, w)``: the chunk's latents and the mask average-pooled to them."""
        latents = self.vae.encode_chunk(to_video(warps, self.device, self.dtype))
        mask = torch.from_numpy(masks).to(self.device, torch.float32)[None, None]
        t, s = self.vae.temporal_ratio, self.vae.spatial_ratio
        pooled = F.avg_pool3d(mask, (t, s, s)).to(self.dtype)  # (no bf16 pooling on CPU)
        return torch.cat([latents, pooled], dim=1)

    def encode_reference(self, view: ReferenceView, camera: PinholeCamera) -> torch.Tensor:
        """One reference (or sink) image resized to ``camera``'s size -> ``(1, z, 1, h, w)``."""
        key = (int(view.view_id), camera.width, camera.height)
        hit = self.latents.get(key, valid=lambda entry: entry[0] is view)
        if hit is not None:
            return hit[1]
        image = self.referencer.prepare(view, camera.width, camera.height).image
        latent = self.vae.encode(to_video(image[None], self.device, self.dtype))
        return self.latents.put(key, (view, latent))[1]

    def text_embedding(self, prompt: str | None) -> torch.Tensor:
        """Text token embeddings ``(1, S, D)`` of ``prompt`` (the all-zero null prompt for
        ``None``/``""``); the current prompt's is kept until it changes."""
        key = prompt or None
        hit = self._text.get(key)
        if hit is None:
            if key is None:
                shape = (1, self.text_encoder.max_length, self.text_dim)
                hit = torch.zeros(shape, device=self.device, dtype=self.dtype)
            else:
                hit = self.text_encoder.encode([key]).to(self.device, self.dtype)
            self._text = {k: v for k, v in self._text.items() if k is None}
            self._text[key] = hit
        return hit


def to_video(frames: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` -> float ``(1, 3, T, H, W)`` in [-1, 1]."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    return (video.permute(3, 0, 1, 2)[None].to(dtype) / 127.5 - 1.0).contiguous()


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """float ``(1, 3, T, H, W)`` in [-1, 1] -> uint8 ``(T, H, W, 3)``."""
    v = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return v.permute(1, 2, 3, 0).cpu().numpy()
