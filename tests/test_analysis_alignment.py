"""Specification of patch_align.analysis.alignment (patch-level Align(V, W) scores).

All images are 2×2 grids (N = 4 patches, row-major) in D = 4 with basis vectors e0..e3,
so every cosine is known exactly.
"""

import pytest
import torch

from patch_align.analysis.alignment import (
    AlignmentAccumulator,
    cosine_maps,
    image_alignment,
    predict_region_masks,
)

E = torch.eye(4)
# Regions: r0 = patches {0, 1}, r1 = {2}, r2 = {3}.
MASKS = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
ALIGNED_PATCHES = torch.stack([E[0], 2.0 * E[0], E[1], E[2]])
WORDS = torch.stack([E[0], E[1], E[2]])


def score(patches, words, masks, **options):
    acc = AlignmentAccumulator(**options)
    acc.update(patches, words, masks)
    return acc.result()


def test_perfect_alignment_gives_miou_and_pointing_one():
    result = score(ALIGNED_PATCHES, WORDS, MASKS)
    assert result == {
        "miou": 1.0,
        "pointing_accuracy": 1.0,
        "mean_cos_inside": 1.0,
        "mean_cos_outside": 0.0,
        # exact means over all 3^4 label assignments (see the chance tests below)
        "chance_miou": pytest.approx(2 / 9, abs=1e-12),
        "chance_pointing_accuracy": pytest.approx(1 / 3, abs=1e-12),
        "images": 1,
        "regions_scored": 3,
        "regions_skipped_empty_mask": 0,
        "regions_without_outside": 0,
    }


def test_swapped_labels_of_two_regions_score_as_computed_by_hand():
    # Words of r1 and r2 swapped: r0 keeps IoU 1, r1 predicts {3} (IoU 0), r2 predicts {2} (IoU 0).
    # Outside cosines: r0 0; r1 and r2 each see one cosine-1 patch among 3 outside → 1/3.
    swapped = torch.stack([E[0], E[2], E[1]])
    result = score(ALIGNED_PATCHES, swapped, MASKS)
    assert result["miou"] == pytest.approx(1 / 3)
    assert result["pointing_accuracy"] == pytest.approx(1 / 3)
    assert result["mean_cos_inside"] == pytest.approx(1 / 3)
    assert result["mean_cos_outside"] == pytest.approx(2 / 9)


def test_partially_aligned_patch_changes_iou_but_not_pointing():
    # Patch 1 = (3 e0 + 4 e1)/5: cos 0.6 with r0's word, 0.8 with r1's → assigned to r1.
    # Predicted r0 = {0} (IoU 1/2), r1 = {1, 2} (IoU 1/2), r2 = {3} (IoU 1): mIoU 2/3.
    # Inside means: r0 (1 + 0.6)/2, r1 1, r2 1; outside: r0 0, r1 0.8/3, r2 0.
    patches = torch.stack([E[0], 0.6 * E[0] + 0.8 * E[1], E[1], E[2]])
    result = image_alignment(patches, WORDS, MASKS)
    assert result.iou.tolist() == pytest.approx([0.5, 0.5, 1.0])
    assert result.pointing_hit.tolist() == [True, True, True]
    assert result.cos_inside.tolist() == pytest.approx([0.8, 1.0, 1.0])
    assert result.cos_outside.tolist() == pytest.approx([0.0, 0.8 / 3, 0.0])


def test_background_threshold_leaves_unmatched_patches_unassigned():
    # Patch 3 = e3 is orthogonal to every word. Plain argmax gives it to r0 (first of tied
    # zeros): r0 IoU 2/3, r2 IoU 0 → mIoU 5/9. With a background threshold it belongs to no
    # label: r0 IoU 1, r2 IoU 0 → mIoU 2/3.
    patches = torch.stack([E[0], E[0], E[1], E[3]])
    assert score(patches, WORDS, MASKS)["miou"] == pytest.approx(5 / 9)
    assert score(patches, WORDS, MASKS, background_threshold=0.5)["miou"] == pytest.approx(2 / 3)


def test_threshold_rule_uses_mean_plus_k_population_std_or_a_fixed_value():
    # Map [1, 0.6, 0, 0]: mean 0.4, population std sqrt(0.18) = 0.4243.
    cos = torch.tensor([[1.0, 0.6, 0.0, 0.0]])
    k_one = predict_region_masks(cos, assign="threshold")  # t = 0.824
    k_zero = predict_region_masks(cos, assign="threshold", threshold_k=0.0)  # t = 0.4
    fixed = predict_region_masks(cos, assign="threshold", fixed_threshold=0.0)
    assert k_one.tolist() == [[True, False, False, False]]
    assert k_zero.tolist() == [[True, True, False, False]]
    assert fixed.tolist() == [[True] * 4]


def test_empty_true_masks_are_skipped_and_counted_but_their_labels_still_compete():
    # r3 (word e3) has an empty mask; patch 3 = e3 goes to r3, so r2 (true {3}) predicts nothing.
    patches = torch.stack([E[0], E[0], E[1], E[3]])
    words = torch.stack([E[0], E[1], E[2], E[3]])
    masks = torch.cat([MASKS, torch.zeros(1, 4, dtype=torch.bool)])
    result = score(patches, words, masks)
    assert result["regions_scored"] == 3
    assert result["regions_skipped_empty_mask"] == 1
    assert result["miou"] == pytest.approx(2 / 3)


def test_accumulator_averages_over_regions_of_all_images():
    acc = AlignmentAccumulator()
    acc.update(ALIGNED_PATCHES, WORDS, MASKS)
    acc.update(ALIGNED_PATCHES, torch.stack([E[0], E[2], E[1]]), MASKS)
    result = acc.result()
    assert result["images"] == 2
    assert result["regions_scored"] == 6
    assert result["miou"] == pytest.approx((3 + 1) / 6)
    assert result["pointing_accuracy"] == pytest.approx(4 / 6)


def test_region_covering_the_whole_image_has_no_outside_cosine():
    result = score(ALIGNED_PATCHES, E[:1], torch.ones(1, 4, dtype=torch.bool))
    assert result["regions_without_outside"] == 1
    assert result["mean_cos_outside"] is None
    assert result["miou"] == 1.0


def test_cosine_maps_are_batched_and_dtype_agnostic():
    generator = torch.Generator().manual_seed(0)
    patches = torch.randn(2, 4, 8, generator=generator)
    words = torch.randn(2, 3, 8, generator=generator)
    batched = cosine_maps(patches.to(torch.bfloat16), words.to(torch.bfloat16))
    assert batched.shape == (2, 3, 4)
    assert batched.dtype == torch.float32
    for b in range(2):
        assert torch.allclose(batched[b], cosine_maps(patches[b], words[b]), atol=2e-2)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="true_masks must have shape"):
        image_alignment(ALIGNED_PATCHES, WORDS, MASKS[:2])
    with pytest.raises(ValueError, match="patch_tokens row at index"):
        image_alignment(torch.zeros(4, 4), WORDS, MASKS)
    with pytest.raises(ValueError, match="assign must be"):
        AlignmentAccumulator(assign="nearest")
    with pytest.raises(ValueError, match="background_threshold applies only"):
        AlignmentAccumulator(assign="threshold", background_threshold=0.1)
    with pytest.raises(ValueError, match="no region was scored"):
        score(ALIGNED_PATCHES, WORDS, torch.zeros(3, 4, dtype=torch.bool))


# Chance lines (issue 20): the score of a uniformly random argmax label per patch.


def test_chance_iou_of_a_two_label_image_is_its_exact_expectation():
    # N = 2 patches, region 'a' owns patch 0; patches pick 'a' or 'b' with 1/2 each:
    # (a, a) → IoU 1/2, (a, b) → 1, (b, ·) → 0: mean 3/8. Its argmax patch hits with 1/2.
    from patch_align.analysis.alignment import chance_region_scores

    iou, pointing = chance_region_scores(torch.tensor([[True, False]]), n_labels=2)
    assert iou.tolist() == pytest.approx([0.375], abs=1e-12)
    assert pointing.tolist() == [0.5]


def test_chance_iou_equals_the_mean_over_every_label_assignment():
    import itertools

    from patch_align.analysis.alignment import chance_region_scores

    expected = torch.zeros(3, dtype=torch.float64)
    assignments = list(itertools.product(range(3), repeat=4))
    for labels in assignments:
        predicted = torch.tensor(labels).unsqueeze(0) == torch.arange(3).unsqueeze(1)
        expected += (predicted & MASKS).sum(-1).double() / (predicted | MASKS).sum(-1).double()
    iou, pointing = chance_region_scores(MASKS)
    assert iou.tolist() == pytest.approx((expected / len(assignments)).tolist(), abs=1e-12)
    assert pointing.tolist() == [0.5, 0.25, 0.25]


def test_chance_iou_of_a_single_label_image_is_its_area_fraction():
    from patch_align.analysis.alignment import chance_region_scores

    iou, _ = chance_region_scores(torch.tensor([[True, True, True, False]]))
    assert iou.tolist() == [0.75]


def test_accumulator_reports_chance_lines_beside_miou_and_none_for_threshold():
    from patch_align.analysis.alignment import chance_region_scores

    result = score(ALIGNED_PATCHES, WORDS, MASKS)
    iou, _ = chance_region_scores(MASKS)
    assert result["chance_miou"] == pytest.approx(float(iou.mean()))
    assert result["chance_pointing_accuracy"] == pytest.approx(1.0 / 3.0)
    assert result["miou"] == 1.0 > result["chance_miou"]
    assert score(ALIGNED_PATCHES, WORDS, MASKS, assign="threshold")["chance_miou"] is None


def test_an_empty_mask_is_not_scored_but_its_label_still_competes_in_the_chance_line():
    from patch_align.analysis.alignment import chance_region_scores

    masks = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    result = score(torch.eye(2)[[0, 0, 1, 1]], torch.eye(2), masks)
    iou, _ = chance_region_scores(masks[:1], n_labels=2)
    assert result["regions_scored"] == 1
    assert result["chance_miou"] == pytest.approx(float(iou[0]))
