"""The faster mask-to-patch coverage (only the summed-area entries at patch corners, issue 16) gives
bit for bit what the full summed-area table gave."""

import numpy as np
import pytest

from patch_align.geometry import mask_to_patch_coverage, model_input_transform


def full_table_coverage(mask: np.ndarray, transform, patch_size: int) -> np.ndarray:
    """The previous implementation: the whole (H+1, W+1) table, then the same bilinear reads."""
    height, width = mask.shape
    summed = np.zeros((height + 1, width + 1))
    summed[1:, 1:] = mask.astype(np.float64).cumsum(0).cumsum(1)
    edges_x = np.arange(0, transform.output_width + 1, patch_size, dtype=np.float64)
    edges_y = np.arange(0, transform.output_height + 1, patch_size, dtype=np.float64)
    xs, ys = transform.invert(edges_x, edges_y)
    xs, ys = np.clip(xs, 0, width), np.clip(ys, 0, height)
    x0 = np.minimum(np.floor(xs).astype(int), width - 1)
    y0 = np.minimum(np.floor(ys).astype(int), height - 1)
    fx, fy = (xs - x0)[None, :], (ys - y0)[:, None]
    top = summed[y0][:, x0] * (1 - fx) + summed[y0][:, x0 + 1] * fx
    bottom = summed[y0 + 1][:, x0] * (1 - fx) + summed[y0 + 1][:, x0 + 1] * fx
    integral = top * (1 - fy) + bottom * fy
    covered = integral[1:, 1:] - integral[:-1, 1:] - integral[1:, :-1] + integral[:-1, :-1]
    return np.clip(covered / (patch_size * patch_size / (transform.scale_x * transform.scale_y)), 0.0, 1.0)


@pytest.mark.parametrize("mode", ["pad", "square"])
@pytest.mark.parametrize(
    ("height", "width"), [(336, 336), (375, 500), (500, 375), (480, 640), (17, 9), (1, 40)]
)
def test_coverage_is_bit_identical_to_the_full_summed_area_table(mode, height, width):
    rng = np.random.default_rng(height * 1000 + width)
    transform = model_input_transform(width, height, mode, 336)
    for density in (0.0, 0.3, 0.9, 1.0):
        mask = rng.random((height, width)) < density
        mask[: height // 3, : width // 4] = True  # a solid block as well as noise
        assert np.array_equal(mask_to_patch_coverage(mask, transform, patch_size=14),
                              full_table_coverage(mask, transform, 14))


def test_integer_masks_count_like_bool_masks():
    mask = np.random.default_rng(0).random((60, 80)) < 0.5
    transform = model_input_transform(80, 60, "pad", 56)
    assert np.array_equal(mask_to_patch_coverage(mask.astype(np.uint8), transform, patch_size=14),
                          mask_to_patch_coverage(mask, transform, patch_size=14))
