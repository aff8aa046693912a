"""CityDiT: the SWM transformer, built from diffusers' Wan 2.1/2.2 transformer modules.

One token sequence holds every latent frame a chunk is conditioned on, in this order::

    [history H | noisy target L | lookahead sink 1 | references K]

Each latent frame is patchified by Wan's ``patch_embedding`` (temporal patch 1, so a frame stays
one group of tokens) and gets:

- an explicit RoPE temporal position (:func:`sequence_positions`): 1..H, H+1..H+L, H+L+dVL and
  H+L+G+k*dref (k = 0..K-1); Wan's ``WanRotaryPosEmbed`` only gives 0..F-1, so the frequencies
  are gathered from its own tables (:meth:`CityDiT.rotary_embedding`);
- its own timestep: clean context frames at t=0, target frames at the sampler's t (Wan 2.2's
  per-token timestep path of ``WanTimeTextImageEmbedding`` and ``WanTransformerBlock``);
- geometric referencing channels concatenated to the latents: the VAE-encoded warped video and its
  validity mask for target frames, zeros elsewhere;
- a Plücker ray embedding of its camera (relative to the chunk's first target frame), added to
  the patch tokens by a zero-initialised convolution.

Text enters through Wan's cross-attention. Weights of a Wan transformer load with
:meth:`CityDiT.from_wan`: every Wan module keeps its name; the new input channels of the patch
embedding and the Plücker embedding start at zero, so with stock positions and no conditions the
model computes exactly what the Wan model computes (``tests/worldmodel/test_dit.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import (
    WanRotaryPosEmbed,
    WanTimeTextImageEmbedding,
    WanTransformer3DModel,
    WanTransformerBlock,
)
from torch import nn
from torch._guards import detect_fake_mode

from cityenv.errors import ShapeMismatchError

__all__ = ["CityDiT", "SequenceLayout", "cast_keeping_fp32", "sequence_positions"]


@dataclass(frozen=True)
class SequenceLayout:
    """Where each group of latent frames sits in the token sequence of one chunk.

    Attributes:
        history: Number of clean history latents ``H`` (may be fewer than the model's maximum at
            the start of an episode).
        target: Number of noisy target latents ``L``.
        sink: Whether a lookahead-sink latent follows the targets.
        references: Number of reference latents ``K``.
    """

    history: int
    target: int
    sink: bool
    references: int

    @property
    def num_frames(self) -> int:
        """Latent frames in the sequence."""
        return self.history + self.target + int(self.sink) + self.references

    @property
    def target_slice(self) -> slice:
        """The target frames' indices along the sequence's frame axis."""
        return slice(self.history, self.history + self.target)

    def frame_timesteps(self, t: torch.Tensor | float) -> torch.Tensor:
        """Per-frame timesteps: ``t`` on the targets, 0 on every clean context frame.

        Args:
            t: The sampler's timestep, a scalar or ``(B,)``.

        Returns:
            float ``(B, num_frames)`` (``B`` = 1 for a scalar ``t``).
        """
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1)
        out = torch.zeros(t.shape[0], self.num_frames, dtype=torch.float32, device=t.device)
        out[:, self.target_slice] = t
        return out


def sequence_positions(
    layout: SequenceLayout,
    *,
    max_history: int,
    gap: int,
    sink_offset: int,
    reference_stride: int,
) -> torch.Tensor:
    """RoPE temporal positions of a chunk's latent frames (SWM).

    History ends at ``max_history`` (so the targets always start at ``max_history + 1`` even
    while fewer history latents exist), targets follow, the sink sits ``sink_offset`` after the
    last target's successor and references start ``gap`` after it, ``reference_stride`` apart.

    Args:
        layout: The chunk's sequence layout.
        max_history: ``H``, the model's number of history latents.
        gap: ``G``, the gap between the generation window and the references.
        sink_offset: ``dVL``.
        reference_stride: ``dref``.

    Returns:
        int64 ``(layout.num_frames,)``.
    """
    if layout.history > max_history:
        raise ShapeMismatchError(
            f"expected at most {max_history} history latents, got {layout.history}; keep only "
            "the last ones."
        )
    h, n = int(max_history), layout.target
    parts = [torch.arange(h - layout.history + 1, h + 1), torch.arange(h + 1, h + n + 1)]
    if layout.sink:
        parts.append(torch.tensor([h + n + sink_offset]))
    parts.append(h + n + gap + reference_stride * torch.arange(layout.references))
    return torch.cat(parts).long()


class CityDiT(ModelMixin, ConfigMixin):
    """Wan transformer with SWM's sequence, per-token timesteps, warp concat and Plücker rays.

    Args:
        patch_size: ``(t, h, w)`` patch of the latent video; ``t`` must be 1.
        num_attention_heads: Attention heads.
        attention_head_dim: Channels per head.
        latent_channels: VAE latent channels (Wan 2.1: 16); also the output channels.
        warp_channels: Channels of the encoded warped video concatenated to the latents
            (``None``: ``latent_channels``).
        mask_channels: Channels of the warp validity mask.
        plucker_channels: Plücker channels per latent frame: 6 per video frame the latent covers
            (4 with Wan's VAE).
        text_dim: Width of the text encoder's token embeddings.
        freq_dim: Sinusoidal timestep embedding width.
        ffn_dim: Feed-forward width.
        num_layers: Transformer blocks.
        cross_attn_norm: Wan's cross-attention normalisation.
        qk_norm: Wan's query/key normalisation.
        eps: Normalisation epsilon.
        rope_max_seq_len: Largest RoPE position + 1 (Wan: 1024).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["WanTransformerBlock"]
    _keep_in_fp32_modules = [
        "rope",
        "time_embedder",
        "scale_shift_table",
        "norm1",
        "norm2",
        "norm3",
    ]
    _skip_layerwise_casting_patterns = [
        "patch_embedding",
        "plucker_embedding",
        "condition_embedder",
        "norm",
    ]

    @register_to_config
    def __init__(
        self,
        patch_size: Sequence[int] = (1, 2, 2),
        num_attention_heads: int = 12,
        attention_head_dim: int = 128,
        latent_channels: int = 16,
        warp_channels: int | None = None,
        mask_channels: int = 1,
        plucker_channels: int = 24,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 8960,
        num_layers: int = 30,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        rope_max_seq_len: int = 1024,
    ) -> None:
        super().__init__()
        patch_size = tuple(int(p) for p in patch_size)
        if patch_size[0] != 1:
            raise ValueError(
                f"CityDiT needs a temporal patch of 1 (one latent frame = one token group), got "
                f"patch_size={patch_size}."
            )
        inner_dim = num_attention_heads * attention_head_dim
        warp_channels = latent_channels if warp_channels is None else warp_channels
        in_channels = latent_channels + warp_channels + mask_channels

        # Wan's modules under Wan's names, so its state dict loads as it is.
        self.rope = WanRotaryPosEmbed(attention_head_dim, patch_size, rope_max_seq_len)
        self.patch_embedding = nn.Conv3d(in_channels, inner_dim, patch_size, stride=patch_size)
        self.condition_embedder = WanTimeTextImageEmbedding(
            dim=inner_dim,
            time_freq_dim=freq_dim,
            time_proj_dim=inner_dim * 6,
            text_embed_dim=text_dim,
        )
        self.blocks = nn.ModuleList(
            WanTransformerBlock(
                inner_dim, ffn_dim, num_attention_heads, qk_norm, cross_attn_norm, eps
            )
            for _ in range(num_layers)
        )
        self.norm_out = FP32LayerNorm(inner_dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(inner_dim, latent_channels * math.prod(patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, inner_dim) / inner_dim**0.5)

        # New: camera rays. Zero-initialised so a loaded Wan model starts unchanged.
        self.plucker_embedding = nn.Conv3d(plucker_channels, inner_dim, patch_size, patch_size)
        nn.init.zeros_(self.plucker_embedding.weight)
        nn.init.zeros_(self.plucker_embedding.bias)
        self.gradient_checkpointing = False

    # --- construction from Wan ------------------------------------------------------------------
    @classmethod
    def from_wan(
        cls,
        wan: WanTransformer3DModel | str | Path,
        *,
        warp_channels: int | None = None,
        mask_channels: int = 1,
        plucker_channels: int = 24,
        torch_dtype: torch.dtype | None = None,
    ) -> CityDiT:
        """A CityDiT holding a Wan 2.1/2.2 text-to-video transformer's weights.

        The patch embedding's first ``latent_channels`` input channels take Wan's weights; the
        warp, mask and Plücker channels start at zero.

        Args:
            wan: A loaded ``WanTransformer3DModel`` or a local folder: the transformer's own
                folder or a diffusers Wan folder with a ``transformer/`` subfolder
                (safetensors only; nothing is downloaded).
            warp_channels: See :class:`CityDiT` (``None``: Wan's latent channels).
            mask_channels: See :class:`CityDiT`.
            plucker_channels: See :class:`CityDiT`.
            torch_dtype: Dtype to load the weights in (``None``: as saved).

        Returns:
            The model, in eval mode.
        """
        given = isinstance(wan, WanTransformer3DModel)
        if not given:
            wan = _load_wan_transformer(Path(wan), torch_dtype)
        cfg = wan.config
        if cfg.image_dim is not None or cfg.added_kv_proj_dim is not None:
            raise ValueError(
                "expected a Wan text-to-video transformer; this one has image cross-attention "
                f"(image_dim={cfg.image_dim}, added_kv_proj_dim={cfg.added_kv_proj_dim}), as the "
                "Wan I2V models do. Use a T2V (or TI2V) checkpoint."
            )
        if cfg.out_channels and cfg.in_channels != cfg.out_channels:
            raise ValueError(
                "expected a Wan text-to-video transformer whose input channels are its latents; "
                f"this one takes {cfg.in_channels} channels for {cfg.out_channels} latent ones "
                "(an image-to-video model concatenating a condition). Use a T2V (or TI2V) "
                "checkpoint: CityDiT adds its own warp and mask channels."
            )
        with torch.device("meta"):  # no weights yet: Wan's tensors are moved in below
            model = cls(
                patch_size=tuple(cfg.patch_size),
                num_attention_heads=cfg.num_attention_heads,
                attention_head_dim=cfg.attention_head_dim,
                latent_channels=cfg.out_channels or cfg.in_channels,
                warp_channels=warp_channels,
                mask_channels=mask_channels,
                plucker_channels=plucker_channels,
                text_dim=cfg.text_dim,
                freq_dim=cfg.freq_dim,
                ffn_dim=cfg.ffn_dim,
                num_layers=cfg.num_layers,
                cross_attn_norm=cfg.cross_attn_norm,
                qk_norm=cfg.qk_norm,
                eps=cfg.eps,
                rope_max_seq_len=cfg.rope_max_seq_len,
            )
        # Wan's own tensors become CityDiT's (one copy in memory; a model that was handed in is
        # copied so the two stay independent); the new inputs start at zero.
        state = {k: v.detach().clone() if given else v for k, v in wan.state_dict().items()}
        patch = state.pop("patch_embedding.weight")
        weight = patch.new_zeros(model.patch_embedding.weight.shape)
        weight[:, : patch.shape[1]] = patch
        state["patch_embedding.weight"] = weight
        for name, param in model.plucker_embedding.named_parameters():
            state[f"plucker_embedding.{name}"] = patch.new_zeros(param.shape)
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        unexpected = [k for k in unexpected if "norm_added_q" not in k]
        if unexpected or missing:
            raise ValueError(
                f"the Wan weights do not fit CityDiT: missing {sorted(missing)}, unexpected "
                f"{sorted(unexpected)}."
            )
        # RoPE tables are computed, not saved: build them for real.
        model.rope = WanRotaryPosEmbed(
            cfg.attention_head_dim, tuple(cfg.patch_size), cfg.rope_max_seq_len
        ).to(patch.device)
        if torch_dtype is not None:
            cast_keeping_fp32(model, torch_dtype)
        return model.eval()

    # --- positions ------------------------------------------------------------------------------
    def rotary_embedding(
        self, positions: torch.Tensor, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE cos/sin for explicit temporal positions, gathered from Wan's own tables.

        Args:
            positions: int ``(F,)``: each latent frame's temporal position.
            height: Latent height (before patching).
            width: Latent width (before patching).

        Returns:
            ``(cos, sin)``, each ``(1, F * h' * w', 1, attention_head_dim)`` with
            ``h' = height / p_h``, ``w' = width / p_w``, in the token order of the patch embedding
            (frame-major, then rows, then columns), as ``WanRotaryPosEmbed.forward`` returns.
        """
        rope = self.rope
        positions = torch.as_tensor(positions).long()
        # Checked where they were made (the CPU: no device sync); a shape-only trace (FLOP
        # counting under FakeTensorMode) has no values to check.
        checkable = positions.ndim != 1 or detect_fake_mode(positions) is None
        if checkable and (
            positions.ndim != 1 or positions.min() < 0 or positions.max() >= rope.max_seq_len
        ):
            raise ShapeMismatchError(
                f"expected RoPE positions as a 1-D tensor in [0, {rope.max_seq_len}), got shape "
                f"{tuple(positions.shape)} with values {positions.tolist()}; raise "
                "rope_max_seq_len or shorten the gap."
            )
        positions = positions.to(rope.freqs_cos.device)
        _, p_h, p_w = rope.patch_size
        hh, ww = height // p_h, width // p_w
        sizes = [rope.t_dim, rope.h_dim, rope.w_dim]
        out = []
        for table in (rope.freqs_cos, rope.freqs_sin):
            t_tab, h_tab, w_tab = table.split(sizes, dim=1)
            f = len(positions)
            parts = [
                t_tab[positions].view(f, 1, 1, -1).expand(f, hh, ww, -1),
                h_tab[:hh].view(1, hh, 1, -1).expand(f, hh, ww, -1),
                w_tab[:ww].view(1, 1, ww, -1).expand(f, hh, ww, -1),
            ]
            out.append(torch.cat(parts, dim=-1).reshape(1, f * hh * ww, 1, -1))
        return out[0], out[1]

    # --- forward --------------------------------------------------------------------------------
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        positions: torch.Tensor,
        conditions: torch.Tensor | None = None,
        plucker: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Predict the flow-matching velocity of every latent frame of a chunk's sequence.

        Args:
            hidden_states: Latents ``(B, C, F, h, w)``, the sequence's frames in order (see the
                module docstring); ``C = latent_channels``.
            timestep: Per-frame timesteps ``(B, F)`` (0 for clean context frames), or ``(B,)``
                for one timestep on every frame.
            encoder_hidden_states: Text token embeddings ``(B, S, text_dim)`` (zeros = no text).
            positions: int ``(F,)`` RoPE temporal positions (:func:`sequence_positions`).
            conditions: Warp latents and mask ``(B, warp_channels + mask_channels, F, h, w)``,
                zeros for frames without them; ``None`` = zeros everywhere.
            plucker: Plücker rays ``(B, plucker_channels, F, h, w)``; ``None`` = no camera input.
            return_dict: Return a ``Transformer2DModelOutput`` (else a tuple).

        Returns:
            The velocity ``(B, C, F, h, w)`` of every frame (callers keep the targets').
        """
        b, _, f, h, w = hidden_states.shape
        _, p_h, p_w = self.config.patch_size
        self._check_inputs(hidden_states, timestep, positions, conditions, plucker)

        # 1. Explicit RoPE positions from Wan's tables.
        rotary_emb = self.rotary_embedding(positions, h, w)

        # 2. Patchify latents + geometric-referencing channels; add the camera rays.
        if conditions is None:
            extra = self.patch_embedding.in_channels - hidden_states.shape[1]
            conditions = hidden_states.new_zeros(b, extra, f, h, w)
        tokens = self.patch_embedding(torch.cat([hidden_states, conditions], dim=1))
        if plucker is not None:
            tokens = tokens + self.plucker_embedding(plucker.to(tokens.dtype))
        tokens = tokens.flatten(2).transpose(1, 2).contiguous()

        # 3. Per-token timesteps (Wan 2.2's path): each frame's t repeated over its tokens.
        per_frame = timestep.reshape(b, 1).expand(b, f) if timestep.ndim == 1 else timestep
        per_token = per_frame.repeat_interleave((h // p_h) * (w // p_w), dim=1)
        temb, timestep_proj, text, _ = self.condition_embedder(
            per_token.flatten(), encoder_hidden_states, None, timestep_seq_len=per_token.shape[1]
        )
        timestep_proj = timestep_proj.unflatten(2, (6, -1))

        # 4. Wan's blocks.
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                tokens = self._gradient_checkpointing_func(
                    block, tokens, text, timestep_proj, rotary_emb
                )
            else:
                tokens = block(tokens, text, timestep_proj, rotary_emb)

        # 5. Wan's output head (per-token shift/scale), then unpatchify.
        shift, scale = (self.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
        tokens = self.norm_out(tokens.float()) * (1 + scale.squeeze(2)) + shift.squeeze(2)
        tokens = self.proj_out(tokens.type_as(hidden_states))
        tokens = tokens.reshape(b, f, h // p_h, w // p_w, 1, p_h, p_w, -1)
        output = tokens.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)
        return Transformer2DModelOutput(sample=output) if return_dict else (output,)

    def _check_inputs(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        positions: torch.Tensor,
        conditions: torch.Tensor | None,
        plucker: torch.Tensor | None,
    ) -> None:
        cfg = self.config
        b, c, f, h, w = hidden_states.shape
        _, p_h, p_w = cfg.patch_size
        extra = self.patch_embedding.in_channels - cfg.latent_channels
        problems = []
        if c != cfg.latent_channels:
            problems.append(f"hidden_states with {cfg.latent_channels} channels, got {c}")
        if h % p_h or w % p_w:
            problems.append(f"a latent size divisible by the patch ({p_h}, {p_w}), got {(h, w)}")
        if tuple(timestep.shape) not in ((b,), (b, f)):
            problems.append(f"timestep of shape ({b},) or ({b}, {f}), got {tuple(timestep.shape)}")
        shape = tuple(torch.as_tensor(positions).shape)
        if shape != (f,):
            problems.append(f"positions of shape ({f},), got {shape}")
        if conditions is not None and tuple(conditions.shape) != (b, extra, f, h, w):
            problems.append(f"conditions {(b, extra, f, h, w)}, got {tuple(conditions.shape)}")
        want = (b, cfg.plucker_channels, f, h, w)
        if plucker is not None and tuple(plucker.shape) != want:
            problems.append(f"plucker {want}, got {tuple(plucker.shape)}")
        if problems:
            raise ShapeMismatchError("CityDiT expected " + "; ".join(problems) + ".")


def cast_keeping_fp32(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast a diffusers model to ``dtype`` in place, keeping its ``_keep_in_fp32_modules`` (Wan:
    RoPE tables, time embedder, modulation tables, norms) in float32, as diffusers'
    ``from_pretrained(torch_dtype=...)`` does; a plain ``.to(dtype)`` would round them too.

    Returns:
        ``model``.
    """
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not keep & set(name.split(".")):
            tensor.data = tensor.data.to(dtype)
    return model


def _load_wan_transformer(path: Path, torch_dtype: torch.dtype | None) -> WanTransformer3DModel:
    """A Wan transformer from a local folder (its own, or a pipeline folder's ``transformer/``)."""
    folder = path / "transformer" if (path / "transformer" / "config.json").is_file() else path
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"expected a diffusers Wan transformer folder (config.json + safetensors) at {path} "
            "or at its transformer/ subfolder; found neither."
        )
    return WanTransformer3DModel.from_pretrained(
        folder, torch_dtype=torch_dtype, use_safetensors=True, local_files_only=True
    )
