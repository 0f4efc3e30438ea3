"""Post-processing geometry with known model outputs: detector boxes, SAM masks, RLE, NMS, prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from patch_align.pad.generate.detectors import (
    Detection,
    box_iou,
    grounded_candidates,
    grounding_prompt,
    nms_keep,
    normalized_boxes_to_pixels,
    select_detections,
    tag_token_spans,
)
from patch_align.pad.generate.segmenters import boxes_to_sam_frame, sam_masks_to_original
from patch_align.pad.masks import decode_segmentation, encode_mask

# A box centred at (0.5, 0.25) of size (0.5, 0.5), in normalised (cx, cy, w, h).
BOX = torch.tensor([[0.5, 0.25, 0.5, 0.5]])


def test_image_frame_boxes_scale_by_width_and_height_for_wide_and_tall_images():
    assert normalized_boxes_to_pixels(BOX, 640, 480, "image").tolist() == [[160.0, 0.0, 480.0, 240.0]]
    assert normalized_boxes_to_pixels(BOX, 300, 600, "image").tolist() == [[75.0, 0.0, 225.0, 300.0]]


def test_padded_square_boxes_scale_by_the_longer_side_and_clip_to_the_image():
    # OWLv2: the 640x480 image sits at the top of a 640x640 square.
    assert normalized_boxes_to_pixels(BOX, 640, 480, "padded_square").tolist() == [[160.0, 0.0, 480.0, 320.0]]
    tall = torch.tensor([[0.75, 0.5, 0.5, 1.0]])  # right half of the square, outside a 300-wide image
    assert normalized_boxes_to_pixels(tall, 300, 600, "padded_square").tolist() == [
        [300.0, 0.0, 300.0, 600.0]
    ]


def test_unknown_box_frame_is_an_error():
    with pytest.raises(ValueError, match="unknown box frame 'center'"):
        normalized_boxes_to_pixels(BOX, 10, 10, "center")


def test_box_iou_and_greedy_nms():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [20.0, 20.0, 30.0, 30.0]])
    assert box_iou(boxes[:1], boxes).tolist() == [[1.0, 0.5, 0.0]]
    assert nms_keep(boxes, torch.tensor([0.5, 0.9, 0.7]), iou_threshold=0.4) == [1, 2]
    assert nms_keep(boxes, torch.tensor([0.5, 0.9, 0.7]), iou_threshold=0.5) == [1, 2, 0]


def test_select_detections_runs_nms_per_label_then_drops_cross_label_duplicates_and_caps():
    dog = Detection("dog", (0.0, 0.0, 10.0, 10.0), 0.9)
    dog_again = Detection("dog", (0.0, 0.0, 10.0, 9.0), 0.8)  # IoU 0.9 with `dog`
    puppy = Detection("puppy", (0.0, 0.0, 10.0, 9.5), 0.7)  # same object, other label
    ball = Detection("ball", (20.0, 20.0, 25.0, 25.0), 0.6)
    candidates = [dog, dog_again, puppy, ball]
    assert select_detections(candidates, nms_iou=0.5, dedup_iou=0.9, max_regions=10) == [dog, ball]
    assert select_detections(candidates, nms_iou=0.5, dedup_iou=0.96, max_regions=10) == [dog, puppy, ball]
    assert select_detections(candidates, nms_iou=0.95, dedup_iou=0.99, max_regions=2) == [dog, dog_again]


def test_grounding_prompt_spans_and_token_positions():
    prompt, spans = grounding_prompt(["red car", "tree"])
    assert prompt == "red car. tree."
    assert [prompt[s:e] for s, e in spans] == ["red car", "tree"]
    # [CLS] red car . tree . [SEP]; a truncated prompt loses "tree".
    offsets = [(0, 0), (0, 3), (4, 7), (7, 8), (9, 13), (13, 14), (0, 0)]
    assert tag_token_spans(offsets, spans) == [[1, 2], [4]]
    assert tag_token_spans(offsets[:4], spans) == [[1, 2], []]


def test_grounded_candidates_use_mean_tag_score_and_best_token_box_score():
    probs = torch.zeros(3, 7)
    probs[0, [1, 2]] = torch.tensor([0.9, 0.5])  # "red car": mean 0.7, best token 0.9
    probs[1, 4] = 0.3  # "tree" 0.3: under the box threshold
    probs[2, [1, 2, 4]] = torch.tensor([0.2, 0.2, 0.6])  # "tree" wins
    found = grounded_candidates(
        probs, torch.zeros(3, 4), ["red car", "tree"], [[1, 2], [4]], box_threshold=0.5, text_threshold=0.25
    )
    assert [(q, j) for q, j, _ in found] == [(0, 0), (2, 1)]
    assert [round(s, 6) for _, _, s in found] == [0.7, 0.6]
    assert grounded_candidates(probs, torch.zeros(3, 4), ["red car", "tree"], [[1, 2], [4]], 0.5, 0.75) == []


def test_boxes_go_into_sams_resized_frame():
    boxes = torch.tensor([[64.0, 48.0, 320.0, 240.0]])
    # 640x480 resized to longest edge 1024 -> 1024x768
    assert boxes_to_sam_frame(boxes, (480, 640), (768, 1024)).tolist() == [
        pytest.approx([102.4, 76.8, 512.0, 384.0])
    ]


def test_low_resolution_sam_mask_comes_back_at_the_original_size_in_the_right_place():
    # A 60x40 (w x h) image in a 16x16 padded input: resized to 16x11 (w x h), then 5 rows of padding.
    # Low-res masks are 4x4 over the padded input: each cell is 4x4 input pixels.
    low_res = torch.full((1, 4, 4), -10.0)
    low_res[0, 0:2, 2:4] = 10.0  # right half of the top 8 input rows
    mask = sam_masks_to_original(low_res, (16, 16), (11, 16), (40, 60))
    assert mask.shape == (1, 40, 60)
    # The mask edge at input row 8 of 11 is original row 8 * 40 / 11 = 29.1, at input col 8 of 16
    # original col 30: pixels whose centres fall inside are rows 0..28, cols 30..59.
    inside = np.zeros((40, 60), dtype=bool)
    inside[:29, 30:] = True
    assert not (mask[0].numpy() & ~inside).any()
    # Bilinear upsampling rounds the inner corner; away from it the rectangle is filled.
    assert mask[0, :22, :].numpy().sum() == 22 * 30 and mask[0, :, 37:].numpy().sum() == 29 * 23


def test_rle_round_trips_and_bbox_is_the_masks_tight_box():
    mask = np.zeros((5, 7), dtype=bool)
    mask[1:4, 2:6] = True
    mask[4, 6] = True
    segmentation, bbox, area = encode_mask(mask)
    assert segmentation["size"] == [5, 7] and isinstance(segmentation["counts"], str)
    assert bbox == [2.0, 1.0, 5.0, 4.0]
    assert area == 13
    assert (decode_segmentation(segmentation, 5, 7) == mask).all()
