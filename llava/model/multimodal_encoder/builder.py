"""Builds the vision tower named by a config (`mm_vision_tower` or `vision_tower`)."""

from __future__ import annotations

import os

from .clip_encoder import CLIPVisionTower


def build_vision_tower(vision_tower_cfg, **kwargs) -> CLIPVisionTower:
    """Return a CLIP tower wrapper for a local folder or a hub id containing a CLIP model."""
    name = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
    if not name:
        raise ValueError("no vision tower configured (mm_vision_tower / --vision_tower is empty)")
    is_local = os.path.exists(name)
    if is_local or "clip" in name.lower() or name.startswith(("openai", "laion")):
        return CLIPVisionTower(name, args=vision_tower_cfg, **kwargs)
    raise ValueError(
        f"unknown vision tower {name!r}: expected a local CLIP folder or a CLIP model id (e.g. "
        "openai/clip-vit-large-patch14-336)"
    )
