"""SEA label quality against exact patch truth: precision, recall and the truth of each patch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CLIPImageProcessor

from patch_align.sea.quality import label_precision_recall, patch_word_truth


def test_precision_counts_kept_labels_and_recall_counts_true_pairs():
    # two patches: patch 0 is a red circle (ids 0, 1), patch 1 is background
    truth = [[frozenset({0, 1}), frozenset()]]
    ids = [torch.tensor([[0, 2], [1, -1]])]  # one right and one wrong on 0; a wrong one on background
    result = label_precision_recall(ids, truth)
    assert result == {"precision": 1 / 3, "recall": 1 / 2, "labels": 3, "true_pairs": 2, "patches": 2}


def test_no_kept_label_and_no_true_word_give_none_not_zero():
    result = label_precision_recall([torch.tensor([[-1], [-1]])], [[frozenset(), frozenset()]])
    assert result["precision"] is None and result["recall"] is None


def test_mismatched_sizes_are_refused():
    with pytest.raises(ValueError, match="patches"):
        label_precision_recall([torch.tensor([[0]])], [[frozenset(), frozenset()]])
    with pytest.raises(ValueError, match="truth lists"):
        label_precision_recall([torch.tensor([[0]])], [])


def test_a_patch_is_true_of_the_words_of_regions_covering_half_of_it():
    # a 28×28 image, processor of 28 px: a 2×2 grid of 14-px patches
    processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    left = np.zeros((28, 28), dtype=bool)
    left[:, :14] = True  # the left column of patches, fully
    corner = np.zeros((28, 28), dtype=bool)
    corner[14:, 14:20] = True  # 6/14 of the bottom-right patch: under half
    vocabulary = {"red": 0, "circle": 1, "small": 2, "blue": 3}
    truth = patch_word_truth([left, corner], [["red", "circle", "tiny"], ["blue"]], vocabulary, processor,
                             "square", patch_size=14)
    assert truth == [frozenset({0, 1}), frozenset(), frozenset({0, 1}), frozenset()]
