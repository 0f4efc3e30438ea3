"""The frozen SigLIP vision tower (`SiglipVisionModel`), e.g. google/siglip-so400m-patch14-384.

SigLIP has no CLS token: every output token is a patch, so `mm_vision_select_feature` `patch`
keeps all of them (so400m-patch14-384: 27 x 27 = 729) and `cls_patch` is refused. Layer
`mm_vision_select_layer` (-2 = penultimate, as for CLIP) is read from `hidden_states`, which
come before `post_layernorm`; the attention-pooling head is never used, so it is not built.
Its processor (`SiglipImageProcessor`) resizes to `size` without keeping the aspect ratio and
without a centre crop, and normalises with mean = std = 0.5 (LLaVA's `pad` fill: 127).
"""

from __future__ import annotations

from typing import Any

from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

from .base_encoder import VisionTower


class SiglipVisionTower(VisionTower):
    """Wraps `SiglipVisionModel` (a SigLIP vision or full `SiglipModel` folder); see `VisionTower`."""

    model_type = "siglip_vision_model"
    num_prefix_tokens = 0
    select_features = ("patch",)
    config_class = SiglipVisionConfig
    model_class = SiglipVisionModel
    processor_class = SiglipImageProcessor

    @classmethod
    def model_overrides(cls) -> dict[str, Any]:
        # the head's weights stay in the file, unread (the load report of unused keys is silenced)
        return {"vision_use_head": False}
