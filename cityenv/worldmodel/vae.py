"""The video VAE: diffusers' causal 3D ``AutoencoderKLWan`` behind a small, checked interface.

The Wan VAE compresses a video ``4x`` in time and ``8x`` in space (both read from its config). It is
causal in time: the first frame is encoded on its own into latent 0, every later group of
``temporal_ratio`` frames into one latent, and each latent only sees the frames up to its own
group. Decoding mirrors this: latent 0 gives one frame, every later latent ``temporal_ratio``
frames, so a video of ``T = 1 + 4n`` frames has ``1 + n`` latents.

:class:`VideoVAE` encodes deterministically (the posterior mode) and returns *normalised* latents,
``(mu - latents_mean) / latents_std`` per channel, the scale the diffusion model works in;
:meth:`VideoVAE.decode` undoes it. :class:`StreamingDecoder` decodes the latents of one video
chunk by chunk while keeping the decoder's causal cache between calls, so the concatenated chunks
equal a one-shot decode (no seams between chunks).

Model-side video is ``(B, C, T, H, W)`` float in ``[-1, 1]``. The wrapped VAE is put in eval mode
and frozen (``requires_grad_(False)``); gradient mode is the caller's (wrap calls in
``torch.no_grad()`` for inference).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import (
    WanCausalConv3d,
    WanRMS_norm,
    patchify,
    unpatchify,
)
from torch import Tensor
from torch.nn import functional as F

from cityenv.errors import CheckpointError, ConfigError, ShapeMismatchError, unknown_name

__all__ = ["PICKLED_WEIGHT_SUFFIXES", "StreamingDecoder", "VideoVAE"]

PICKLED_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
"""File suffixes of pickled weights, which :meth:`VideoVAE.from_pretrained` refuses to load."""

_TAP_SUM_PIXELS = 32 * 32
"""Frame size (H x W) from which a causal convolution runs one 2D convolution per time tap
(faster there on the CPU) instead of one over the stacked taps (faster on small frames)."""

_RANGE_TOLERANCE = 1e-3  # video values may exceed [-1, 1] by this much (float round-off)


class _CPUCausalConv3d(WanCausalConv3d):
    """``WanCausalConv3d`` computed on the CPU as one 2D convolution over stacked frames.

    PyTorch's CPU ``conv3d`` is several times slower than a ``conv2d`` doing the same work: an
    output frame ``t`` of a ``(kt, kh, kw)`` kernel is a 2D convolution of the ``kt`` input frames
    it sees, stacked along channels, with the kernel's time taps stacked alike. Same weights,
    same state-dict keys, same result up to float rounding (tests/worldmodel/test_vae.py); CUDA
    and grouped or dilated convolutions keep ``conv3d``. From :data:`_TAP_SUM_PIXELS` up, each
    time tap is its own 2D convolution and the taps are summed (no stacked copy).
    """

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if x.device.type != "cpu" or self.groups != 1 or self.dilation != (1, 1, 1):
            return super()._conv_forward(x, weight, bias)
        b, c, t, h, w = x.shape
        out, _, kt, kh, kw = weight.shape
        st = self.stride[0]
        n = (t - kt) // st + 1  # output frames (the causal padding is already in x)
        frames = x.transpose(1, 2)  # (B, T, C, H, W)
        if kt > 1 and h * w >= _TAP_SUM_PIXELS:
            # large frames: one convolution per time tap on the frames it sees, summed (no
            # kt-fold stacked copy; oneDNN is faster on c than on kt * c input channels there)
            frames = frames.contiguous()
            y = None
            for k in range(kt):
                seen = frames[:, k : k + (n - 1) * st + 1 : st].reshape(b * n, c, h, w)
                tap = F.conv2d(seen, weight[:, :, k], bias if k == 0 else None, self.stride[1:])
                y = tap if y is None else y.add_(tap)
            return y.reshape(b, n, out, *y.shape[-2:]).transpose(1, 2)
        if kt == 1:
            stacked = frames[:, : (n - 1) * st + 1 : st]
        else:
            taps = (torch.arange(n) * st)[:, None] + torch.arange(kt)[None]  # (n, kt)
            stacked = frames[:, taps]  # (B, n, kt, C, H, W)
        stacked = stacked.reshape(b * n, kt * c, h, w)
        kernel = weight.transpose(1, 2).reshape(out, kt * c, kh, kw)
        y = F.conv2d(stacked, kernel, bias, self.stride[1:])
        return y.reshape(b, n, out, *y.shape[-2:]).transpose(1, 2)


class _CPURMSNorm(WanRMS_norm):
    """``WanRMS_norm`` over channels as a sum of squares: ``F.normalize`` over dim 1 of a
    ``(B, C, T, H, W)`` tensor is a strided reduction that is slow on the CPU; the result is the
    same up to float rounding."""

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or not self.channel_first or x.dtype != torch.float32:
            return super().forward(x)
        norm = x.square().sum(1, keepdim=True).sqrt().clamp_min(1e-12)
        return x / norm * (self.scale * self.gamma) + self.bias


def _use_cpu_kernels(vae: AutoencoderKLWan) -> None:
    """Swap the VAE's causal convolutions and RMS norms for their fast CPU forms (in place)."""
    for module in vae.modules():
        if type(module) is WanCausalConv3d:
            module.__class__ = _CPUCausalConv3d
        elif type(module) is WanRMS_norm:
            module.__class__ = _CPURMSNorm


def _num_causal_convs(module: torch.nn.Module) -> int:
    """Number of cache slots (causal 3D convolutions) the encoder or decoder ``module`` uses."""
    return sum(isinstance(m, WanCausalConv3d) for m in module.modules())


class VideoVAE:
    """Wraps diffusers ``AutoencoderKLWan`` (causal 3D VAE, 4x temporal, 8x spatial).

    Attributes:
        vae: The wrapped model (eval mode, parameters frozen).
        temporal_ratio: Frames per latent after the first, ``2 ** sum(temperal_downsample)`` (4).
        spatial_ratio: Pixels per latent cell along H and W, ``2 ** (len(dim_mult) - 1)`` times
            the config's ``patch_size`` if any (8 for Wan2.1).
        latent_channels: Latent channels ``z``, the config's ``z_dim``.
        in_channels: Video channels, the config's ``in_channels`` (3).
    """

    def __init__(self, vae: AutoencoderKLWan) -> None:
        """Wrap ``vae``, putting it in eval mode and freezing its parameters.

        Args:
            vae: A diffusers ``AutoencoderKLWan``.

        Raises:
            TypeError: If ``vae`` is not an ``AutoencoderKLWan``.
            ShapeMismatchError: If the config's ``latents_mean``/``latents_std`` do not have
                ``z_dim`` entries.
        """
        if not isinstance(vae, AutoencoderKLWan):
            raise TypeError(
                f"VideoVAE wraps a diffusers AutoencoderKLWan, got {type(vae).__name__}; build one "
                "with VideoVAE.from_config(...) or VideoVAE.from_pretrained(folder)"
            )
        self.vae = vae.eval().requires_grad_(False)
        _use_cpu_kernels(vae)
        config = vae.config
        self.latent_channels = int(config.z_dim)
        self.in_channels = int(config.in_channels)
        self.temporal_ratio = 2 ** sum(bool(d) for d in config.temperal_downsample)
        self.spatial_ratio = 2 ** (len(config.dim_mult) - 1) * int(config.patch_size or 1)
        self._patch_size = config.patch_size
        for name in ("latents_mean", "latents_std"):
            values = list(getattr(config, name))
            if len(values) != self.latent_channels:
                raise ShapeMismatchError(
                    f"the VAE config's {name} has {len(values)} entries, expected z_dim = "
                    f"{self.latent_channels} (one per latent channel); fix the config"
                )
        if min(config.latents_std) <= 0:
            raise ShapeMismatchError(
                f"the VAE config's latents_std must be positive, got {list(config.latents_std)}"
            )
        self._mean = torch.tensor(config.latents_mean, dtype=torch.float64).view(1, -1, 1, 1, 1)
        self._std = torch.tensor(config.latents_std, dtype=torch.float64).view(1, -1, 1, 1, 1)
        self._num_encoder_convs = _num_causal_convs(vae.encoder)
        self._num_decoder_convs = _num_causal_convs(vae.decoder)

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> VideoVAE:
        """Build a randomly initialised VAE (uses torch's global RNG: seed it for tests).

        Args:
            config: ``AutoencoderKLWan`` constructor arguments (keys starting with ``_``, as in a
                saved ``config.json``, are ignored).

        Returns:
            The wrapped model.

        Raises:
            UnknownNameError: If a key is not an ``AutoencoderKLWan`` argument.
        """
        known = set(inspect.signature(AutoencoderKLWan.__init__).parameters) - {"self"}
        for key in config:
            if not key.startswith("_") and key not in known:
                raise unknown_name(
                    "VAE config key", key, known, advice="Fix the preset's vae group."
                )
        return cls(AutoencoderKLWan.from_config(dict(config)))

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, torch_dtype: torch.dtype | None = None
    ) -> VideoVAE:
        """Load a VAE from a local folder, safetensors weights only (never downloads).

        Args:
            path: A folder written by ``save_pretrained`` (``config.json`` + ``*.safetensors``),
                or a diffusers pipeline folder holding such a folder as ``vae/``.
            torch_dtype: Dtype to load the weights in (default: as stored).

        Returns:
            The wrapped model.

        Raises:
            CheckpointError: If the folder, its ``config.json`` or its safetensors weights are
                missing, or if it holds only pickled weights (``.bin``, ``.pt``, ``.ckpt``, ...),
                which are refused because unpickling can run arbitrary code. (Pickled files next
                to safetensors weights are ignored: only safetensors are ever read.)
        """
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise CheckpointError(
                f"VAE folder {str(folder)!r} does not exist or is not a folder; expected a local "
                "folder with config.json and *.safetensors weights (AutoencoderKLWan."
                "save_pretrained), or a diffusers pipeline folder with a vae/ subfolder"
            )
        subfolder = None
        if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
            subfolder = "vae"
        weights = folder / subfolder if subfolder else folder
        if not (weights / "config.json").is_file():
            raise CheckpointError(
                f"VAE folder {str(folder)!r} has no config.json (nor vae/config.json); expected a "
                "folder written by AutoencoderKLWan.save_pretrained"
            )
        if not any(weights.glob("*.safetensors")):
            pickled = sorted(
                p.name for p in weights.iterdir() if p.suffix in PICKLED_WEIGHT_SUFFIXES
            )
            if pickled:
                raise CheckpointError(
                    f"VAE folder {str(weights)!r} holds only pickled weights ({', '.join(pickled)})"
                    "; cityenv loads safetensors only (unpickling can run arbitrary code). Convert "
                    "them once, from a trusted source, with safetensors.torch.save_file("
                    "torch.load(file, weights_only=True), "
                    "'diffusion_pytorch_model.safetensors') in that folder"
                )
            raise CheckpointError(
                f"VAE folder {str(weights)!r} has no *.safetensors weights; expected "
                "diffusion_pytorch_model.safetensors (AutoencoderKLWan.save_pretrained)"
            )
        kwargs: dict[str, Any] = {"use_safetensors": True, "local_files_only": True}
        if subfolder:
            kwargs["subfolder"] = subfolder
        if torch_dtype is not None:
            kwargs["torch_dtype"] = torch_dtype
        return cls(AutoencoderKLWan.from_pretrained(str(folder), **kwargs))

    def replace_decoder(self, base_dim: int) -> None:
        """Give this VAE a fresh, randomly initialised decoder of another width, in place.

        The encoder, both quantisation convolutions and the latents' mean/std are kept, so the
        latents (and a transformer trained on them) stay valid; the new decoder must then be
        trained on them (``python -m cityenv.train stage=vae objective.vae_parts=decoder
        objective.vae_decoder_base_dim=N``). A narrower decoder decodes faster. Uses torch's
        global RNG (seed it). Streaming decoders made before start using it at their next
        ``reset()``.

        Args:
            base_dim: The decoder's base channel count (diffusers' ``decoder_base_dim``; the
                encoder keeps ``base_dim``).

        Raises:
            ConfigError: If ``base_dim`` is not a positive integer.
        """
        if isinstance(base_dim, bool) or not isinstance(base_dim, int) or base_dim < 1:
            raise ConfigError(
                f"a decoder's base_dim is a positive integer (channels), got {base_dim!r}."
            )
        old = self.vae
        config = {k: v for k, v in old.config.items() if not k.startswith("_")}  # no defaults list
        new = AutoencoderKLWan.from_config({**config, "decoder_base_dim": base_dim})
        kept = {k: v for k, v in old.state_dict().items() if not k.startswith("decoder.")}
        missing, unexpected = new.load_state_dict(kept, strict=False)
        if unexpected or any(not k.startswith("decoder.") for k in missing):
            raise ShapeMismatchError(  # cannot happen with diffusers' AutoencoderKLWan
                f"a new decoder changed more than the decoder: {unexpected or missing}"
            )
        new.to(device=self.device, dtype=self.dtype)
        self.vae = new.eval().requires_grad_(False)
        _use_cpu_kernels(new)
        self._num_decoder_convs = _num_causal_convs(new.decoder)

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``config.json`` + safetensors weights to ``path`` (for :meth:`from_pretrained`)."""
        self.vae.save_pretrained(str(path), safe_serialization=True)

    # --- device ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Device of the VAE's parameters."""
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the VAE's parameters (inputs are cast to it, outputs come in it)."""
        return next(self.vae.parameters()).dtype

    def to(self, *args: Any, **kwargs: Any) -> VideoVAE:
        """Move/cast the VAE like ``torch.nn.Module.to``; returns ``self``."""
        self.vae.to(*args, **kwargs)
        return self

    # --- encoding -------------------------------------------------------------------------------
    def encode(self, video: Tensor) -> Tensor:
        """Encode a video from its first frame: deterministic, normalised latents.

        Args:
            video: ``(B, 3, T, H, W)`` float in ``[-1, 1]``, ``T = 1 + 4n`` (``temporal_ratio``),
                ``H`` and ``W`` multiples of 8 (``spatial_ratio``).

        Returns:
            ``(B, z, 1 + n, H / 8, W / 8)`` latents, ``(mu - latents_mean) / latents_std``.

        Raises:
            ShapeMismatchError: If the shape, dtype or value range is not as above.
        """
        self._check_video(video, "video", first=True)
        return self._encode(video)

    def encode_chunk(self, video: Tensor) -> Tensor:
        """Encode a continuation chunk (a chunk that does not start the video).

        The chunk's first frame is prepended (as the causal encoder's lone first frame), so the
        chunk's frames are grouped ``[0..3], [4..7], ...``; the extra latent is dropped. The
        encoder does not see the frames before the chunk.

        Args:
            video: ``(B, 3, 4n, H, W)`` float in ``[-1, 1]``, ``n >= 1``.

        Returns:
            ``(B, z, n, H / 8, W / 8)`` normalised latents, one per group of 4 frames.

        Raises:
            ShapeMismatchError: If the shape, dtype or value range is not as above.
        """
        self._check_video(video, "video chunk", first=False)
        return self._encode(torch.cat([video[:, :, :1], video], dim=2))[:, :, 1:]

    def _encode(self, video: Tensor) -> Tensor:
        """Run the causal encoder group by group (1, 4, 4, ... frames), as diffusers does.

        Args:
            video: Checked ``(B, 3, 1 + 4n, H, W)``.

        Returns:
            ``(B, z, 1 + n, h, w)`` normalised posterior means.
        """
        x = video.to(device=self.device, dtype=self.dtype)
        if self._patch_size is not None:
            x = patchify(x, patch_size=self._patch_size)
        cache: list[Any] = [None] * self._num_encoder_convs
        ratio, num_frames = self.temporal_ratio, x.shape[2]
        bounds = [(0, 1)] + [(s, s + ratio) for s in range(1, num_frames, ratio)]
        groups = [self.vae.encoder(x[:, :, a:b], feat_cache=cache, feat_idx=[0]) for a, b in bounds]
        moments = self.vae.quant_conv(torch.cat(groups, dim=2))
        mean = moments[:, : self.latent_channels]  # posterior mode; the log-variance is dropped
        return self.normalise(mean)

    def normalise(self, mu: Tensor) -> Tensor:
        """Raw posterior means ``(B, z, F, h, w)`` -> normalised latents, same shape."""
        mean = self._mean.to(device=mu.device, dtype=mu.dtype)
        std = self._std.to(device=mu.device, dtype=mu.dtype)
        return (mu - mean) / std

    def denormalise(self, latents: Tensor) -> Tensor:
        """Normalised latents ``(B, z, F, h, w)`` -> the VAE's raw latents, same shape."""
        mean = self._mean.to(device=latents.device, dtype=latents.dtype)
        std = self._std.to(device=latents.device, dtype=latents.dtype)
        return latents * std + mean

    # --- decoding -------------------------------------------------------------------------------
    def decode(self, latents: Tensor) -> Tensor:
        """Decode the normalised latents of a whole video (from its first latent).

        Args:
            latents: ``(B, z, F, h, w)`` normalised latents, ``F >= 1``.

        Returns:
            ``(B, 3, 1 + 4(F - 1), 8h, 8w)`` video in ``[-1, 1]`` (clamped, as diffusers does).

        Raises:
            ShapeMismatchError: If ``latents`` is not ``(B, z, F, h, w)`` with finite values.
        """
        return self.streaming_decoder().decode(latents)

    def streaming_decoder(self) -> StreamingDecoder:
        """A new :class:`StreamingDecoder` (own causal cache) over this VAE."""
        return StreamingDecoder(self)

    def output_frames(self, num_latents: int, *, first: bool = True) -> int:
        """Frames decoded from ``F`` latents: ``1 + 4(F - 1)`` if ``first`` else ``4F``."""
        if first:
            return 1 + self.temporal_ratio * (num_latents - 1) if num_latents > 0 else 0
        return self.temporal_ratio * num_latents

    # --- checks ---------------------------------------------------------------------------------
    def _check_video(self, video: Tensor, name: str, *, first: bool) -> None:
        """Raise :class:`ShapeMismatchError` unless ``video`` is a valid (continuation) video."""
        r, s, c = self.temporal_ratio, self.spatial_ratio, self.in_channels
        want_t = f"T = 1 + {r}n" if first else f"T = {r}n with n >= 1"
        expected = f"expected a (B, {c}, T, H, W) float tensor in [-1, 1] with {want_t} and H, W "
        expected += f"multiples of {s}"
        if not isinstance(video, Tensor):
            raise ShapeMismatchError(f"{name}: {expected}, got {type(video).__name__}")
        if video.ndim != 5 or video.shape[1] != c:
            raise ShapeMismatchError(
                f"{name}: {expected}, got shape {tuple(video.shape)}; video is channels-first "
                "(B, C, T, H, W) (env frames (T, H, W, 3) uint8 need permute + x / 127.5 - 1)"
            )
        b, _, t, h, w = video.shape
        if first and (t < 1 or (t - 1) % r):
            lo = 1 + r * max((t - 1) // r, 0)
            raise ShapeMismatchError(
                f"{name}: {expected}, got T = {t}; use T = {lo} or {lo + r} (a continuation chunk "
                f"of {r}n frames goes to encode_chunk)"
            )
        if not first and (t < r or t % r):
            lo = r * max(t // r, 1)
            raise ShapeMismatchError(
                f"{name}: {expected}, got T = {t}; use T = {lo} or {lo + r} (a video's first chunk "
                f"of 1 + {r}n frames goes to encode)"
            )
        if b < 1 or h < s or w < s or h % s or w % s:
            raise ShapeMismatchError(
                f"{name}: {expected}, got B = {b}, H = {h}, W = {w}; crop or resize H and W to "
                f"multiples of {s}"
            )
        if not video.is_floating_point():
            raise ShapeMismatchError(
                f"{name}: {expected}, got dtype {video.dtype}; convert uint8 frames with "
                "x.float() / 127.5 - 1"
            )
        if not bool(torch.isfinite(video).all()):
            raise ShapeMismatchError(f"{name}: {expected}, got NaN or infinite values")
        lo_v, hi_v = float(video.min()), float(video.max())
        if lo_v < -1 - _RANGE_TOLERANCE or hi_v > 1 + _RANGE_TOLERANCE:
            raise ShapeMismatchError(
                f"{name}: {expected}, got values in [{lo_v:.4g}, {hi_v:.4g}]; map [0, 255] with "
                "x / 127.5 - 1 or [0, 1] with 2x - 1"
            )

    def _check_latents(self, latents: Tensor) -> None:
        """Raise :class:`ShapeMismatchError` unless ``latents`` is ``(B, z, F, h, w)``, finite."""
        z = self.latent_channels
        expected = f"expected (B, {z}, F, h, w) float latents with F >= 1"
        if not isinstance(latents, Tensor):
            raise ShapeMismatchError(f"latents: {expected}, got {type(latents).__name__}")
        if latents.ndim != 5 or latents.shape[1] != z or min(latents.shape) < 1:
            raise ShapeMismatchError(
                f"latents: {expected}, got shape {tuple(latents.shape)}; latents are channels-"
                f"first with z_dim = {z} channels (as returned by VideoVAE.encode)"
            )
        if not latents.is_floating_point():
            raise ShapeMismatchError(f"latents: {expected}, got dtype {latents.dtype}")
        if not bool(torch.isfinite(latents).all()):
            raise ShapeMismatchError(f"latents: {expected}, got NaN or infinite values")


class StreamingDecoder:
    """Decodes consecutive latent chunks of one video without seams (keeps the causal cache).

    The first call after construction or :meth:`reset` decodes the video's first latent as a
    lone frame; later calls continue the same video. Concatenating the outputs along time equals
    :meth:`VideoVAE.decode` of the concatenated latents (to float round-off). One decoder per
    video stream; not thread-safe.

    Attributes:
        num_latents: Latents decoded since the last reset.
    """

    def __init__(self, vae: VideoVAE) -> None:
        """Create a decoder over ``vae`` with an empty cache.

        Args:
            vae: The VAE whose decoder runs (its weights are shared, the cache is this object's).
        """
        self._vae = vae
        self._cache: list[Any] = []
        self._shape: tuple[int, int, int] | None = None  # (B, h, w) of the stream
        self.num_latents = 0
        self.reset()

    def reset(self) -> None:
        """Forget the cache: the next :meth:`decode` starts a new video."""
        self._cache = [None] * self._vae._num_decoder_convs
        self._shape = None
        self.num_latents = 0

    def decode(self, latents: Tensor) -> Tensor:
        """Decode the next chunk of normalised latents.

        Args:
            latents: ``(B, z, F, h, w)``; after the first call, ``B``, ``h`` and ``w`` must stay
                the same until :meth:`reset`.

        Returns:
            ``(B, 3, 1 + 4(F - 1), 8h, 8w)`` on the first call after a reset, ``(B, 3, 4F, 8h,
            8w)`` afterwards; in ``[-1, 1]``.

        Raises:
            ShapeMismatchError: If ``latents`` is malformed or does not continue the stream.
        """
        vae = self._vae
        vae._check_latents(latents)
        b, _, f, h, w = latents.shape
        if self._shape is not None and self._shape != (b, h, w):
            raise ShapeMismatchError(
                f"latents: this stream decodes (B, h, w) = {self._shape}, got {(b, h, w)}; call "
                "reset() before decoding a different video"
            )
        z = vae.denormalise(latents.to(device=vae.device, dtype=vae.dtype))
        x = vae.vae.post_quant_conv(z)
        frames = []
        for i in range(f):
            first = self.num_latents == 0
            frames.append(
                vae.vae.decoder(
                    x[:, :, i : i + 1], feat_cache=self._cache, feat_idx=[0], first_chunk=first
                )
            )
            self.num_latents += 1
            self._shape = (b, h, w)
        out = torch.cat(frames, dim=2)
        if vae._patch_size is not None:
            out = unpatchify(out, patch_size=vae._patch_size)
        return torch.clamp(out, min=-1.0, max=1.0)
