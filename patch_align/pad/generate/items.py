"""The images of a LLaVA data JSON that PAD generation works on, in file order."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ImageItem:
    """One LLaVA sample with an image: position in the data file, id, relative image path, caption."""

    index: int
    id: str
    image: str
    caption: str


def caption_of(sample: dict[str, Any]) -> str:
    """The first model ('gpt') turn of a LLaVA sample: the caption in the pretraining set, '' if none."""
    for turn in sample.get("conversations") or []:
        if isinstance(turn, dict) and turn.get("from") == "gpt" and isinstance(turn.get("value"), str):
            return turn["value"]
    return ""


def load_image_items(data_path: str | os.PathLike) -> tuple[list[ImageItem], int]:
    """The samples with an image, in file order, and the number of text-only samples skipped.

    Raises ValueError naming the file and sample for a sample that is not an object with
    a string id, and for an id that appears twice (PAD joins on ids).
    """
    with open(data_path, encoding="utf-8") as f:
        samples = json.load(f)
    if not isinstance(samples, list):
        raise ValueError(f"{data_path}: expected a JSON list of samples")
    items: list[ImageItem] = []
    seen: set[str] = set()
    text_only = 0
    for position, sample in enumerate(samples):
        if not isinstance(sample, dict) or not isinstance(sample.get("id"), (str, int)):
            raise ValueError(f"{data_path}: sample {position} has no string 'id'")
        if not isinstance(sample.get("image"), str):
            text_only += 1
            continue
        sample_id = str(sample["id"])
        if sample_id in seen:
            raise ValueError(f"{data_path}: sample {position}: id {sample_id} appears twice")
        seen.add(sample_id)
        items.append(ImageItem(position, sample_id, sample["image"], caption_of(sample)))
    return items, text_only
