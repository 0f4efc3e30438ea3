"""The frozen CLIP vision tower (`CLIPVisionModel`), wrapped the way upstream LLaVA exposes it.

CLIP puts a CLS token before the patches: `mm_vision_select_feature` `patch` drops it, `cls_patch`
keeps it first. Its processor resizes the shortest edge and centre crops (`CLIPImageProcessor`).
"""

from __future__ import annotations

from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from .base_encoder import SELECT_FEATURES, VisionTower


class CLIPVisionTower(VisionTower):
    """Wraps `CLIPVisionModel` (a CLIP vision folder or a full `CLIPModel` folder); see `VisionTower`."""

    model_type = "clip_vision_model"
    num_prefix_tokens = 1
    select_features = SELECT_FEATURES
    config_class = CLIPVisionConfig
    model_class = CLIPVisionModel
    processor_class = CLIPImageProcessor
