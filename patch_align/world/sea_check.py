"""SEA labels of a world, checked against its exact patch truth before training uses them.

The truth of a patch is the colour, shape and size words of every object covering at least half
of it in the labels' geometry (`patch_align.sea.quality`): the world knows them exactly, so the
label sign (`negated`, the paper's convention for OpenAI CLIP, or `plain`) can be chosen by
measuring, on held-out images, which one names the patches' true words more often.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from patch_align.world.generator import WORLD_FILES

# An object's patch has three true words in the world (colour, shape, size): keep as many labels.
SEA_TOP_N = 3
SIGN_FILE = "sign_choice.json"


def world_label_quality(labels_dir: Path, world: Path, clip_dir: Path) -> dict[str, Any]:
    """Precision and recall (`quality.label_precision_recall`) of the labels in `labels_dir`, made from
    the world's held-out pretraining file, against the truth of `pad/eval.jsonl` and `scenes/eval.jsonl`;
    `chance_precision` is that of a word drawn uniformly from the vocabulary for every patch."""
    from transformers import CLIPImageProcessor

    from patch_align.pad import decode_region_mask, load_pad_index
    from patch_align.sea.quality import label_precision_recall, patch_word_truth
    from patch_align.sea.store import SeaLabels

    labels = SeaLabels(labels_dir)
    vocabulary = {word: i for i, word in enumerate(labels.words)}
    processor = CLIPImageProcessor.from_pretrained(str(clip_dir))
    patch_size = json.loads((clip_dir / "config.json").read_text())["vision_config"]["patch_size"]
    sizes = {}
    for line in (world / WORLD_FILES["scenes_eval"]).read_text().splitlines():
        scene = json.loads(line)
        sizes[scene["id"]] = [o["size"] for o in scene["objects"]]
    ids, truth = [], []
    for record in load_pad_index(world / WORLD_FILES["pad_eval"]).values():
        if record.id not in labels or not record.regions:
            continue
        masks = [decode_region_mask(r, record.height, record.width) for r in record.regions]
        words = [[*r.label.split(), size] for r, size in zip(record.regions, sizes[record.id], strict=True)]
        aspect = labels.settings["image_aspect_ratio"]
        truth.append(patch_word_truth(masks, words, vocabulary, processor, aspect, patch_size))
        ids.append(labels.labels(record.id)[0])
    quality = label_precision_recall(ids, truth)
    return {**quality, "chance_precision": quality["true_pairs"] / (quality["patches"] * len(vocabulary))}


def choose_sign(quality: dict[str, dict[str, Any]]) -> str:
    """The sign whose labels are more precise; a tie (or no label kept by either) keeps the paper's
    `negated`."""
    def precision(sign: str) -> float:
        value = quality[sign]["precision"]
        return -1.0 if value is None else value

    return "plain" if precision("plain") > precision("negated") else "negated"
