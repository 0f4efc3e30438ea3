"""Specification of patch_align.analysis.figures: outline geometry and PNGs that open and show something."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from patch_align.analysis.figures import (
    grid_outline_segments,
    plot_patch_words,
    plot_region_maps,
    plot_run_comparison,
)
from patch_align.analysis.runner import ImageExample
from patch_align.geometry import model_input_transform


def _segment_set(segments: np.ndarray) -> set[tuple[tuple[float, float], tuple[float, float]]]:
    return {tuple(sorted((tuple(a), tuple(b)))) for a, b in segments.tolist()}


def test_outline_of_a_lone_cell_is_its_four_sides():
    mask = np.zeros((3, 3), dtype=bool)
    mask[1, 2] = True
    assert _segment_set(grid_outline_segments(mask)) == {
        ((2.0, 1.0), (3.0, 1.0)),
        ((2.0, 2.0), (3.0, 2.0)),
        ((2.0, 1.0), (2.0, 2.0)),
        ((3.0, 1.0), (3.0, 2.0)),
    }


def test_outline_skips_edges_between_two_cells_of_the_mask():
    mask = np.array([[True, True], [False, False]])
    segments = _segment_set(grid_outline_segments(mask))
    assert len(segments) == 6
    assert ((1.0, 0.0), (1.0, 1.0)) not in segments  # the shared inner edge


def test_outline_of_an_empty_mask_has_no_segments():
    assert grid_outline_segments(np.zeros((2, 4), dtype=bool)).shape == (0, 2, 2)


def test_outline_rejects_a_flat_mask():
    with pytest.raises(ValueError, match="rows, cols"):
        grid_outline_segments(np.zeros(4, dtype=bool))


def _example(tmp_path, grid: int = 4, labels: int = 2) -> ImageExample:
    """A 80×60 picture with a red box, seen in `pad` mode by a 56-px model with a grid×grid patch grid."""
    pixels = np.full((60, 80, 3), 200, dtype=np.uint8)
    pixels[20:40, 50:75] = (220, 30, 30)
    image_path = tmp_path / "picture.png"
    Image.fromarray(pixels).save(image_path)
    patch = 14
    transform = model_input_transform(80, 60, "pad", shortest_edge=grid * patch)
    rng = np.random.default_rng(0)
    patches = grid * grid
    true = np.zeros((labels, patches), dtype=bool)
    for r in range(labels):
        true[r, r] = True
    cosines = rng.uniform(-0.3, 0.4, size=(labels, patches)).astype(np.float32)
    predicted = cosines == cosines.max(axis=0, keepdims=True)
    return ImageExample(
        record_id="rec/1",
        image_path=image_path,
        transform=transform,
        grid_shape=(grid, grid),
        patch_size=patch,
        labels=[f"label {r}" for r in range(labels)],
        cosines=cosines,
        true_masks=true,
        predicted_masks=predicted,
        iou=[0.25] * labels,
        pointing_hit=[True] * labels,
        patch_words=[["red", "box"] for _ in range(patches)],
    )


def _assert_picture(path, min_width: int, min_height: int) -> tuple[int, int]:
    with Image.open(path) as png:
        assert png.format == "PNG"
        width, height = png.size
        spread = np.asarray(png.convert("L"), dtype=float).std()
    assert width >= min_width and height >= min_height
    assert width <= 4000 and height <= 4000
    assert spread > 5  # not a blank canvas
    return width, height


def test_region_maps_draw_one_panel_more_than_labels(tmp_path):
    two = _assert_picture(plot_region_maps(_example(tmp_path, labels=2), tmp_path / "two.png"), 300, 200)
    four = _assert_picture(plot_region_maps(_example(tmp_path, labels=4), tmp_path / "four.png"), 300, 200)
    assert four[0] > two[0]  # panels side by side: more labels, wider figure


def test_region_maps_show_at_most_six_labels(tmp_path):
    many = _assert_picture(plot_region_maps(_example(tmp_path, labels=9), tmp_path / "many.png"), 300, 200)
    six = _assert_picture(plot_region_maps(_example(tmp_path, labels=6), tmp_path / "six.png"), 300, 200)
    assert many[0] == six[0]


def test_patch_words_png_opens_for_small_and_large_grids(tmp_path):
    _assert_picture(plot_patch_words(_example(tmp_path, grid=4), tmp_path / "small.png"), 400, 400)
    _assert_picture(plot_patch_words(_example(tmp_path, grid=24), tmp_path / "large.png"), 400, 400)


def _metrics(miou: float, pointing: float, delta: float) -> dict:
    return {
        "compression": {"h_vision": 4.0, "h_projected": 4.0 - delta, "h_words": 3.0, "delta_h": delta},
        "alignment": {"miou": miou, "pointing_accuracy": pointing},
    }


def test_run_comparison_png_opens(tmp_path):
    runs = {"llava-projector": _metrics(0.1, 0.3, 2.8), "patch-aligned": _metrics(0.4, 0.7, 3.8)}
    _assert_picture(plot_run_comparison(runs, tmp_path / "sub" / "cmp.png"), 800, 300)


def test_run_comparison_needs_a_run(tmp_path):
    with pytest.raises(ValueError, match="at least one run"):
        plot_run_comparison({}, tmp_path / "cmp.png")
