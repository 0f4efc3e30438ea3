"""`pad stats` numbers on a hand-made PAD file, and `pad show` overlays pixel by pixel."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from patch_align.cli import main
from patch_align.pad.masks import encode_mask
from patch_align.pad.reader import iter_pad_records
from patch_align.pad.schema import parse_pad_record
from patch_align.pad.show import MASK_OPACITY, PALETTE, render_overlay, show_records
from patch_align.pad.stats import area_bin, format_stats, pad_stats


def _region(label, mask, score=0.5):
    segmentation, bbox, _ = encode_mask(mask)
    return {"label": label, "bbox": bbox, "segmentation": segmentation, "score": score}


def _block(h, w, top, left, bottom, right):
    mask = np.zeros((h, w), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


@pytest.fixture
def pad_file(tmp_path):
    """Three 10x20 images: two dogs + a ball, one dog, nothing; masks of 100, 2, 40 and 200 px."""
    (tmp_path / "images").mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (20, 10), (10, 20, 30)).save(tmp_path / "images" / f"{name}.png")
    records = [
        {
            "id": "a",
            "image": "a.png",
            "width": 20,
            "height": 10,
            "regions": [
                _region("dog", _block(10, 20, 0, 0, 10, 10)),
                _region("ball", _block(10, 20, 9, 18, 10, 20)),
                _region("dog", _block(10, 20, 2, 12, 6, 22)),
            ],
        },
        {
            "id": "b",
            "image": "b.png",
            "width": 20,
            "height": 10,
            "regions": [_region("dog", np.ones((10, 20), dtype=bool))],
        },
        {"id": "c", "image": "c.png", "width": 20, "height": 10, "regions": []},
    ]
    path = tmp_path / "pad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_area_bins_are_closed_on_the_right():
    assert [area_bin(f) for f in (0.0, 0.001, 0.0011, 0.05, 0.2, 0.5, 0.51, 1.0)] == [0, 0, 1, 2, 4, 5, 6, 6]


def test_stats_count_images_regions_labels_and_mask_areas(pad_file):
    stats = pad_stats(pad_file)
    assert (stats.images, stats.regions, stats.images_without_regions, stats.unique_labels) == (3, 4, 1, 2)
    assert stats.regions_per_image == [3, 1, 0]
    assert stats.label_head(1) == [("dog", 3)] and stats.label_tail(1) == [("ball", 1)]
    # areas / 200 px: 0.5, 0.01, 0.2, 1.0
    assert stats.area_histogram == [0, 1, 0, 0, 1, 1, 1]
    text = format_stats(stats, 5)
    assert "regions per image: mean 1.33, median 1, max 3" in text
    assert "most frequent labels: dog (3), ball (1)" in text


def test_stats_command_prints_the_report(pad_file, capsys):
    assert main(["pad", "stats", str(pad_file), "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert "images: 3" in out and "unique labels: 2" in out and "least frequent labels: ball (1)" in out


def test_overlay_tints_mask_pixels_and_leaves_others():
    mask = _block(60, 100, 30, 0, 60, 50)
    record = parse_pad_record(
        {"id": "r", "image": "r.png", "width": 100, "height": 60, "regions": [_region("dog", mask)]}
    )
    pixels = np.asarray(render_overlay(Image.new("RGB", (100, 60), (10, 20, 30)), record)).astype(int)
    expected = np.round((1 - MASK_OPACITY) * np.array([10, 20, 30]) + MASK_OPACITY * np.array(PALETTE[0]))
    assert (pixels[55, 25] == expected).all()  # inside the mask, below the label, off the outline
    assert (pixels[30, 20] == PALETTE[0]).all()  # on the box outline (the box's top edge)
    assert (pixels[10, 80] == [10, 20, 30]).all()  # outside the region


def test_overlay_refuses_an_image_of_another_size(pad_file):
    record = next(iter_pad_records(pad_file))
    with pytest.raises(ValueError, match="record a: image is 10x10, record says 20x10"):
        render_overlay(Image.new("RGB", (10, 10)), record)


def test_show_writes_one_png_per_id_and_names_unknown_ids(pad_file, tmp_path):
    paths = show_records(pad_file, tmp_path / "images", ["b", "a"], tmp_path / "out")
    assert [p.name for p in paths] == ["b.png", "a.png"]
    assert Image.open(paths[0]).size == (20, 10)
    with pytest.raises(KeyError, match="ids not in .*: x"):
        show_records(pad_file, tmp_path / "images", ["a", "x"], tmp_path / "out")
    assert (
        main(
            [
                "pad",
                "show",
                str(pad_file),
                "--image-folder",
                str(tmp_path / "images"),
                "--ids",
                "c",
                "--out",
                str(tmp_path / "cli"),
            ]
        )
        == 0
    )
    assert (tmp_path / "cli" / "c.png").is_file()
