"""`patch-align analyze` and `patch-align eval` with `--report-to wandb`, on offline runs read back
from their files: the numbers equal metrics.json / results.json, figures and tables are logged."""

from __future__ import annotations

import json

import pytest

from patch_align.cli import main
from patch_align.wandb_report import check_wandb_available, flat_numbers
from tests.wandb_files import offline_run, wandb_history, wandb_summary


def test_flat_numbers_keeps_nested_numbers_and_drops_the_rest():
    values = {"a": {"b": 1, "c": {"d": 0.5}}, "e": True, "f": "text", "g": [1, 2], "h": None, "i": 3}
    assert flat_numbers(values) == {"a/b": 1, "a/c/d": 0.5, "i": 3}


def test_a_missing_wandb_is_refused_before_anything_loads(monkeypatch, capsys, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", 
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ValueError, match=r"--report-to wandb needs wandb: pip install -e \"\.\[train\]\""):
        check_wandb_available("wandb")
    check_wandb_available("none")
    code = main(["eval", "--suite", str(tmp_path / "s.json"), "--model-path", "x",
                 "--out", str(tmp_path / "o"), "--report-to", "wandb"])
    assert code == 2 and "--report-to wandb needs wandb" in capsys.readouterr().err


@pytest.fixture()
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "report-test")


@pytest.mark.slow
def test_analyze_logs_its_metrics_figures_and_table_to_wandb(golden_dir, tmp_path, offline):
    fixtures = golden_dir / "fixtures-437"
    out = tmp_path / "analysis"
    code = main([
        "analyze", "--model-path", str(golden_dir / "llava-v1.5-tiny"), "--pad", str(fixtures / "pad.json"),
        "--image-folder", str(fixtures / "images"), "--out", str(out), "--max-images", "2",
        "--examples", "1", "--device", "cpu", "--no-progress", "--report-to", "wandb",
    ])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    run = offline_run(out)
    summary = wandb_summary(run)
    keys = ("alignment/miou", "alignment/pointing_accuracy", "compression/delta_h", "decomposition/word_f1")
    for key in keys:
        section, name = key.split("/")
        assert summary[key] == pytest.approx(metrics[section][name]), key
    [row] = [r for r in wandb_history(run) if "tables/metrics/_type" in r]
    assert row["tables/metrics/_type"] == "table-file"
    assert {f"figures/{name.removesuffix('.png')}/_type" for name in metrics["figures"]} <= set(row)


@pytest.mark.slow
def test_eval_logs_its_scores_figure_and_table_to_wandb(golden_dir, tmp_path, offline):
    images = golden_dir / "fixtures-437" / "images"
    questions = tmp_path / "vqa.jsonl"
    questions.write_text("".join(
        json.dumps({"question_id": i, "image": f"img00{i}.png", "text": "What colour?"}) + "\n"
        for i in range(2)))
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": i, "answers": ["red"] * 10}) + "\n"
                               for i in range(2)))
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({
        "defaults": {"conv_mode": "llava_v1", "max_new_tokens": 3, "image_folder": str(images)},
        "tasks": [{"name": "vqa", "type": "vqa", "question_file": str(questions),
                   "annotation_file": str(answers)}],
    }))
    out = tmp_path / "eval"
    code = main(["eval", "--suite", str(suite), "--model-path", f"tiny={golden_dir / 'llava-v1.5-tiny'}",
                 "--out", str(out), "--device", "cpu", "--no-progress", "--report-to", "wandb"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    expected = results["checkpoints"]["tiny"]["tasks"]["vqa"]["metrics"]
    run = offline_run(out)
    summary = wandb_summary(run)
    assert expected and {f"tiny/vqa/{m}": v for m, v in expected.items()}.items() <= summary.items(), summary
    [row] = [r for r in wandb_history(run) if "tables/scores/_type" in r]
    assert row["figures/results/_type"] == "image-file"
