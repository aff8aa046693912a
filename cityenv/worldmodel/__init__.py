"""cityenv.worldmodel: the world-model interface and its implementations.

- :class:`WarpWorldModel`: non-learned retrieval + forward splatting.
- :class:`DiffusionWorldModel`: SWM's retrieval-augmented autoregressive video diffusion
  (:class:`CityDiT` on Wan's transformer modules, :class:`VideoVAE` around ``AutoencoderKLWan``,
  a pluggable text encoder, diffusers' flow-matching scheduler), presets in
  ``configs/worldmodel/``.

Modules, each importing only those above it in this list (and ``cityenv.geometry``,
``cityenv.cache``, ``cityenv.errors``, ``cityenv.config``):

- ``base``: the :class:`WorldModel` interface and the chunk value types;
- ``referencing``: references loaded from a CityDB, prepared for a frame size, warped
  (nearest reference per frame), one cache: used by both models and by training data code;
- ``warp``: the warp baseline (:class:`WarpWorldModel`); ``options``: typed factory options;
- ``settings`` (:class:`SamplingSettings`), ``text``, ``vae``, ``dit``, ``freeze``: the
  diffusion model's parts;
- ``conditioning`` (a chunk's :class:`ChunkSequence`), ``sampling`` (the flow-matching sampler
  and guidance), ``objective`` (the training loss; never imports ``diffusion``);
- ``presets`` (``configs/worldmodel/*.yaml``), ``checkpoint`` (the saved folder format);
- ``diffusion``: :class:`DiffusionWorldModel`, a composition of the parts above;
- ``registry``: :data:`WORLD_MODELS`, world models by name (``warp``, ``diffusion``, entry
  points of ``cityenv.world_models``) and :func:`make_world_model`; it imports each model only
  when one is made, and never a module named in a string unless asked (``import:``).

Names are imported on first use (PEP 562): the interface does not pull in diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cityenv._lazy import lazy_namespace

if TYPE_CHECKING:
    from cityenv.worldmodel.base import ChunkOutput, ChunkReferences, WorldModel
    from cityenv.worldmodel.conditioning import ChunkSequence, Conditioner
    from cityenv.worldmodel.diffusion import DiffusionWorldModel
    from cityenv.worldmodel.dit import CityDiT, SequenceLayout, sequence_positions
    from cityenv.worldmodel.freeze import FreezeFramePlan, encode_keyframes, plan_freeze_frames
    from cityenv.worldmodel.objective import flow_matching_loss, sample_drops, sample_timestep
    from cityenv.worldmodel.options import DiffusionOptions, WarpOptions
    from cityenv.worldmodel.presets import PRESETS, load_preset
    from cityenv.worldmodel.referencing import (
        PreparedReference,
        ReferenceLoader,
        Referencer,
        ReferenceView,
        prepare_reference,
        warp_nearest,
    )
    from cityenv.worldmodel.registry import WORLD_MODELS, make_world_model
    from cityenv.worldmodel.settings import SamplingSettings
    from cityenv.worldmodel.text import (
        LazyTextEncoder,
        MiniLMTextEncoder,
        T5TextEncoder,
        TextEncoder,
        make_text_encoder,
    )
    from cityenv.worldmodel.vae import StreamingDecoder, VideoVAE
    from cityenv.worldmodel.warp import WarpWorldModel

_HOMES = {
    "ChunkOutput": "base",
    "ChunkReferences": "base",
    "WorldModel": "base",
    "ChunkSequence": "conditioning",
    "Conditioner": "conditioning",
    "DiffusionWorldModel": "diffusion",
    "CityDiT": "dit",
    "SequenceLayout": "dit",
    "sequence_positions": "dit",
    "FreezeFramePlan": "freeze",
    "encode_keyframes": "freeze",
    "plan_freeze_frames": "freeze",
    "flow_matching_loss": "objective",
    "sample_drops": "objective",
    "sample_timestep": "objective",
    "DiffusionOptions": "options",
    "WarpOptions": "options",
    "PRESETS": "presets",
    "load_preset": "presets",
    "PreparedReference": "referencing",
    "ReferenceLoader": "referencing",
    "Referencer": "referencing",
    "ReferenceView": "referencing",
    "prepare_reference": "referencing",
    "warp_nearest": "referencing",
    "WORLD_MODELS": "registry",
    "make_world_model": "registry",
    "SamplingSettings": "settings",
    "LazyTextEncoder": "text",
    "MiniLMTextEncoder": "text",
    "T5TextEncoder": "text",
    "TextEncoder": "text",
    "make_text_encoder": "text",
    "StreamingDecoder": "vae",
    "VideoVAE": "vae",
    "WarpWorldModel": "warp",
}
__all__ = [
    "ChunkOutput",
    "ChunkReferences",
    "ChunkSequence",
    "CityDiT",
    "Conditioner",
    "DiffusionOptions",
    "DiffusionWorldModel",
    "encode_keyframes",
    "flow_matching_loss",
    "FreezeFramePlan",
    "LazyTextEncoder",
    "load_preset",
    "make_text_encoder",
    "make_world_model",
    "MiniLMTextEncoder",
    "plan_freeze_frames",
    "prepare_reference",
    "PreparedReference",
    "PRESETS",
    "ReferenceLoader",
    "Referencer",
    "ReferenceView",
    "sample_drops",
    "sample_timestep",
    "SamplingSettings",
    "sequence_positions",
    "SequenceLayout",
    "StreamingDecoder",
    "T5TextEncoder",
    "TextEncoder",
    "VideoVAE",
    "warp_nearest",
    "WORLD_MODELS",
    "WarpOptions",
    "WarpWorldModel",
    "WorldModel",
]

__getattr__, __dir__ = lazy_namespace(__name__, _HOMES, __all__)
