"""The app's view functions equal the analysis code's own numbers on the same inputs.

Planted tensors (every expected value known) for the pure views; the tiny upstream checkpoint
for the session, compared with ``patch-align analyze``'s runner on the same PAD record.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from patch_align.analysis.alignment import cosine_maps, image_alignment
from patch_align.analysis.probes import nearest_words
from patch_align.analysis.runner import AnalysisAccumulator, AnalysisOptions
from patch_align.app.views import (
    ViewInputError,
    decompose_patch,
    grid_overlay,
    heatmap_overlay,
    patch_at,
    patch_box_in_original,
    patch_nearest_words,
    region_overlay,
    region_scores,
    seen_image,
    word_heatmap,
)
from patch_align.geometry import model_input_transform

D = 6
WORDS = ["red", "box", "sky", "dog", "cat", "sea"]


def _tokens() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(4, D)  # a 2x2 grid


def test_nearest_words_are_the_probe_rows_with_their_cosines():
    tokens, dictionary = _tokens(), torch.randn(6, D)
    ids, cos = nearest_words(tokens, dictionary, top_k=3)
    views = patch_nearest_words(tokens, dictionary, WORDS, top_k=3)
    assert [v.patch for v in views] == [0, 1, 2, 3]
    for view, row_ids, row_cos in zip(views, ids.tolist(), cos.tolist(), strict=True):
        assert view.words == [(WORDS[i], c) for i, c in zip(row_ids, row_cos, strict=True)]


def test_a_token_equal_to_a_word_has_that_word_first_at_cosine_one():
    dictionary = torch.eye(D) * 3.0
    views = patch_nearest_words(dictionary[[4]], dictionary, WORDS, top_k=2)
    assert views[0].words[0][0] == "cat"
    assert views[0].words[0][1] == pytest.approx(1.0)


def test_word_heatmap_is_the_cosine_map_on_the_grid():
    tokens, phrase = _tokens(), torch.randn(D)
    expected = cosine_maps(tokens, phrase[None])[0].reshape(2, 2).numpy()
    np.testing.assert_array_equal(word_heatmap(tokens, phrase, (2, 2)), expected)


def test_decomposition_of_a_patch_is_the_accumulators_pursuit_in_selection_order():
    tokens, dictionary = _tokens(), torch.randn(6, D)
    for pursuit in ("omp", "mp"):
        options = AnalysisOptions(pursuit=pursuit)
        accumulator = AnalysisAccumulator(dictionary, torch.arange(6), WORDS, options)
        code = accumulator.pursue(tokens)
        view = decompose_patch(accumulator, tokens, 2)
        used = int(code.atoms_used[2])
        assert [w for w, _ in view.words] == [WORDS[a] for a in code.atom_ids[2, :used].tolist()]
        # one token alone vs in a batch: the same float32 sums in another order
        assert [c for _, c in view.words] == pytest.approx(code.coefficients[2, :used].tolist(), abs=1e-6)
        assert view.explained_variance == pytest.approx(float(code.explained_variance[2]))


def test_a_planted_mixture_decomposes_into_its_words():
    dictionary = torch.eye(D)
    accumulator = AnalysisAccumulator(dictionary, torch.arange(6), WORDS, AnalysisOptions())
    token = (2.0 * dictionary[0] - 0.5 * dictionary[3])[None]
    view = decompose_patch(accumulator, token, 0)
    assert view.words == [("red", 2.0), ("dog", -0.5)]
    with pytest.raises(ViewInputError, match="patch 1 is not in 0..0"):
        decompose_patch(accumulator, token, 1)


def test_region_scores_equal_image_alignment_under_the_analyze_options():
    tokens, labels = _tokens(), torch.randn(3, D)
    masks = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    options = AnalysisOptions(assign="threshold", threshold_k=0.5)
    result = image_alignment(tokens, labels, masks, assign="threshold", threshold_k=0.5)
    scores = region_scores(tokens, labels, masks, ["red", "sky", "sea"], options)
    assert [s.label for s in scores] == ["red", "sea"]  # the empty 'sky' mask is not scored
    assert [s.iou for s in scores] == result.iou.tolist()
    assert [s.pointing_hit for s in scores] == result.pointing_hit.tolist()
    assert [s.cos_inside for s in scores] == result.cos_inside.tolist()
    assert scores[0].cos_outside == result.cos_outside[0].item()
    assert scores[1].cos_outside is None  # 'sea' covers every patch


def test_patch_at_maps_model_pixels_to_row_major_patches():
    assert patch_at(0, 0, (4, 4), 14) == 0
    assert patch_at(15, 0, (4, 4), 14) == 1
    assert patch_at(55.9, 55.9, (4, 4), 14) == 15
    assert patch_at(0, 14, (4, 4), 14) == 4
    with pytest.raises(ViewInputError, match="outside the 4x4 patch grid"):
        patch_at(56, 0, (4, 4), 14)


def test_patch_boxes_map_back_to_the_original_image():
    # 80x60 padded to 80x80 (10 px on top), resized to 56: a 14-px patch is 20 original px
    pad = model_input_transform(80, 60, "pad", 56)
    assert patch_box_in_original(0, (4, 4), 14, pad) == pytest.approx((0.0, -10.0, 20.0, 10.0))
    assert patch_box_in_original(15, (4, 4), 14, pad) == pytest.approx((60.0, 50.0, 80.0, 70.0))
    # square: height 60 -> 56, width 80 -> int(74.67) = 74, the centre crop drops 9 model px on the left
    square = model_input_transform(80, 60, "square", 56)
    x0, y0, x1, y1 = patch_box_in_original(0, (4, 4), 14, square)
    assert (x0, y0) == pytest.approx((9 * 80 / 74, 0.0))
    assert (x1 - x0, y1 - y0) == pytest.approx((14 * 80 / 74, 15.0))


def test_seen_image_undoes_the_processor_normalisation():
    mean, std = [0.5, 0.25, 0.0], [0.5, 0.25, 1.0]
    pixels = torch.zeros(3, 2, 2)
    pixels[0, 0, 0] = 1.0  # red channel (1 * 0.5 + 0.5) = 1.0 at the top-left pixel
    image = np.asarray(seen_image(pixels, mean, std))
    assert image.shape == (2, 2, 3)
    assert image[0, 0].tolist() == [255, 64, 0]
    assert image[1, 1].tolist() == [128, 64, 0]


def test_overlays_keep_the_grid_geometry_at_the_display_scale():
    image = Image.new("RGB", (56, 56), (0, 0, 0))
    grid = np.asarray(grid_overlay(image, (4, 4), 14, selected=5))
    assert grid.shape == (448, 448, 3)  # 8x, so one patch is 112 display px
    assert grid[0, 50].tolist() == [255, 255, 255]  # the top grid line
    assert grid[112 + 50, 112].tolist() == [255, 0, 0]  # the left edge of the selected patch 5
    heat = np.asarray(heatmap_overlay(image, np.array([[0.0, 1.0]] * 2, dtype=np.float32), 28, alpha=1.0))
    assert heat[10, 10].tolist() != heat[10, 300].tolist()  # low and high ends of the colour map
    masks = np.zeros((1, 4), dtype=bool)
    masks[0, 3] = True
    regions = np.asarray(region_overlay(image, masks, (2, 2), 28))
    assert regions[10, 10].tolist() == [0, 0, 0]  # uncovered patches are left as they are
    assert regions[300, 300].sum() > 0
