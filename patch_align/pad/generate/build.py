"""From generation options to a run: build the three stages, describe them, and start the pipeline."""

from __future__ import annotations

import os
from typing import Any

from patch_align.pad.generate.detectors import ZeroShotDetector
from patch_align.pad.generate.items import load_image_items
from patch_align.pad.generate.options import GenerateOptions
from patch_align.pad.generate.pipeline import RunCounts, distributed_position, pick_device, run_generation
from patch_align.pad.generate.segmenters import SamSegmenter
from patch_align.pad.generate.taggers import CaptionTagger, ClipTagger, FileTagger


def _build_tagger(options: GenerateOptions, device: Any) -> Any:
    if options.tagger == "captions":
        return CaptionTagger(options.max_tags)
    if options.tagger == "file":
        return FileTagger(options.tags_file, options.max_tags)
    return ClipTagger(
        options.clip_model, options.vocabulary, options.clip_threshold, options.max_tags, device
    )


def generate_pad(options: GenerateOptions) -> tuple[RunCounts, int, int]:
    """Run this process's share of PAD generation; returns (counts, rank, world size)."""
    options.check()
    rank, world_size, local_rank = distributed_position()
    device, dtype = pick_device(local_rank, options.device)
    items, text_only = load_image_items(options.data)
    tagger = _build_tagger(options, device)
    detector = ZeroShotDetector(
        options.detector,
        options.box_threshold,
        options.text_threshold,
        options.nms_iou,
        options.dedup_iou,
        options.max_regions,
        options.min_box_side,
        device,
        dtype,
    )
    segmenter = SamSegmenter(options.segmenter, device, dtype)
    settings = {
        "data": os.path.abspath(options.data),
        "image_folder": os.path.abspath(options.image_folder),
        "world_size": world_size,
        "rank": rank,
        "images": len(items),
        "text_only_samples": text_only,
        "source": f"{tagger.name}+{detector.model_type}+sam",
        "min_mask_area": options.min_mask_area,
        "tagger": tagger.settings(),
        "detector": detector.settings(),
        "segmenter": segmenter.settings(),
        "device": str(device),
        "autocast": str(dtype) if dtype is not None else None,
        "batch_size": options.batch_size,
        "num_workers": options.num_workers,
    }
    counts = run_generation(
        items,
        options.image_folder,
        options.out,
        tagger,
        detector,
        segmenter,
        settings,
        options.batch_size,
        options.num_workers,
        rank,
        world_size,
        options.min_mask_area,
        progress=options.progress and rank == 0,
    )
    return counts, rank, world_size
