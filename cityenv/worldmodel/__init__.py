"""cityenv.worldmodel: the world-model interface and its implementations.

- :class:`WarpWorldModel`: non-learned retrieval + forward splatting.
- :class:`DiffusionWorldModel`: SWM's retrieval-augmented autoregressive video diffusion
  (:class:`CityDiT` on Wan's transformer modules, :class:`VideoVAE` around ``AutoencoderKLWan``,
  a pluggable text encoder, diffusers' flow-matching scheduler), presets in
  ``configs/worldmodel/``.

Names are imported on first use (PEP 562): the interface does not pull in diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cityenv._lazy import lazy_namespace

if TYPE_CHECKING:
    from cityenv.worldmodel.base import (
        ChunkOutput,
        ChunkReferences,
        ReferenceLoader,
        ReferenceView,
        WorldModel,
    )
    from cityenv.worldmodel.diffusion import (
        PRESETS,
        ChunkSequence,
        DiffusionWorldModel,
        RolloutSettings,
        load_preset,
    )
    from cityenv.worldmodel.dit import CityDiT, SequenceLayout, sequence_positions
    from cityenv.worldmodel.freeze import FreezeFramePlan, plan_freeze_frames
    from cityenv.worldmodel.objective import flow_matching_loss, sample_drops, sample_timestep
    from cityenv.worldmodel.text import (
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
    "ReferenceLoader": "base",
    "ReferenceView": "base",
    "WorldModel": "base",
    "PRESETS": "diffusion",
    "ChunkSequence": "diffusion",
    "DiffusionWorldModel": "diffusion",
    "RolloutSettings": "diffusion",
    "load_preset": "diffusion",
    "CityDiT": "dit",
    "SequenceLayout": "dit",
    "sequence_positions": "dit",
    "FreezeFramePlan": "freeze",
    "plan_freeze_frames": "freeze",
    "flow_matching_loss": "objective",
    "sample_drops": "objective",
    "sample_timestep": "objective",
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
    "DiffusionWorldModel",
    "FreezeFramePlan",
    "MiniLMTextEncoder",
    "PRESETS",
    "ReferenceLoader",
    "ReferenceView",
    "RolloutSettings",
    "SequenceLayout",
    "StreamingDecoder",
    "T5TextEncoder",
    "TextEncoder",
    "VideoVAE",
    "WarpWorldModel",
    "WorldModel",
    "flow_matching_loss",
    "load_preset",
    "make_text_encoder",
    "plan_freeze_frames",
    "sample_drops",
    "sample_timestep",
    "sequence_positions",
]

__getattr__, __dir__ = lazy_namespace(__name__, _HOMES, __all__)
