"""SEA labels meet a SigLIP tower: the labeller's resize and crop are recorded, and training refuses
labels whose patches cover other pixels than the tower's (CLIP crops a non-square image in `square`
mode, SigLIP stretches it; in `pad` mode a CLIP crop equal to its resize places patches as SigLIP does)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from llava.mm_utils import ProcessorGeometry
from llava.tiny import build_tiny_siglip
from patch_align.data import SeaLabelError
from patch_align.geometry import patch_placement
from patch_align.sea.store import INDEX_FILE, SETTINGS_FILE
from tests.test_sea_labeling import _label, dataset, tiny_clip  # noqa: F401 (fixtures)
from tests.test_sea_train import build_trainer, stage1_argv, write_colour_labels

FIXTURE_CLIP_PREPROCESSING = {"shortest_edge": 56, "resize_to": None, "crop": [56, 56], "patch_size": 14}


def test_labels_record_the_labellers_resize_crop_and_patch(tiny_clip, dataset, tmp_path):  # noqa: F811
    _label(tiny_clip, dataset, tmp_path / "labels")
    settings = json.loads((tmp_path / "labels" / SETTINGS_FILE).read_text())
    assert settings["preprocessing"] == FIXTURE_CLIP_PREPROCESSING


CLIP_224 = ProcessorGeometry(shortest_edge=224, crop=(224, 224))
CLIP_336 = ProcessorGeometry(shortest_edge=336, crop=(336, 336))
SIGLIP_224 = ProcessorGeometry(resize_to=(224, 224))


@pytest.mark.parametrize("mode", ["pad", "square"])
def test_clip_224_with_16px_patches_places_them_as_clip_336_with_24px_patches(mode):
    assert patch_placement(CLIP_224, 16, mode) == patch_placement(CLIP_336, 24, mode)
    assert patch_placement(CLIP_224, 16, mode) != patch_placement(CLIP_336, 14, mode)


def test_clip_and_siglip_place_patches_alike_only_in_pad_mode():
    assert patch_placement(CLIP_224, 16, "pad") == patch_placement(SIGLIP_224, 16, "pad")
    assert patch_placement(CLIP_224, 16, "square") != patch_placement(SIGLIP_224, 16, "square")
    # a crop smaller than the resize moves and shrinks the patches even on a square canvas
    cropped = ProcessorGeometry(shortest_edge=256, crop=(224, 224))
    assert patch_placement(cropped, 16, "pad") != patch_placement(SIGLIP_224, 16, "pad")


@pytest.fixture(scope="module")
def siglip_56(tmp_path_factory) -> Path:
    """A SigLIP tower with the fixture CLIP's 4 x 4 grid (56 px, 14-px patches)."""
    return build_tiny_siglip(tmp_path_factory.mktemp("siglip") / "siglip", image_size=56, patch_size=14)


def colour_labels(out_dir: Path, aspect: str, preprocessing: dict | None) -> Path:
    """tests/test_sea_train.py's planted labels (made with the fixture CLIP's processor), recording
    `preprocessing` as a labelling run does (None: a folder from before it was recorded)."""
    write_colour_labels(out_dir, aspect=aspect)
    if preprocessing is not None:
        for name, holder in ((SETTINGS_FILE, None), (INDEX_FILE, "settings")):
            content = json.loads((out_dir / name).read_text())
            (content[holder] if holder else content)["preprocessing"] = preprocessing
            (out_dir / name).write_text(json.dumps(content))
    return out_dir


def test_clip_square_labels_are_refused_for_a_siglip_tower(siglip_56, tmp_path):
    labels = colour_labels(tmp_path / "labels", "square", FIXTURE_CLIP_PREPROCESSING)
    expected = (f"--sea_labels {labels} was labelled with a processor that resizes the shortest edge to 56 "
                "and centre crops 56x56 (14-px patches), the vision tower's resizes to 56x56 (height x "
                "width) without a crop (14-px patches): with --image_aspect_ratio square patch (row, col) "
                "would not cover the same pixels")
    with pytest.raises(SeaLabelError) as caught:
        build_trainer(stage1_argv(tmp_path / "run", labels, vision_tower=siglip_56))
    assert str(caught.value) == expected


def test_clip_pad_labels_train_a_siglip_tower(siglip_56, tmp_path):
    labels = colour_labels(tmp_path / "labels", "pad", FIXTURE_CLIP_PREPROCESSING)
    argv = stage1_argv(tmp_path / "run", labels, vision_tower=siglip_56, image_aspect_ratio="pad")
    trainer = build_trainer(argv)
    assert trainer.train_dataset[0]["sea_word_ids"].shape == (16, 3)


def test_labels_without_recorded_preprocessing_are_refused_for_a_tower_that_does_not_crop(siglip_56,
                                                                                         tmp_path):
    labels = colour_labels(tmp_path / "labels", "square", None)
    expected = "does not record its labeller's preprocessing, and the vision tower's processor \\(Siglip"
    with pytest.raises(SeaLabelError, match=expected):
        build_trainer(stage1_argv(tmp_path / "run", labels, vision_tower=siglip_56))


def test_labels_without_recorded_preprocessing_still_train_a_clip_tower(tmp_path):
    labels = colour_labels(tmp_path / "labels", "square", None)
    assert build_trainer(stage1_argv(tmp_path / "run", labels)).train_dataset.grid.grid_shape == (4, 4)
