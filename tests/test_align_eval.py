"""The in-training alignment evaluation (`--align_eval_pad`): flags, and an offline wandb run whose
logged Align mIoU / pointing equal `patch-align analyze` on the same projector and PAD subset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patch_align.align_eval import AlignEvalArguments
from tests.wandb_files import complete_run, wandb_history

FIXTURES = Path(__file__).parent / "data" / "upstream_golden" / "fixtures-437"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"align_eval_steps": 5}, "--align_eval_steps 5 is not supported: it sets the in-training"),
        ({"align_eval_images": 2}, "--align_eval_images 2 is not supported"),
        ({"align_eval_pad": "missing.json"}, "--align_eval_pad missing.json: no such file"),
        ({"align_eval_pad": str(FIXTURES / "pad.json"), "align_eval_steps": 0}, "must be >= 1, got 0"),
        ({"align_eval_pad": str(FIXTURES / "pad.json"), "align_eval_images": 0}, "must be >= 1, got 0"),
    ],
)
def test_bad_align_eval_flags_are_refused_by_name(flags, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        AlignEvalArguments(**flags)


def test_off_by_default():
    assert AlignEvalArguments().align_eval_pad is None


@pytest.mark.slow
def test_logged_alignment_equals_analyze_on_the_same_projector_and_subset(tmp_path, monkeypatch):
    import wandb

    from patch_align.cli import main as patch_align_main
    from patch_align.train import main as train_main
    from tests.test_patch_trainer import stage1_argv

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "align-eval-test")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    wandb.teardown()  # wandb reads its environment once per process: an earlier test's setup would win
    out = tmp_path / "run"
    train_main(
        stage1_argv(
            out, max_steps=4, report_to="wandb", align_eval_pad=FIXTURES / "pad.json",
            align_eval_steps=2, align_eval_images=3,
        )
    )
    run = Path(wandb.run.dir).parent
    wandb.finish()  # what the end of a training process does
    run = complete_run(run)
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "align_eval/miou" in entry]
    assert [entry["step"] for entry in logged] == [2, 4]
    assert all(entry["align_eval/regions"] > 0 and entry["align_eval/seconds"] > 0 for entry in logged)
    assert (out / "align_eval" / "region_map_step4.png").is_file()

    rows = [row for row in wandb_history(run) if "align_eval/miou" in row]
    assert [row["train/global_step"] for row in rows] == [2, 4]
    for row, entry in zip(rows, logged, strict=True):
        for key in ("align_eval/miou", "align_eval/pointing_accuracy", "align_eval/mean_cos_inside"):
            assert row[key] == entry[key]
    assert all(row["align_eval/region_map/_type"] == "image-file" for row in rows)
    assert len(list((run / "files" / "media" / "images" / "align_eval").glob("region_map_*.png"))) == 2

    analyzed = tmp_path / "analyze"
    code = patch_align_main([
        "analyze", "--model-path", str(out), "--model-base", str(FIXTURES / "llm"),
        "--pad", str(FIXTURES / "pad.json"), "--image-folder", str(FIXTURES / "images"),
        "--max-images", "3", "--out", str(analyzed), "--device", "cpu", "--no-progress",
    ])
    assert code == 0
    alignment = json.loads((analyzed / "metrics.json").read_text())["alignment"]
    last = rows[-1]
    assert last["align_eval/miou"] == pytest.approx(alignment["miou"], abs=1e-6)
    assert last["align_eval/pointing_accuracy"] == alignment["pointing_accuracy"]
    assert last["align_eval/mean_cos_inside"] == pytest.approx(alignment["mean_cos_inside"], abs=1e-6)
    assert last["align_eval/regions"] == alignment["regions_scored"]
