"""Specification of patch_align.geometry: the image transform and mask → patch-grid coverage."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from llava.mm_utils import expand2square
from patch_align.geometry import (
    ImageTransform,
    coverage_to_patch_mask,
    mask_to_patch_coverage,
    model_input_transform,
    patch_token_index,
    processor_transform,
    vision_token_offset,
)

FIXTURE_CLIP = Path(__file__).parent / "data" / "upstream_golden" / "fixtures-437" / "clip"


def rect_mask(width: int, height: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[y0:y0 + h, x0:x0 + w] = True
    return mask


# ---- the affine transform -------------------------------------------------------------------------

def test_square_mode_floors_the_long_edge_and_crops_at_the_floored_centre():
    # 80x60 -> shorter edge 56, longer int(56*80/60) = 74; crop 56 starts at (74-56)//2 = 9
    t = model_input_transform(80, 60, "square", 56)
    assert t == ImageTransform(scale_x=74 / 80, scale_y=56 / 60, offset_x=-9.0, offset_y=0.0,
                               output_width=56, output_height=56)


def test_pad_mode_pastes_at_pad_to_square_offsets_then_scales_the_square():
    # 5x2 on a 5x5 canvas: top = (5-2)//2 = 1; then 5 -> 10 scales by 2
    t = model_input_transform(5, 2, "pad", 10)
    assert t == ImageTransform(scale_x=2.0, scale_y=2.0, offset_x=0.0, offset_y=2.0,
                               output_width=10, output_height=10)


def test_tall_image_in_pad_mode_is_shifted_right():
    t = model_input_transform(56, 112, "pad", 56)
    assert (t.scale_x, t.scale_y, t.offset_x, t.offset_y) == (0.5, 0.5, 14.0, 0.0)


def test_transform_inverts_exactly():
    t = model_input_transform(80, 60, "pad", 336)
    xs, ys = t.invert(*t.apply(np.array([0.0, 13.5, 80.0]), np.array([0.0, 7.25, 60.0])))
    np.testing.assert_allclose(xs, [0.0, 13.5, 80.0])
    np.testing.assert_allclose(ys, [0.0, 7.25, 60.0])


def test_unknown_mode_is_rejected_by_name():
    with pytest.raises(ValueError, match="'stretch'"):
        model_input_transform(10, 10, "stretch", 56)


def test_processor_transform_reads_shortest_edge_and_crop_size():
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56})
    assert processor_transform(80, 60, "square", processor) == model_input_transform(80, 60, "square", 64,
                                                                                     (56, 56))


# ---- coverage, hand-computed ----------------------------------------------------------------------

def test_square_mode_wide_image_crop_shifts_mask_by_the_crop_offset():
    # 112x56 keeps its scale; the crop drops 28 px on the left, so x in [28, 42) is patch column 0
    coverage = mask_to_patch_coverage(rect_mask(112, 56, 28, 0, 14, 14), "square", 56, 14)
    expected = np.zeros((4, 4))
    expected[0, 0] = 1.0
    np.testing.assert_array_equal(coverage, expected)


def test_square_mode_mask_straddling_four_patches_covers_a_quarter_of_each():
    coverage = mask_to_patch_coverage(rect_mask(112, 56, 35, 7, 14, 14), "square", 56, 14)
    expected = np.zeros((4, 4))
    expected[0:2, 0:2] = 0.25
    np.testing.assert_array_equal(coverage, expected)


def test_square_mode_mask_in_the_cropped_away_margin_covers_nothing():
    coverage = mask_to_patch_coverage(rect_mask(112, 56, 0, 0, 28, 56), "square", 56, 14)
    assert coverage.sum() == 0.0


def test_pad_mode_wide_image_leaves_the_padding_rows_uncovered():
    coverage = mask_to_patch_coverage(np.ones((56, 112), bool), "pad", 56, 14)
    np.testing.assert_array_equal(coverage, [[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]])


def test_pad_mode_wide_image_mask_is_halved_and_moved_down():
    # x' = x/2, y' = y/2 + 14: the box x [14, 42), y [0, 14) lands on x' [7, 21), y' [14, 21)
    coverage = mask_to_patch_coverage(rect_mask(112, 56, 14, 0, 28, 14), "pad", 56, 14)
    expected = np.zeros((4, 4))
    expected[1, 0] = expected[1, 1] = 0.25
    np.testing.assert_array_equal(coverage, expected)


def test_pad_mode_tall_image_mask_is_halved_and_moved_right():
    # x' = x/2 + 14, y' = y/2: the box x [0, 28), y [56, 84) lands on x' [14, 28), y' [28, 42)
    coverage = mask_to_patch_coverage(rect_mask(56, 112, 0, 56, 28, 28), "pad", 56, 14)
    expected = np.zeros((4, 4))
    expected[2, 1] = 1.0
    np.testing.assert_array_equal(coverage, expected)


def test_square_image_is_the_same_in_both_modes():
    mask = rect_mask(70, 70, 10, 20, 30, 15)
    np.testing.assert_allclose(mask_to_patch_coverage(mask, "pad", 56, 14),
                               mask_to_patch_coverage(mask, "square", 56, 14))


def test_fractional_pixel_edges_are_integrated_exactly():
    # 3x3 -> 2x2 (patch 1 px): patch (0, 0) pulls back to [0, 1.5]^2, area 2.25 original px
    corner = mask_to_patch_coverage(rect_mask(3, 3, 0, 0, 1, 1), "square", 2, 1)
    np.testing.assert_allclose(corner, [[1 / 2.25, 0], [0, 0]])
    centre = mask_to_patch_coverage(rect_mask(3, 3, 1, 1, 1, 1), "square", 2, 1)
    np.testing.assert_allclose(centre, np.full((2, 2), 0.25 / 2.25))


def test_odd_padding_uses_floor_offsets():
    # 5x2 on a 5x5 canvas sits at top = 1: rows 1 and 2 are image, 0, 3 and 4 padding
    coverage = mask_to_patch_coverage(np.ones((2, 5), bool), "pad", 5, 1)
    np.testing.assert_array_equal(coverage.sum(axis=1), [0, 5, 5, 0, 0])


def test_full_size_grid_is_24_by_24_and_conserves_area():
    mask = rect_mask(500, 300, 40, 60, 123, 77)
    coverage = mask_to_patch_coverage(mask, "pad", 336, 14)
    assert coverage.shape == (24, 24)
    t = model_input_transform(500, 300, "pad", 336)
    area_in_model_px = mask.sum() * t.scale_x * t.scale_y
    assert coverage.sum() * 14 * 14 == pytest.approx(area_in_model_px)


def test_pixels_past_the_last_whole_patch_are_seen_by_no_patch():
    # SigLIP so400m: 384 px in 14-px patches is 27 patches and 6 px no patch sees; here 50 = 3 · 14 + 8
    mask = rect_mask(50, 50, 42, 0, 8, 50)  # only the last 8 columns
    coverage = mask_to_patch_coverage(mask, "square", 50, 14)
    assert coverage.shape == (3, 3) and not coverage.any()
    whole = mask_to_patch_coverage(np.ones((50, 50), bool), "square", 50, 14)
    np.testing.assert_array_equal(whole, np.ones((3, 3)))


def test_input_smaller_than_one_patch_is_rejected():
    with pytest.raises(ValueError, match="model input 10x10 is smaller than one 14-px patch"):
        mask_to_patch_coverage(np.ones((10, 10), bool), "pad", 10, 14)


def siglip_processor(side: int):
    from transformers import SiglipImageProcessor

    return SiglipImageProcessor(size={"height": side, "width": side})


def test_siglip_square_mode_stretches_a_wide_image_onto_the_whole_input_without_a_crop():
    # 80x60 -> 64x64: x scaled by 64/80, y by 64/60, nothing cropped
    assert processor_transform(80, 60, "square", siglip_processor(64)) == ImageTransform(
        scale_x=64 / 80, scale_y=64 / 60, offset_x=0.0, offset_y=0.0, output_width=64, output_height=64)


def test_siglip_pad_mode_pastes_on_the_square_then_resizes_it_keeping_the_aspect_ratio():
    # 80x60 on an 80x80 canvas at top (80-60)//2 = 10, then 80 -> 64 scales by 0.8: offset 8
    assert processor_transform(80, 60, "pad", siglip_processor(64)) == ImageTransform(
        scale_x=0.8, scale_y=0.8, offset_x=0.0, offset_y=8.0, output_width=64, output_height=64)


def test_siglip_square_mode_keeps_the_margins_clip_crops_away():
    from transformers import CLIPImageProcessor

    mask = rect_mask(112, 56, 0, 0, 28, 56)  # the left quarter of a 2:1 image
    clip = mask_to_patch_coverage(mask, processor_transform(112, 56, "square", CLIPImageProcessor(
        size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})), patch_size=14)
    siglip = mask_to_patch_coverage(mask, processor_transform(112, 56, "square", siglip_processor(56)),
                                    patch_size=14)
    assert not clip.any()
    np.testing.assert_array_equal(siglip, np.tile([1.0, 0.0, 0.0, 0.0], (4, 1)))


# ---- coverage -> patch mask -----------------------------------------------------------------------

def test_patch_mask_keeps_patches_at_or_above_the_threshold():
    owned, fell_back = coverage_to_patch_mask(np.array([[0.5, 0.49], [1.0, 0.0]]), 0.5)
    np.testing.assert_array_equal(owned, [[True, False], [True, False]])
    assert fell_back is False


def test_small_region_falls_back_to_its_best_patch_and_says_so():
    owned, fell_back = coverage_to_patch_mask(np.array([[0.1, 0.3], [0.2, 0.0]]), 0.5)
    np.testing.assert_array_equal(owned, [[False, True], [False, False]])
    assert fell_back is True


def test_without_fallback_a_small_region_owns_nothing():
    owned, fell_back = coverage_to_patch_mask(np.array([[0.1, 0.3]]), 0.5, fallback="none")
    assert not owned.any() and fell_back is False


def test_region_with_no_coverage_owns_nothing_even_with_fallback():
    owned, fell_back = coverage_to_patch_mask(np.zeros((2, 2)), 0.5)
    assert not owned.any() and fell_back is False


def test_threshold_outside_unit_interval_is_rejected():
    with pytest.raises(ValueError, match="threshold"):
        coverage_to_patch_mask(np.zeros((2, 2)), 0.0)


# ---- token indices --------------------------------------------------------------------------------

def test_cls_patch_puts_patch_r_c_at_one_plus_r_g_plus_c():
    assert patch_token_index(2 * 24 + 5, "cls_patch") == 1 + 2 * 24 + 5
    assert patch_token_index(2 * 24 + 5, "patch") == 2 * 24 + 5
    np.testing.assert_array_equal(patch_token_index(np.array([0, 575]), "cls_patch"), [1, 576])


def test_unknown_select_feature_is_rejected():
    with pytest.raises(ValueError, match="'cls'"):
        vision_token_offset("cls")


# ---- geometry against the real pixels -------------------------------------------------------------

RED = (220, 30, 30)


def colour_patches(image: Image.Image, processor, mode: str, colour: tuple[int, int, int],
                   patch_size: int) -> np.ndarray:
    """Patches whose processed pixels are mostly `colour`, (G, G) bool."""
    mean, std = np.array(processor.image_mean), np.array(processor.image_std)
    if mode == "pad":
        image = expand2square(image, tuple(int(v * 255) for v in mean))
    pixels = processor(images=image, return_tensors="np")["pixel_values"][0]
    rgb = (pixels * std[:, None, None] + mean[:, None, None]) * 255
    is_colour = np.abs(rgb - np.array(colour)[:, None, None]).max(axis=0) < 40
    grid = is_colour.shape[0] // patch_size
    is_colour = is_colour[:grid * patch_size, :grid * patch_size]  # what the patch convolution sees
    return is_colour.reshape(grid, patch_size, grid, patch_size).mean(axis=(1, 3)) > 0.5


@pytest.fixture(scope="module")
def processors():
    from transformers import CLIPImageProcessor

    return {56: CLIPImageProcessor.from_pretrained(FIXTURE_CLIP),
            336: CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})}


@pytest.fixture(scope="module")
def siglip_processors(tmp_path_factory):
    from transformers import SiglipImageProcessor

    from llava.tiny import build_tiny_siglip

    tiny = build_tiny_siglip(tmp_path_factory.mktemp("siglip"))  # 64 px, 16-px patches
    # so400m-patch14-384's processor: 384 px, 14-px patches (27 of them, 6 px unseen)
    return {64: (SiglipImageProcessor.from_pretrained(tiny), 16), 384: (siglip_processor(384), 14)}


PIXEL_CASES = [  # (processor side, image width, height, box x, y, w, h): no patch near 0.5 in either mode
    (56, 112, 56, 22, 27, 36, 26),
    (56, 56, 112, 27, 22, 26, 36),
    (56, 80, 60, 13, 12, 26, 17),
    (56, 70, 70, 11, 13, 25, 17),
    (336, 500, 300, 83, 50, 145, 75),
    (336, 300, 500, 50, 83, 75, 145),
    (336, 400, 400, 66, 66, 100, 100),
]


@pytest.mark.parametrize("mode", ["pad", "square"])
@pytest.mark.parametrize("side,width,height,x0,y0,w,h", PIXEL_CASES)
def test_coverage_majority_matches_the_processed_pixels(processors, mode, side, width, height, x0, y0, w, h):
    processor = processors[side]
    image = Image.new("RGB", (width, height), (128, 128, 128))
    ImageDraw.Draw(image).rectangle([x0, y0, x0 + w - 1, y0 + h - 1], fill=RED)
    coverage = mask_to_patch_coverage(rect_mask(width, height, x0, y0, w, h),
                                      processor_transform(width, height, mode, processor), patch_size=14)
    ambiguous = (coverage > 0.35) & (coverage < 0.65)
    assert not ambiguous.any(), "test case must not have patches near the 0.5 boundary"
    np.testing.assert_array_equal(colour_patches(image, processor, mode, RED, 14), coverage >= 0.5)
    assert (coverage >= 0.5).any()


# (processor side, image width, height, box x, y, w, h): no patch near 0.5 in either mode
SIGLIP_PIXEL_CASES = [
    (64, 128, 64, 22, 4, 40, 27),
    (64, 64, 128, 4, 22, 27, 40),
    (64, 80, 60, 13, 12, 26, 17),
    (64, 70, 70, 11, 13, 25, 17),
    (384, 500, 300, 50, 30, 100, 90),
    (384, 300, 500, 30, 50, 90, 100),
    (384, 400, 400, 40, 40, 80, 80),
]


@pytest.mark.parametrize("mode", ["pad", "square"])
@pytest.mark.parametrize("side,width,height,x0,y0,w,h", SIGLIP_PIXEL_CASES)
def test_siglip_coverage_majority_matches_the_processed_pixels(siglip_processors, mode, side, width, height,
                                                               x0, y0, w, h):
    processor, patch = siglip_processors[side]
    assert not getattr(processor, "do_center_crop", None) and tuple(processor.image_mean) == (0.5, 0.5, 0.5)
    image = Image.new("RGB", (width, height), (128, 128, 128))
    ImageDraw.Draw(image).rectangle([x0, y0, x0 + w - 1, y0 + h - 1], fill=RED)
    coverage = mask_to_patch_coverage(rect_mask(width, height, x0, y0, w, h),
                                      processor_transform(width, height, mode, processor), patch_size=patch)
    ambiguous = (coverage > 0.35) & (coverage < 0.65)
    assert not ambiguous.any(), "test case must not have patches near the 0.5 boundary"
    np.testing.assert_array_equal(colour_patches(image, processor, mode, RED, patch), coverage >= 0.5)
    assert (coverage >= 0.5).any()
