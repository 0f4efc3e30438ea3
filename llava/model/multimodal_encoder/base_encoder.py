"""What every frozen vision tower wrapper shares, whatever its transformers family.

Under transformers 5 `from_pretrained` builds models on the meta device, so a tower
cannot load its own weights inside the language model's `__init__`. A wrapper is
therefore created *delayed* (config only) and `load_model()` is called once the language
model exists: by the training entry, or by `load_pretrained_model`.

A family (`clip_encoder.py`, `siglip_encoder.py`) names its transformers classes and the
facts that differ between towers: how many tokens precede the patches in its output (CLIP's
CLS: 1, SigLIP: 0) and which `mm_vision_select_feature` values it can honour. How an image
becomes pixels (resize, crop, normalisation, pad fill) is its image processor's, read through
`llava.mm_utils.processor_input_size` and `patch_align.geometry.processor_transform`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers.utils import logging as hf_logging

from llava.mm_utils import processor_input_size
from llava.paths import resolve_model_path

# Every `mm_vision_select_feature` some tower honours: "patch" = the patch tokens only (a CLS
# token, where the tower has one, dropped), "cls_patch" = CLS first, then the patches.
SELECT_FEATURES = ("patch", "cls_patch")
# how errors name the tower's setting
TOWER_FLAG = "vision tower (mm_vision_tower)"


class VisionTower(nn.Module):
    """A frozen vision transformer; returns the hidden states of layer `select_layer`.

    `forward(images (B, 3, H, W)) -> (B, N, C)` with N = `num_patches` (`select_feature="patch"`)
    or `num_prefix_tokens + num_patches` (`"cls_patch"`, CLS first). A list of images (each
    (3, H, W) or (1, 3, H, W)) gives a list of (1, N, C) tensors. `select_layer` indexes
    `hidden_states` (0 = embeddings, -1 = last layer, -2 = penultimate, LLaVA's choice).
    """

    # the tower config's `model_type` (the registry key, `builder.VISION_TOWERS`)
    model_type: ClassVar[str]
    # tokens before the patch tokens in the encoder's output (CLS)
    num_prefix_tokens: ClassVar[int]
    # the `mm_vision_select_feature` values this tower can honour
    select_features: ClassVar[tuple[str, ...]]
    config_class: ClassVar[Any]
    model_class: ClassVar[Any]
    processor_class: ClassVar[Any]

    def __init__(self, vision_tower: str, args: Any, delay_load: bool = False, path: str | None = None):
        super().__init__()
        self.is_loaded = False
        self.vision_tower_name = vision_tower  # as configured (a hub id stays an id in config.json)
        # the folder it is read from: the path itself, or the hub snapshot of an id
        self.vision_tower_path = path or resolve_model_path(vision_tower, what=TOWER_FLAG)
        self.select_layer = args.mm_vision_select_layer
        self.select_feature = getattr(args, "mm_vision_select_feature", "patch")
        self.check_select_feature(self.select_feature, vision_tower)
        # Upstream's flag to load the tower right away even when delayed (used when it is trained).
        unfreeze = getattr(args, "unfreeze_mm_vision_tower", False)
        if not delay_load or unfreeze:
            self.load_model()
        else:
            overrides = self.model_overrides()
            self.cfg_only = self.config_class.from_pretrained(self.vision_tower_path, **overrides)

    @classmethod
    def check_select_feature(cls, select_feature: str, name: str) -> None:
        """`ValueError` naming the tower `name` when it cannot honour `select_feature`."""
        if select_feature not in cls.select_features:
            raise ValueError(
                f"mm_vision_select_feature={select_feature!r} is not supported by the "
                f"{cls.model_type} tower {name}; use one of {cls.select_features}"
            )

    @classmethod
    def model_overrides(cls) -> dict[str, Any]:
        """Config values the wrapper sets on top of the folder's (e.g. a head it does not use)."""
        return {}

    def load_model(self) -> None:
        """Load processor and weights from `vision_tower_path`; the tower is frozen.

        Raises `ValueError` when vision weights are missing, or when the processor's output is
        not the tower's `image_size` square (its patch grid would not be the tower's).
        """
        if self.is_loaded:
            return
        self.image_processor = self.processor_class.from_pretrained(self.vision_tower_path)
        # A full two-tower folder (CLIPModel, SiglipModel) also holds the text tower, and the wrapper
        # may drop a head: those keys are expected to be unused, so the load report is silenced and
        # only missing vision weights are an error.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            tower, info = self.model_class.from_pretrained(
                self.vision_tower_path, output_loading_info=True, **self.model_overrides()
            )
        finally:
            hf_logging.set_verbosity(verbosity)
        if info["missing_keys"]:
            raise ValueError(
                f"vision tower {self.vision_tower_name} lacks weights: {sorted(info['missing_keys'])[:6]}"
            )
        side = tower.config.image_size
        if processor_input_size(self.image_processor) != (side, side):
            raise ValueError(
                f"vision tower {self.vision_tower_name}: its image processor makes "
                f"{processor_input_size(self.image_processor)} (height, width) inputs, the tower takes "
                f"{side}x{side} (config image_size)"
            )
        self.vision_tower = tower
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def feature_select(self, outputs: Any) -> torch.Tensor:
        """(B, prefix + patches, C) hidden states of `select_layer` → the selected tokens."""
        features = outputs.hidden_states[self.select_layer]
        if self.select_feature == "patch":
            return features[:, self.num_prefix_tokens:]
        return features

    @torch.no_grad()
    def forward(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
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
    def config(self) -> Any:
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

    @property
    def num_tokens(self) -> int:
        """Vision tokens per image N that `forward` returns (patches, plus CLS with `cls_patch`)."""
        extra = self.num_prefix_tokens if self.select_feature == "cls_patch" else 0
        return self.num_patches + extra
