"""The images of a LLaVA data JSON that PAD generation works on, in file order."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from llava.train.llava_json import image_samples


@dataclass(frozen=True)
class ImageItem:
    """One LLaVA sample with an image: position in the data file, id, relative image path, caption."""

    index: int
    id: str
    image: str
    caption: str


def caption_of(sample: dict[str, Any]) -> str:
    """The first model ('gpt') turn of a checked LLaVA sample: the pretraining set's caption, '' if none."""
    return next((turn["value"] for turn in sample["conversations"] if turn["from"] == "gpt"), "")


def load_image_items(data_path: str | os.PathLike) -> tuple[list[ImageItem], int]:
    """The samples with an image, in file order, and the number of text-only samples skipped.

    The file is read by `llava.train.llava_json.image_samples` (the training reader's rules,
    and unique ids among image samples: PAD joins on ids); a bad sample is a `LlavaDataError`
    (a ValueError) naming the file and the sample.
    """
    samples, text_only = image_samples(data_path)
    return [ImageItem(s.index, s.id, s.image, caption_of(s.record)) for s in samples], text_only
