"""Specification of the plugin's flags: used by the chosen objective or refused, checked before any load.

`patch_*` / `pad_*` flags belong to `patch_cosine`, `sea_*` flags to `sea` (`both` uses all of them);
a value for a flag its objective does not use would be ignored, so it is an error when parsed. PAD
coverage (`--pad_min_coverage`) is checked when the dataset is built and recorded in config.json.
"""

import json
from pathlib import Path

import pytest

from patch_align.recipe import PatchAlignArguments

FIXTURES = Path(__file__).parent / "data" / "upstream_golden" / "fixtures-437"
PAD = str(FIXTURES / "pad.json")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"sea_window": 3}, "--sea_window 3 is not supported: only --align_objective sea or both uses it; "
         "this run's is patch_cosine"),
        ({"sea_labels": "labels"}, "--sea_labels labels is not supported: only --align_objective sea"),
        ({"sea_learnable_temperature": False}, "--sea_learnable_temperature False is not supported"),
    ],
)
def test_sea_flags_are_refused_when_the_objective_is_patch_cosine(flags, message):
    with pytest.raises(ValueError, match=message):
        PatchAlignArguments(pad_path=PAD, **flags)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"pad_path": PAD}, "--pad_path .*pad.json is not supported: only --align_objective patch_cosine "),
        ({"patch_loss_weight": 1.0}, "--patch_loss_weight 1.0 is not supported: .*this run's is sea"),
        ({"pad_min_coverage": 0.5}, "--pad_min_coverage 0.5 is not supported"),
    ],
)
def test_patch_flags_are_refused_when_the_objective_is_sea(tmp_path, flags, message):
    with pytest.raises(ValueError, match=message):
        PatchAlignArguments(align_objective="sea", sea_labels=str(tmp_path), **flags)


def test_both_objectives_take_every_flag(tmp_path):
    args = PatchAlignArguments(
        align_objective="both", pad_path=PAD, sea_labels=str(tmp_path), sea_window=3, patch_loss_weight=1.0,
        pad_min_coverage=0.5,
    )
    assert (args.sea_window, args.patch_loss_weight, args.pad_min_coverage) == (3, 1.0, 0.5)


def test_missing_pad_file_is_refused_at_parse_time(tmp_path):
    with pytest.raises(ValueError, match=f"--pad_path {tmp_path / 'nope.json'}: no such file"):
        PatchAlignArguments(pad_path=str(tmp_path / "nope.json"))


def test_missing_sea_label_folder_is_refused_at_parse_time(tmp_path):
    with pytest.raises(ValueError, match=f"--sea_labels {tmp_path / 'nope'}: no such folder"):
        PatchAlignArguments(align_objective="sea", sea_labels=str(tmp_path / "nope"))


def test_min_pad_coverage_outside_zero_one_is_refused_at_parse_time():
    with pytest.raises(ValueError, match=r"--pad_min_coverage must be in \[0, 1\], got 1.5"):
        PatchAlignArguments(pad_path=PAD, pad_min_coverage=1.5)


# --- through the training entry, stopping before trainer.train() --------------------------------


def stage1_argv(output_dir, **flags):
    base = {
        "model_name_or_path": FIXTURES / "llm",
        "version": "plain",
        "data_path": FIXTURES / "pretrain.json",
        "image_folder": FIXTURES / "images",
        "pad_path": PAD,
        "vision_tower": FIXTURES / "clip",
        "tune_mm_mlp_adapter": True,
        "output_dir": output_dir,
        "save_strategy": "no",
        "report_to": "none",
        "model_max_length": 256,
        "disable_tqdm": True,
    }
    base.update(flags)
    return [part for key, value in base.items() for part in (f"--{key}", str(value))]


def build(argv):
    from llava.train.train import build_trainer
    from patch_align.recipe import PatchAlignRecipe

    return build_trainer(PatchAlignRecipe(), argv)[0]


def test_pad_coverage_is_recorded_in_the_config(tmp_path):
    trainer = build(stage1_argv(tmp_path / "run"))
    assert trainer.model.config.patch_align_pad_coverage == {
        "image_samples": 24, "covered": 24, "records": 24, "unmatched_records": 0, "fraction": 1.0
    }
    assert json.loads(trainer.model.config.to_json_string())["patch_align_pad_coverage"]["covered"] == 24


def test_a_pad_file_joining_no_sample_stops_the_run_before_training(tmp_path):
    from patch_align.data import PadCoverageError

    records = json.loads((FIXTURES / "pad.json").read_text())
    pad = tmp_path / "pad.json"
    pad.write_text(json.dumps([dict(r, id=r["image"]) for r in records]))  # ids = file names: no join
    with pytest.raises(PadCoverageError, match="0 of 24 image samples"):
        build(stage1_argv(tmp_path / "run", pad_path=pad))


def test_remove_unused_columns_is_refused_as_it_would_drop_the_regions(tmp_path):
    with pytest.raises(ValueError, match="--remove_unused_columns True would drop the region"):
        build(stage1_argv(tmp_path / "run", remove_unused_columns=True))
