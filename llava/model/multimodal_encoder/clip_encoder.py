"""The frozen CLIP vision tower, wrapped the way upstream LLaVA exposes it.

Under transformers 5 `from_pretrained` builds models on the meta device, so a tower
cannot load its own weights inside the language model's `__init__`. The wrapper is
therefore created *delayed* (config only) and `load_model()` is called once the language
model exists: by the training entry, or by `load_pretrained_model`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel
from transformers.utils import logging as hf_logging

from llava.paths import resolve_model_path

SELECT_FEATURES = ("patch", "cls_patch")


class CLIPVisionTower(nn.Module):
    """Wraps `CLIPVisionModel`; returns hidden states of layer `select_layer`.

    `forward(images (B, 3, H, W)) -> (B, N, C)` where N = number of patches
    (`select_feature="patch"`, CLS dropped) or patches + 1 (`"cls_patch"`, CLS first).
    A list of images (each (3, H, W) or (1, 3, H, W)) gives a list of (1, N, C) tensors.
    """

    def __init__(self, vision_tower: str, args, delay_load: bool = False):
        super().__init__()
        self.is_loaded = False
        self.vision_tower_name = vision_tower  # as configured (a hub id stays an id in config.json)
        # the folder it is read from: the path itself, or the hub snapshot of an id
        self.vision_tower_path = resolve_model_path(vision_tower, what="vision tower (mm_vision_tower)")
        self.select_layer = args.mm_vision_select_layer
        self.select_feature = getattr(args, "mm_vision_select_feature", "patch")
        if self.select_feature not in SELECT_FEATURES:
            raise ValueError(
                f"mm_vision_select_feature={self.select_feature!r} is not supported; "
                f"use one of {SELECT_FEATURES}"
            )
        # Upstream's flag to load the tower right away even when delayed (used when it is trained).
        unfreeze = getattr(args, "unfreeze_mm_vision_tower", False)
        if not delay_load or unfreeze:
            self.load_model()
        else:
            self.cfg_only = CLIPVisionConfig.from_pretrained(self.vision_tower_path)

    def load_model(self) -> None:
        """Load processor and weights from `vision_tower_name`; the tower is frozen."""
        if self.is_loaded:
            return
        self.image_processor = CLIPImageProcessor.from_pretrained(self.vision_tower_path)
        # A full CLIPModel folder also holds the text tower: its keys are expected to be unused,
        # so the load report is silenced and only missing vision weights are an error.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            tower, info = CLIPVisionModel.from_pretrained(self.vision_tower_path, output_loading_info=True)
        finally:
            hf_logging.set_verbosity(verbosity)
        if info["missing_keys"]:
            raise ValueError(
                f"vision tower {self.vision_tower_name} lacks weights: {sorted(info['missing_keys'])[:6]}"
            )
        self.vision_tower = tower
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def feature_select(self, outputs) -> torch.Tensor:
        features = outputs.hidden_states[self.select_layer]
        if self.select_feature == "patch":
            return features[:, 1:]
        return features

    @torch.no_grad()
    def forward(self, images):
        if isinstance(images, list):
            return [self._encode(image.unsqueeze(0) if image.dim() == 3 else image) for image in images]
        return self._encode(images)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        outputs = self.vision_tower(
            images.to(device=self.device, dtype=self.dtype), output_hidden_states=True
        )
        return self.feature_select(outputs).to(images.dtype)

    @property
    def dummy_feature(self) -> torch.Tensor:
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.dtype

    @property
    def device(self) -> torch.device:
        return self.vision_tower.device

    @property
    def config(self) -> CLIPVisionConfig:
        return self.vision_tower.config if self.is_loaded else self.cfg_only

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side**2
