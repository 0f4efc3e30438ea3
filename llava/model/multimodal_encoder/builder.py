"""Builds the vision tower named by a config (`mm_vision_tower` or `vision_tower`), chosen by its config.

The tower's family is the `model_type` in its folder's `config.json`, never guessed from its name:
a vision-only folder says `clip_vision_model` / `siglip_vision_model`; a full two-tower folder
(`clip`, `siglip`) carries it in its `vision_config`. A hub id is first resolved to its snapshot
folder (`llava.paths.resolve_model_path`), then read the same way. The configured name is kept as
given (`mm_vision_tower` in a checkpoint's config.json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llava.paths import resolve_model_path

from .base_encoder import TOWER_FLAG, VisionTower
from .clip_encoder import CLIPVisionTower
from .siglip_encoder import SiglipVisionTower

# the tower config's model_type -> its wrapper
VISION_TOWERS: dict[str, type[VisionTower]] = {
    tower.model_type: tower for tower in (CLIPVisionTower, SiglipVisionTower)
}
# a full two-tower model's model_type -> the model_type of its vision half (when its vision_config
# does not name it)
FULL_MODEL_TYPES = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}


def tower_name(vision_tower_cfg: Any) -> str:
    """The configured tower: `mm_vision_tower` (a model config) or `vision_tower` (the training flags)."""
    name = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
    if not name:
        raise ValueError("no vision tower configured (mm_vision_tower / --vision_tower is empty)")
    return name


def vision_tower_type(path: str | Path, name: str | None = None) -> str:
    """The vision tower `model_type` of the model folder `path` (its config.json); `name` is how
    errors call it (default: the path).

    Raises `FileNotFoundError` without a config.json and `ValueError` for a type no wrapper
    supports, listing the supported ones.
    """
    name = name or str(path)
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{TOWER_FLAG} {name}: no config.json in {path}")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{TOWER_FLAG} {name}: {config_file} is not valid JSON ({err})") from err
    model_type = config.get("model_type")
    if model_type in FULL_MODEL_TYPES:
        model_type = (config.get("vision_config") or {}).get("model_type", FULL_MODEL_TYPES[model_type])
    if model_type not in VISION_TOWERS:
        supported = ", ".join(sorted(VISION_TOWERS))
        full = ", ".join(sorted(FULL_MODEL_TYPES))
        raise ValueError(
            f"{TOWER_FLAG} {name}: model_type {model_type!r} ({config_file}) is not a supported vision "
            f"tower; supported: {supported} (or a full {full} model folder holding one)"
        )
    return model_type


def vision_tower_class(vision_tower_cfg: Any) -> tuple[type[VisionTower], str]:
    """The wrapper class for the configured tower and the folder it is read from (reads only its
    config.json: cheap, for checks before a model loads)."""
    name = tower_name(vision_tower_cfg)
    path = resolve_model_path(name, what=TOWER_FLAG)
    return VISION_TOWERS[vision_tower_type(path, name)], path


def check_vision_tower(vision_tower_cfg: Any) -> type[VisionTower]:
    """The checks a tower needs before any model loads (its config.json only): the folder or hub id
    resolves, its type has a wrapper, and the wrapper honours `mm_vision_select_feature`
    (SigLIP has no CLS for `cls_patch`). Returns the wrapper class."""
    tower_class, _ = vision_tower_class(vision_tower_cfg)
    feature = getattr(vision_tower_cfg, "mm_vision_select_feature", "patch")
    tower_class.check_select_feature(feature, tower_name(vision_tower_cfg))
    return tower_class


def build_vision_tower(vision_tower_cfg: Any, **kwargs: Any) -> VisionTower:
    """The tower wrapper for a local folder or a hub id, chosen by its config's `model_type`
    (`VISION_TOWERS`); `kwargs` go to the wrapper (`delay_load`)."""
    tower_class, path = vision_tower_class(vision_tower_cfg)
    return tower_class(tower_name(vision_tower_cfg), args=vision_tower_cfg, path=path, **kwargs)
