"""The demo's verdicts: VQA accuracy per category and the rule that turns the table into claims."""
from __future__ import annotations

import pytest

from patch_align.world.demo_report import format_claims
from patch_align.world.verdicts import Comparison, above_baseline, compare, vqa_by_category


def _summary(**groups: tuple[float, float]) -> dict:
    return {g: {"rec_acc50": {"mean": m, "std": s, "n": 2}} for g, (m, s) in groups.items()}


CLAIM = Comparison("REC", "rec_acc50", "patch_align", "caption")


def test_vqa_by_category_scores_answered_questions_per_category_and_binding_together():
    truth = [{"question_id": 0, "answer": "red", "category": "colour"},
             {"question_id": 1, "answer": "blue", "category": "bind_colour"},
             {"question_id": 2, "answer": "square", "category": "bind_shape"},
             {"question_id": 3, "answer": "yes", "category": "exists"}]
    result = vqa_by_category({"0": "Red", "1": "green", "2": "square"}, truth)
    assert result == {"bind_colour": {"accuracy": 0.0, "n": 1}, "bind_shape": {"accuracy": 1.0, "n": 1},
                      "binding": {"accuracy": 0.5, "n": 2}, "colour": {"accuracy": 1.0, "n": 1}}


@pytest.mark.parametrize("better, worse, verdict", [
    ((0.50, 0.05), (0.30, 0.05), "reproduced"),       # gap 0.20 > 0.10
    ((0.32, 0.05), (0.30, 0.05), "within spread"),    # gap 0.02 <= 0.10
    ((0.10, 0.01), (0.30, 0.01), "reversed"),
    ((0.15, 0.00), (0.12, 0.00), "not testable (both at or below the baseline)"),
])
def test_a_claim_is_reproduced_only_beyond_the_spread_and_above_the_floor(better, worse, verdict):
    result = compare(_summary(patch_align=better, caption=worse), CLAIM, {"rec_acc50": 0.2})
    assert result["verdict"] == verdict
    assert result["gap"] == pytest.approx(better[0] - worse[0])


def test_a_claim_whose_method_did_not_run_is_not_measured():
    assert compare(_summary(caption=(0.3, 0.0)), CLAIM)["verdict"] == "not measured"


def test_above_baseline_needs_mean_minus_std_over_it():
    summary = _summary(caption=(0.30, 0.05))
    assert above_baseline(summary, "caption", "rec_acc50", 0.24) is True
    assert above_baseline(summary, "caption", "rec_acc50", 0.25) is False
    assert above_baseline(summary, "caption", "rec_acc50", None) is None


def test_the_claims_section_states_each_verdict_with_its_numbers():
    lines = format_claims(_summary(patch_align=(0.5, 0.05), caption=(0.3, 0.05)), {"rec_acc50": 0.2}, seeds=2)
    (line,) = [x for x in lines if "+16 %" in x]
    assert line == ("- **REC: +16 % grounding (PA)**: reproduced. REC Acc@0.5: patch-aligned 0.500 vs "
                    "caption-only (LLaVA-1.5) 0.300 (gap +0.200, stds added 0.100; baseline 0.200).")
