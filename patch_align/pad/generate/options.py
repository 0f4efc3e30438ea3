"""Options of `patch-align pad generate`, checked; kept free of torch so the CLI parser stays light."""

from __future__ import annotations

import os
from dataclasses import dataclass

TAGGERS = ("captions", "file", "clip")


@dataclass(frozen=True)
class GenerateOptions:
    """Everything `patch-align pad generate` takes; thresholds are probabilities in [0, 1], sizes pixels."""

    data: str
    image_folder: str
    out: str
    tagger: str = "captions"
    tags_file: str | None = None
    clip_model: str | None = None
    vocabulary: str | None = None
    clip_threshold: float = 0.25
    max_tags: int = 30
    detector: str = "IDEA-Research/grounding-dino-base"
    segmenter: str = "facebook/sam-vit-huge"
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    nms_iou: float = 0.5
    dedup_iou: float = 0.9
    max_regions: int = 20
    min_box_side: float = 2.0
    min_mask_area: int = 64
    batch_size: int = 8
    num_workers: int = 4
    device: str | None = None
    progress: bool = True

    def check(self) -> None:
        """Raise ValueError naming the flag for an option out of range or missing its companion."""
        if self.tagger not in TAGGERS:
            raise ValueError(f"--tagger {self.tagger!r}: choose one of {TAGGERS}")
        if self.tagger == "file" and not self.tags_file:
            raise ValueError("--tagger file needs --tags-file")
        if self.tagger == "clip" and not (self.clip_model and self.vocabulary):
            raise ValueError("--tagger clip needs --clip-model and --vocabulary")
        for flag in ("clip_threshold", "box_threshold", "text_threshold", "nms_iou", "dedup_iou"):
            if not 0.0 <= getattr(self, flag) <= 1.0:
                raise ValueError(f"--{flag.replace('_', '-')} must be in [0, 1], got {getattr(self, flag)}")
        for flag in ("max_tags", "max_regions", "batch_size"):
            if getattr(self, flag) < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(self, flag)}")
        if self.num_workers < 0 or self.min_mask_area < 0 or self.min_box_side < 0:
            raise ValueError("--num-workers, --min-mask-area and --min-box-side must not be negative")
        if not os.path.isfile(self.data):
            raise ValueError(f"--data {self.data}: no such file")
        if not os.path.isdir(self.image_folder):
            raise ValueError(f"--image-folder {self.image_folder}: no such directory")
