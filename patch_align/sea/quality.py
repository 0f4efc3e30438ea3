"""How good SEA's offline labels are, measured against exact patch truth.

The sign of SEA's score (`--sign negated|plain`) is a property of the CLIP checkpoint (CLIP
Surgery found OpenAI CLIP's last-layer patch-text similarity inverted); it can be checked
wherever the true words of each patch are known, as in the miniature world. For one image,
`truth[p]` is the set of vocabulary ids that truly describe patch p (empty for background), and
the labels are `labeling.top_words`'s ids (N, n), −1 for a dropped slot:

- precision: the share of kept labels (id ≥ 0) over all patches that are true words of their patch;
- recall: the share of true (patch, word) pairs that are among the patch's kept labels.

A patch's truth comes from region masks in the labels' own geometry (`geometry.py`): a region
owns a patch when it covers at least `threshold` of it, with no argmax fallback, so a patch
only partly on an object has no truth from it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from patch_align.geometry import (
    AspectMode,
    coverage_to_patch_mask,
    mask_to_patch_coverage,
    processor_transform,
)


def patch_word_truth(masks: Sequence[np.ndarray], region_words: Sequence[Sequence[str]],
                     vocabulary: Mapping[str, int], image_processor: Any, aspect: AspectMode,
                     patch_size: int, threshold: float = 0.5) -> list[frozenset[int]]:
    """The true vocabulary ids of every patch of one image, row-major: N = G_h · G_w sets.

    `masks`: (H, W) bool per region in original pixels; `region_words[r]`: the words of region r
    (those not in `vocabulary` are ignored: labels cannot name them).
    """
    if len(masks) != len(region_words):
        raise ValueError(f"{len(masks)} masks for {len(region_words)} word lists")
    truth: list[set[int]] | None = None
    for mask, words in zip(masks, region_words, strict=True):
        height, width = mask.shape
        transform = processor_transform(width, height, aspect, image_processor)
        owned, _ = coverage_to_patch_mask(mask_to_patch_coverage(mask, transform, patch_size=patch_size),
                                          threshold, fallback="none")
        if truth is None:
            truth = [set() for _ in range(owned.size)]
        ids = {vocabulary[w] for w in words if w in vocabulary}
        for patch in np.flatnonzero(owned.ravel()):
            truth[patch] |= ids
    if truth is None:
        raise ValueError("patch_word_truth needs at least one region (the grid comes from its mask)")
    return [frozenset(t) for t in truth]


def label_precision_recall(word_ids: Sequence[torch.Tensor],
                           truth: Sequence[Sequence[frozenset[int]]]) -> dict[str, float | int | None]:
    """Precision and recall of SEA labels over images: `word_ids[i]` (N, n) int, `truth[i]` N sets.

    Returns {"precision", "recall", "labels" (kept), "true_pairs", "patches"}; precision is None
    when no label was kept, recall None when no patch has a true word.
    """
    if len(word_ids) != len(truth):
        raise ValueError(f"{len(word_ids)} label arrays for {len(truth)} truth lists")
    kept = correct = true_pairs = found = patches = 0
    for ids, image_truth in zip(word_ids, truth, strict=True):
        if ids.shape[0] != len(image_truth):
            raise ValueError(f"labels of {ids.shape[0]} patches against truth of {len(image_truth)}")
        for row, true_ids in zip(ids.tolist(), image_truth, strict=True):
            labels = {i for i in row if i >= 0}
            kept += sum(1 for i in row if i >= 0)
            correct += sum(1 for i in row if i >= 0 and i in true_ids)
            true_pairs += len(true_ids)
            found += len(true_ids & labels)
            patches += 1
    return {"precision": correct / kept if kept else None,
            "recall": found / true_pairs if true_pairs else None,
            "labels": kept, "true_pairs": true_pairs, "patches": patches}
