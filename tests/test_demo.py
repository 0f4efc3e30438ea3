"""`patch-align demo`: the commands each method trains with, the numbers and the report, end to end runs."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from patch_align.cli import build_parser
from patch_align.world.bootstrap import QUICK_SETTINGS
from patch_align.world.demo import (
    METHODS,
    QUICK_PRESET,
    TABLE_COLUMNS,
    DemoError,
    DemoOptions,
    DemoPaths,
    DemoPreset,
    RunSpec,
    StageSettings,
    eval_suite,
    mean_std,
    run_demo,
    run_numbers,
    stage1_command,
    stage2_command,
    summarize,
)
from patch_align.world.demo_report import format_table
from patch_align.world.generator import WorldSpec

PATHS = DemoPaths(world=Path("/w"), clip=Path("/b/clip"), llm=Path("/b/llm"), sea_labels=Path("/s/labels"))


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def _run(method: str, seed: int = 0) -> RunSpec:
    return RunSpec(method, seed, Path(f"/out/runs/{method}-seed{seed}"))


# ---------------------------------------------------------------- commands


def test_stage1_commands_use_the_real_entry_points_with_each_methods_objective():
    commands = {m: stage1_command(_run(m), PATHS, QUICK_PRESET) for m in METHODS}
    assert commands["caption"][1:3] == ["-m", "llava.train.train"]
    assert commands["patch_align"][1:3] == ["-m", "patch_align.train"]
    assert commands["sea"][1:3] == ["-m", "patch_align.train"]
    assert _flag(commands["patch_align"], "--pad_path") == "/w/pad/train.jsonl"
    assert _flag(commands["patch_align"], "--patch_loss_weight") == "5.0"
    assert _flag(commands["patch_align"], "--patch_beta_schedule") == "linear"
    assert _flag(commands["sea"], "--align_objective") == "sea"
    assert _flag(commands["sea"], "--sea_labels") == "/s/labels"
    assert "--pad_path" not in commands["caption"] and "--align_objective" not in commands["caption"]
    assert "--sea_labels" not in commands["patch_align"]


def test_every_method_trains_stage1_on_identical_data_steps_and_seed():
    shared = ("--data_path", "--image_folder", "--vision_tower", "--model_name_or_path", "--max_steps",
              "--per_device_train_batch_size", "--learning_rate", "--seed", "--version",
              "--tune_mm_mlp_adapter", "--mm_projector_type", "--mm_vision_select_layer",
              "--lr_scheduler_type", "--warmup_ratio")
    commands = [stage1_command(_run(m, seed=2), PATHS, QUICK_PRESET) for m in METHODS]
    for flag in shared:
        assert len({_flag(c, flag) for c in commands}) == 1, flag
    first = commands[0]
    assert _flag(first, "--seed") == "2"
    assert _flag(first, "--max_steps") == str(QUICK_PRESET.stage1.steps)
    assert _flag(first, "--data_path") == "/w/pretrain.json"
    assert _flag(first, "--tune_mm_mlp_adapter") == "True"
    assert _flag(first, "--output_dir") == "/out/runs/caption-seed2/stage1"


def test_stage2_fine_tunes_from_the_runs_own_projector_with_upstream_stage2_flags():
    command = stage2_command(_run("sea", seed=1), PATHS, QUICK_PRESET, report_to="wandb")
    assert command[1:3] == ["-m", "llava.train.train"]
    assert _flag(command, "--pretrain_mm_mlp_adapter") == "/out/runs/sea-seed1/stage1/mm_projector.bin"
    assert _flag(command, "--data_path") == "/w/instruct.json"
    assert _flag(command, "--version") == "v1"
    assert _flag(command, "--image_aspect_ratio") == "pad"
    assert _flag(command, "--group_by_modality_length") == "True"
    assert _flag(command, "--report_to") == "wandb"
    assert _flag(command, "--output_dir") == "/out/runs/sea-seed1/stage2"
    assert "--tune_mm_mlp_adapter" not in command


def test_sea_stage1_without_labels_is_refused():
    with pytest.raises(ValueError, match="SEA labels"):
        stage1_command(_run("sea"), replace(PATHS, sea_labels=None), QUICK_PRESET)


def test_eval_suite_scores_rec_vqa_by_exact_match_and_captions_on_held_out_files():
    suite = eval_suite(Path("/d/world"), Path("/d"))
    tasks = {t["name"]: t for t in suite["tasks"]}
    assert {n: t["type"] for n, t in tasks.items()} == {"rec": "rec", "vqa": "gqa", "caption": "caption"}
    assert tasks["rec"]["question_file"] == "world/eval/rec.jsonl"
    assert tasks["vqa"]["annotation_file"] == "world/eval/vqa_answers.jsonl"
    assert tasks["caption"]["annotation_file"] == "world/eval/caption_references.json"
    assert tasks["rec"]["image_folder"] == "world/images"


def test_eval_suite_paths_are_relative_to_the_suite_folder_not_the_working_directory(tmp_path, monkeypatch):
    """The README's `make demo` failure: a relative --out gave runs/demo/runs/demo/world/... paths."""
    from patch_align.evaluation.suite import load_suite

    monkeypatch.chdir(tmp_path)
    world = Path("runs/demo/world")  # relative, as the default --out makes it
    suite_path = Path("runs/demo/eval_suite.json")
    suite_path.parent.mkdir(parents=True)
    suite_path.write_text(json.dumps(eval_suite(world, suite_path.parent)))
    task = {t.name: t for t in load_suite(suite_path).tasks}["rec"]
    assert task.question_file.resolve() == (tmp_path / "runs/demo/world/eval/rec.jsonl").resolve()
    assert task.image_folder.resolve() == (tmp_path / "runs/demo/world/images").resolve()


def test_options_make_the_output_folder_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert DemoOptions(out=Path("runs/demo")).out == tmp_path / "runs" / "demo"


def test_options_reject_bad_flags_by_name():
    for kwargs, flag in (({"seeds": 0}, "--seeds"), ({"methods": ("llava",)}, "--methods"),
                         ({"report_to": "tensorboard"}, "--report-to"), ({"device": "tpu"}, "--device"),
                         ({"jobs": 0}, "--jobs")):
        with pytest.raises(ValueError, match=flag):
            DemoOptions(out=Path("/x"), **kwargs)


def test_demo_is_a_patch_align_command_with_its_flags():
    argv = ["demo", "--quick", "--seeds", "3", "--report-to", "wandb", "--device", "cpu", "--keep-going",
            "--out", "/tmp/d"]
    args = build_parser(argv).parse_args(argv)
    assert (args.quick, args.seeds, args.report_to, args.device, args.keep_going, args.out) == (
        True, 3, "wandb", "cpu", True, "/tmp/d")


# ---------------------------------------------------------------- numbers and report


def test_mean_std_is_the_sample_standard_deviation():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([0.25]) == (0.25, 0.0)
    with pytest.raises(ValueError):
        mean_std([])


def _analysis(miou: float) -> dict:
    return {"stage1": {"compression": {"delta_h": 0.5}, "alignment": {"miou": miou, "pointing_accuracy": 0.4},
                       "decomposition": {"word_precision": 0.3, "word_recall": 0.2}}}


EVAL_ENTRY = {"tasks": {"rec": {"metrics": {"acc@0.5": 0.1}}, "vqa": {"metrics": {"exact_match": 0.6}},
                        "caption": {"metrics": {"CIDEr": 0.9, "Bleu_4": 0.2}}}}


def test_run_numbers_takes_each_table_number_from_analysis_and_evaluation():
    numbers = run_numbers(_analysis(0.2), EVAL_ENTRY, {"stage1": 3.0, "stage2": 4.0}, "caption-seed0")
    measured = {k: v for k, v in numbers.items() if v is not None}
    assert measured == {"delta_h": 0.5, "align_miou": 0.2, "pointing_accuracy": 0.4, "mp_precision": 0.3,
                        "mp_recall": 0.2, "rec_acc50": 0.1, "vqa_accuracy": 0.6, "caption_cider": 0.9,
                        "stage1_train_s": 3.0, "stage2_train_s": 4.0}
    assert set(numbers) == {key for key, _, _ in TABLE_COLUMNS}


def test_baselines_are_chance_from_the_analyses_random_atoms_for_pursuit_and_the_blind_levels():
    from patch_align.world.demo import baselines_of

    stage1 = {"alignment": {"chance_miou": 0.1, "chance_pointing_accuracy": 0.2},
              "decomposition": {"mean_atoms_used": 8.0}, "dictionary": {"words": 160}}
    views = {"size_words": {"decomposition": {"mean_atoms_used": 4.0}, "dictionary": {"words": 160}}}
    baselines = baselines_of([{"stage1": stage1, **views}], {"rec_acc50": 0.07})
    assert baselines == {"delta_h": 0.0, "rec_acc50": 0.07, "align_miou": 0.1, "pointing_accuracy": 0.2,
                         "mp_recall": 0.05, "mp_recall_size_words": 0.025}


def test_numbers_of_analyses_and_categories_a_preset_does_not_run_are_not_measured():
    views = {**_analysis(0.2), "size_words": {"decomposition": {"word_recall": 0.7}}}
    numbers = run_numbers(views, EVAL_ENTRY, {"stage1": 1.0, "stage2": 1.0}, "r",
                          vqa_categories={"binding": {"accuracy": 0.25, "n": 4}})
    assert numbers["mp_recall_size_words"] == 0.7 and numbers["vqa_binding"] == 0.25
    assert numbers["pointing_held_out_pairs"] is None and numbers["align_miou_stage2"] is None
    with pytest.raises(DemoError, match="r: mp_recall_size_words is None"):
        run_numbers({**views, "size_words": {}}, EVAL_ENTRY, {"stage1": 1.0, "stage2": 1.0}, "r")


def test_a_nan_or_missing_number_stops_the_report_naming_run_and_number():
    with pytest.raises(DemoError, match="sea-seed1: align_miou is nan"):
        run_numbers(_analysis(float("nan")), EVAL_ENTRY, {"stage1": 1.0, "stage2": 1.0}, "sea-seed1")
    with pytest.raises(DemoError, match="sea-seed1: caption_cider is None"):
        no_cider = {"tasks": {**EVAL_ENTRY["tasks"], "caption": {"metrics": {}}}}
        run_numbers(_analysis(0.1), no_cider, {"stage1": 1.0, "stage2": 1.0}, "sea-seed1")


def test_summary_table_shows_mean_and_std_over_seeds():
    seconds = {"stage1": 1, "stage2": 2}
    runs = [{"method": "caption", "numbers": run_numbers(_analysis(m), EVAL_ENTRY, seconds, "r")}
            for m in (0.1, 0.2, 0.3)]
    summary = summarize(runs)
    assert summary["caption"]["align_miou"]["n"] == 3
    assert summary["caption"]["align_miou"]["mean"] == pytest.approx(0.2)
    assert summary["caption"]["align_miou"]["std"] == pytest.approx(0.1)
    row = format_table(summary).splitlines()[2]
    assert row.startswith("| caption-only (LLaVA-1.5) | 0.500 ± 0.000 | 0.200 ± 0.100 |")
    single = format_table(summarize(runs[:1])).splitlines()[2]
    assert "±" not in single and "| 0.100 |" in single
    # columns no run measured are left out
    assert "held-out pairs" not in format_table(summary)


def test_a_cell_that_does_not_beat_its_baseline_is_marked_and_the_baselines_are_a_row():
    seconds = {"stage1": 1, "stage2": 2}
    runs = [{"method": "caption", "numbers": run_numbers(_analysis(m), EVAL_ENTRY, seconds, "r")}
            for m in (0.1, 0.3)]
    table = format_table(summarize(runs), {"align_miou": 0.15, "vqa_accuracy": 0.5}).splitlines()
    # Align mIoU 0.2 ± 0.141: mean − std 0.059 is not above 0.15; VQA 0.6 ± 0 is above 0.5
    assert "| 0.200 ± 0.141† |" in table[2] and "| 0.600 ± 0.000 |" in table[2]
    assert table[3].startswith("| *baseline* |") and "| 0.150 |" in table[3] and "| 0.500 |" in table[3]


def test_study_runs_are_summarised_by_variant():
    numbers = run_numbers(_analysis(0.2), EVAL_ENTRY, {"stage1": 1, "stage2": 2}, "r")
    summary = summarize([{"method": "patch_align", "group": "beta5-linear", "numbers": numbers},
                         {"method": "patch_align", "group": "beta0", "numbers": numbers}])
    assert list(summary) == ["beta5-linear", "beta0"]


def test_a_number_not_measured_is_none_and_shown_as_n_a():
    no_captions = {"tasks": {k: v for k, v in EVAL_ENTRY["tasks"].items() if k != "caption"}}
    numbers = run_numbers(_analysis(0.2), no_captions, {"stage1": 1.0, "stage2": 1.0}, "r", {"caption_cider"})
    assert numbers["caption_cider"] is None and numbers["align_miou"] == 0.2
    summary = summarize([{"method": "sea", "numbers": numbers}])
    assert summary["sea"]["caption_cider"] == {"mean": None, "std": None, "n": 0}
    assert "| 0.600 | n/a | 1.0 |" in format_table(summary)


# ---------------------------------------------------------------- end to end

# A few seconds of bootstrap and 2 training steps per stage: the same code path as the presets.
SMOKE_PRESET = DemoPreset(
    name="smoke", world=WorldSpec(seed=3, n_train=24, n_eval=4),
    bootstrap=replace(QUICK_SETTINGS, clip_hidden=32, clip_layers=2, clip_projection=32, clip_steps=10,
                      clip_batch=16, llm_hidden=32, llm_intermediate=64, llm_steps=10, llm_batch=4,
                      llm_seq_len=64, llm_eval_tokens=512),
    stage1=StageSettings(steps=2, batch_size=4, learning_rate=1e-3),
    stage2=StageSettings(steps=2, batch_size=4, learning_rate=1e-3),
    eval_limit=2)


def _check_artefacts(out: Path, metrics: dict, run_names: list[str]) -> None:
    for name in ("report.md", "metrics.json", "demo_metrics.png", "comparison/comparison.md",
                 "comparison/comparison.png", "eval/results.json", "eval/results.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert [r["name"] for r in metrics["runs"]] == run_names
    for run in metrics["runs"]:
        assert (out / "runs" / run["name"] / "stage1" / "mm_projector.bin").is_file()
        assert (out / "runs" / run["name"] / "stage2" / "model.safetensors").is_file()
        assert (out / "runs" / run["name"] / "analysis" / "report.md").is_file()
        assert all(math.isfinite(v) for v in run["numbers"].values() if v is not None)
        measured = ("delta_h", "align_miou", "rec_acc50", "vqa_accuracy")
        assert all(run["numbers"][k] is not None for k in measured)
    report = (out / "report.md").read_text()
    assert "| method | ΔH (nats) | Align mIoU |" in report and "## Wall time" in report


def test_smoke_demo_runs_sea_through_every_stage_and_writes_the_report(tmp_path):
    options = DemoOptions(out=tmp_path, preset=SMOKE_PRESET, methods=("sea",), device="cpu", progress=False)
    metrics = run_demo(options)
    _check_artefacts(tmp_path, metrics, ["sea-seed0"])
    assert (tmp_path / "logs" / "sea-seed0-stage1.log").is_file()
    assert "--align_objective sea" in (tmp_path / "logs" / "sea-seed0-stage1.log").read_text()
    assert list(metrics["summary"]) == ["sea"]
    assert metrics["failed_runs"] == {}
    # the label sign was measured both ways on the held-out images and the chosen labels were trained on
    sea = metrics["sea_labels"]
    assert set(sea["signs"]) == {"negated", "plain"} and sea["top_n"] == 3
    plain = sea["signs"]["plain"]
    assert plain["chance_precision"] == plain["true_pairs"] / (plain["patches"] * sea["vocabulary"])
    assert f"--sea_labels {tmp_path}/sea/" in (tmp_path / "logs" / "sea-seed0-stage1.log").read_text()
    settings = json.loads(next((tmp_path / "sea").glob("*/labels/settings.json")).read_text())
    assert settings["sign"] == sea["chosen"] and settings["top_n"] == 3


def test_the_readme_command_runs_from_any_folder_with_the_default_relative_out(tmp_path, monkeypatch):
    """`patch-align demo` as `make demo` runs it: the CLI, its default `--out runs/demo`, a new working
    directory (the smoke preset stands in for --quick to keep this fast)."""
    import patch_align.world.demo as demo
    from patch_align.cli import main

    monkeypatch.setattr(demo, "QUICK_PRESET", SMOKE_PRESET)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--quick", "--methods", "caption", "--device", "cpu", "--no-progress"]) == 0
    out = tmp_path / "runs" / "demo"
    assert (out / "report.md").is_file() and (out / "eval" / "results.json").is_file()
    # what the run wrote must not depend on the folder it ran in
    monkeypatch.chdir(tmp_path / "runs")
    tower = json.loads((out / "runs/caption-seed0/stage2/config.json").read_text())["mm_vision_tower"]
    assert Path(tower).is_absolute() and (Path(tower) / "config.json").is_file()


@pytest.mark.slow
def test_quick_demo_writes_every_artefact_with_finite_metrics(tmp_path):
    metrics = run_demo(DemoOptions(out=tmp_path, preset=QUICK_PRESET, device="cpu", progress=False))
    _check_artefacts(tmp_path, metrics, [f"{m}-seed0" for m in METHODS])
    assert list(metrics["summary"]) == list(METHODS)


@pytest.mark.slow
def test_patch_aligned_projector_aligns_better_than_caption_only_over_three_seeds(tmp_path):
    """The paper's claim in miniature: higher Align mIoU and pointing accuracy on held-out images."""
    # the claim is about the stage-1 analyses: stage 2 and evaluation only have to run, for 2 steps
    # and on a few questions (CI time; stage 1 is the preset's)
    preset = replace(QUICK_PRESET, eval_limit=20, stage2=replace(QUICK_PRESET.stage2, steps=2))
    options = DemoOptions(out=tmp_path, preset=preset, seeds=3, methods=("caption", "patch_align"),
                          device="cpu", progress=False)
    metrics = run_demo(options)
    summary = metrics["summary"]
    for key in ("align_miou", "pointing_accuracy"):
        assert summary["patch_align"][key]["n"] == 3
        assert summary["patch_align"][key]["mean"] > summary["caption"][key]["mean"], key


@pytest.mark.slow
def test_full_stage2_lifts_caption_only_above_every_blind_baseline(tmp_path):
    """Otherwise the --full world tests nothing downstream: the caption-only model, after --full's
    stage 2 (seed 0, final model only), beats the constant REC box, the majority answer per VQA
    template (all questions and binding ones) and the most common caption (docs/demo.md, Calibration)."""
    from patch_align.world.demo import FULL_PRESET

    # the first 300 questions of each task (every image has binding questions; all 200 captions), the
    # baselines scored on the same questions: scoring all 1,700 doubles the CI time
    preset = replace(FULL_PRESET, stage2_eval_every=None, curve_eval_limit=None, analyses=("stage1",),
                     eval_limit=300)
    metrics = run_demo(DemoOptions(out=tmp_path, preset=preset, methods=("caption",), device="cpu",
                                   progress=False))
    caption, baselines = metrics["summary"]["caption"], metrics["baselines"]
    for key in ("rec_acc50", "vqa_accuracy", "vqa_binding", "caption_cider"):
        assert caption[key]["mean"] > baselines[key], (key, caption[key]["mean"], baselines[key])
