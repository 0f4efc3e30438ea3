"""`patch-align demo --full` and `--study`: presets and studies as data, their commands, and both run end
to end on a micro world (smoke)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from patch_align.cli import build_parser
from patch_align.world.demo import (
    FULL_PRESET,
    RUN_ANALYSES,
    DemoOptions,
    DemoPaths,
    RunSpec,
    StageSettings,
    checkpoint_steps,
    run_demo,
    stage1_command,
    stage2_command,
    with_flags,
)
from patch_align.world.generator import WorldSpec
from patch_align.world.scene import SceneSpec
from patch_align.world.studies import BETA_STUDY, PROJECTOR_STUDY, STUDIES, Study, StudyRun
from tests.test_demo import SMOKE_PRESET

PATHS = DemoPaths(world=Path("/w"), clip=Path("/b/clip"), llm=Path("/b/llm"), sea_labels=Path("/s/labels"))


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


# ---------------------------------------------------------------- presets and studies as data


def test_full_preset_saves_stage2_checkpoints_for_the_learning_curves():
    run = RunSpec("caption", 0, Path("/o/runs/caption-seed0"))
    command = stage2_command(run, PATHS, FULL_PRESET)
    assert _flag(command, "--save_strategy") == "steps"
    assert _flag(command, "--save_steps") == str(FULL_PRESET.stage2_eval_every)
    assert _flag(command, "--save_only_model") == "True"
    assert _flag(command, "--max_steps") == str(FULL_PRESET.stage2.steps)
    assert _flag(command, "--model_max_length") == str(FULL_PRESET.model_max_length)
    assert FULL_PRESET.world.binding_per_image > 0 and FULL_PRESET.world.held_out_pairs
    assert FULL_PRESET.world.rec_answer_grid == FULL_PRESET.bootstrap.clip_image_size // 14
    assert set(FULL_PRESET.analyses) == set(RUN_ANALYSES)


def test_a_preset_checks_its_curve_interval_and_analyses():
    with pytest.raises(ValueError, match="stage2_eval_every"):
        replace(FULL_PRESET, stage2_eval_every=FULL_PRESET.stage2.steps)
    with pytest.raises(ValueError, match="analyses"):
        replace(FULL_PRESET, analyses=("size_words",))
    # REC answers snapped to a grid other than the CLIP's patches would teach boxes it cannot see
    with pytest.raises(ValueError, match="rec_answer_grid 8 is not the CLIP's 6×6"):
        replace(FULL_PRESET, world=replace(FULL_PRESET.world, rec_answer_grid=8))


def test_with_flags_replaces_a_flags_value_or_appends_it():
    assert with_flags(["x", "--a", "1"], ["--a", "2", "--b", "3"]) == ["x", "--a", "2", "--b", "3"]
    with pytest.raises(ValueError, match="pairs"):
        with_flags(["x"], ["--a"])


def test_the_beta_study_varies_only_beta_max_and_its_schedule():
    specs = BETA_STUDY.run_specs(1, Path("/o"))
    assert [s.name for s in specs] == ["beta0-seed0", "beta1-linear-seed0", "beta5-linear-seed0",
                                       "beta20-linear-seed0", "beta1-constant-seed0", "beta5-constant-seed0",
                                       "beta20-constant-seed0"]
    commands = [stage1_command(s, PATHS, BETA_STUDY.preset) for s in specs]
    assert {_flag(c, "--patch_loss_weight") for c in commands} == {"0", "1", "5", "20"}
    assert _flag(commands[3], "--patch_beta_schedule") == "linear"
    assert _flag(commands[6], "--patch_beta_schedule") == "constant"
    # everything else is one command line
    def without(command):
        return [v for i, v in enumerate(command) if not {command[i - 1], v} & {
            "--patch_loss_weight", "--patch_beta_schedule", "--output_dir", "--run_name"}]
    assert len({tuple(without(c)) for c in commands}) == 1


def test_the_projector_study_shares_stage1_between_stage2_treatments():
    specs = {s.name: s for s in PROJECTOR_STUDY.run_specs(2, Path("/o"))}
    assert len(specs) == 16
    frozen = specs["patch-mlp2x_gelu-s2-frozen-seed1"]
    assert frozen.stage1 == Path("/o/runs/patch-mlp2x_gelu-seed1/stage1") and not frozen.owns_stage1
    command = stage2_command(frozen, PATHS, PROJECTOR_STUDY.preset)
    adapter = _flag(command, "--pretrain_mm_mlp_adapter")
    assert adapter == "/o/runs/patch-mlp2x_gelu-seed1/stage1/mm_projector.bin"
    assert _flag(command, "--freeze_mm_mlp_adapter") == "True"
    slow = stage2_command(specs["caption-mlp2x_gelu-s2-lr1e-4-seed0"], PATHS, PROJECTOR_STUDY.preset)
    assert _flag(slow, "--mm_projector_lr") == "1e-4"
    linear = specs["caption-linear-seed0"]
    assert _flag(stage1_command(linear, PATHS, PROJECTOR_STUDY.preset), "--mm_projector_type") == "linear"
    assert _flag(stage2_command(linear, PATHS, PROJECTOR_STUDY.preset), "--mm_projector_type") == "linear"


def test_a_study_refuses_a_shared_stage1_of_another_method_or_an_unknown_run():
    own = StudyRun("a", "caption", ())
    for bad in (StudyRun("b", "patch_align", (), stage1_of="a"), StudyRun("b", "caption", (), stage1_of="zz"),
                StudyRun("b", "caption", (), stage1_flags=("--x", "1"), stage1_of="a")):
        with pytest.raises(ValueError, match="shares the stage 1"):
            Study("s", "?", SMOKE_PRESET, (own, bad), x="v", series="v", figure_keys=())
    with pytest.raises(ValueError, match="unique"):
        Study("s", "?", SMOKE_PRESET, (own, own), x="v", series="v", figure_keys=())


def test_checkpoint_steps_lists_saved_checkpoints_in_order_then_the_final_model(tmp_path):
    for name in ("checkpoint-20", "checkpoint-5", "checkpoint-10", "checkpoint-x"):
        (tmp_path / name).mkdir()
    assert checkpoint_steps(tmp_path, 20) == [(5, tmp_path / "checkpoint-5"),
                                              (10, tmp_path / "checkpoint-10"), (20, tmp_path)]


@pytest.mark.parametrize("argv, preset", [(["demo", "--full"], "full"), (["demo", "--study", "beta"], "beta"),
                                          (["demo", "--study", "projector", "--seeds", "2"], "projector")])
def test_full_and_study_flags_parse(argv, preset):
    args = build_parser(argv).parse_args(argv)
    assert (args.full, args.study) == ((True, None) if preset == "full" else (False, preset))
    assert set(STUDIES) == {"beta", "projector"}


def test_full_and_quick_exclude_each_other():
    with pytest.raises(SystemExit):
        build_parser(["demo"]).parse_args(["demo", "--full", "--quick"])


# ---------------------------------------------------------------- end to end on a micro world

# --full's world options at micro size: REC answers on the smoke CLIP's 4×4 grid, two REC
# conversations per image, the sine-cosine CLIP position start
MICRO_FULL = replace(
    SMOKE_PRESET, name="micro-full",
    world=WorldSpec(seed=3, n_train=24, n_eval=4, scene=SceneSpec(min_size=96, max_size=128),
                    binding_per_image=2, held_out_pairs=("yellow square",), rec_answer_grid=4,
                    rec_records_per_image=2),
    bootstrap=replace(SMOKE_PRESET.bootstrap, clip_position_scale=1.0),
    stage2=StageSettings(steps=4, batch_size=4, learning_rate=1e-3), stage2_eval_every=2, curve_eval_limit=3,
    analyses=tuple(RUN_ANALYSES), eval_limit=None)


def test_full_runs_end_to_end_with_learning_curves_baselines_and_claims(tmp_path):
    metrics = run_demo(DemoOptions(out=tmp_path, preset=MICRO_FULL, methods=("caption",), device="cpu",
                                   progress=False))
    curve = metrics["curves"]["caption-seed0"]
    assert [p["step"] for p in curve] == [2, 4]
    assert {"rec_acc50", "vqa_accuracy", "vqa_binding", "nll_rec", "nll_vqa"} <= set(curve[0])
    numbers = metrics["runs"][0]["numbers"]
    for key in ("pointing_held_out_pairs", "mp_recall_size_words", "align_miou_stage2", "vqa_binding"):
        assert numbers[key] is not None, key
    assert {"rec_acc50", "vqa_accuracy", "vqa_binding", "align_miou", "delta_h"} <= set(metrics["baselines"])
    assert 0 < metrics["world"]["rec_oracle"]["accuracy"] <= 1
    assert 0 <= metrics["bootstrap"]["clip"]["position_probe_row"] <= 1
    report = (tmp_path / "report.md").read_text()
    assert "patch row / column read by a linear probe" in report
    assert "## Learning curves (stage 2)" in report and "*baseline*" in report and "REC ceiling" in report
    assert (tmp_path / "learning_curves.png").is_file()
    assert (tmp_path / "runs/caption-seed0/analysis-held-out-pairs/metrics.json").is_file()


def test_an_analysis_view_without_regions_is_skipped_with_its_reason(tmp_path):
    from patch_align.world.demo import analyses_to_run
    from patch_align.world.generator import make_world

    make_world(tmp_path, replace(MICRO_FULL.world, held_out_pairs=("red circle",)))  # in no eval image
    kept, skipped = analyses_to_run(tuple(RUN_ANALYSES), tmp_path)
    assert kept == ["stage1", "size_words", "relation_words", "stage2"]
    assert list(skipped) == ["held_out_pairs"] and "no region" in skipped["held_out_pairs"]


def test_a_study_runs_end_to_end_with_a_shared_stage1_and_its_figure(tmp_path):
    chosen = ("caption-mlp2x_gelu", "caption-mlp2x_gelu-s2-frozen")
    runs = tuple(r for r in PROJECTOR_STUDY.runs if r.variant in chosen)
    study = replace(PROJECTOR_STUDY, preset=replace(MICRO_FULL, stage2_eval_every=None, curve_eval_limit=None,
                                                    analyses=("stage1", "stage2")), runs=runs)
    metrics = run_demo(DemoOptions(out=tmp_path, preset=study.preset, study=study, device="cpu",
                                   progress=False))
    assert list(metrics["summary"]) == ["caption-mlp2x_gelu", "caption-mlp2x_gelu-s2-frozen"]
    assert not (tmp_path / "runs/caption-mlp2x_gelu-s2-frozen-seed0/stage1").exists()
    frozen_log = (tmp_path / "logs/caption-mlp2x_gelu-s2-frozen-seed0-stage2.log").read_text()
    assert "--freeze_mm_mlp_adapter True" in frozen_log
    assert "runs/caption-mlp2x_gelu-seed0/stage1/mm_projector.bin" in frozen_log
    assert (tmp_path / "study.png").is_file() and metrics["study"]["name"] == "projector"
    assert json.loads((tmp_path / "metrics.json").read_text())["settings"]["study"] == "projector"


def test_the_calibration_rows_are_the_full_preset_with_one_documented_change_each():
    import importlib.util

    path = Path(__file__).parents[1] / "scripts" / "tiny" / "calibrate_full_world.py"
    spec = importlib.util.spec_from_file_location("calibrate_full_world", path)
    calibrate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(calibrate)
    full = calibrate.row_preset("full")
    assert (full.world, full.bootstrap, full.stage2) == (FULL_PRESET.world, FULL_PRESET.bootstrap,
                                                         FULL_PRESET.stage2)
    exact = calibrate.row_preset("exact")  # the previous --full: LLaVA-1.5's exact boxes, plain CLIP
    assert (exact.world.rec_answer_grid, exact.world.rec_records_per_image) == (0, 1)
    assert exact.bootstrap.clip_position_scale == 0
    assert calibrate.row_preset("full-1200").stage2.steps == 1200
    assert {calibrate.row_preset(row).stage2_eval_every * 4 for row in calibrate.ROWS} == {800, 1200}
