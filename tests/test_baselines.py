"""Specification of the blind baselines (issue 20): each on a hand-made case with a known value.

No model is loaded: a baseline never looks at an image, and it is scored by the task's own scorer.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from llava.eval.rec import REC_PROMPT, ReferringRegion, build_rec_questions, format_box
from patch_align.evaluation.baselines import (
    at_or_below,
    constant_box,
    majority_answers,
    qa_pairs,
    question_template,
    task_baseline,
)
from patch_align.evaluation.report import results_markdown
from patch_align.evaluation.scoring import PreparedTask, headline_metrics, rec_centre_in_box
from patch_align.evaluation.suite import SuiteError, TaskSpec, load_suite


def _spec(task_type: str) -> TaskSpec:
    return TaskSpec(name=task_type, type=task_type, question_file=Path("q.jsonl"), annotation_file=None,
                    image_folder=None, conv_mode="llava_v1", max_new_tokens=8, splits=None)


def _conversation(question: str, answer: str) -> dict:
    turns = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]
    return {"id": question, "image": "x.png", "conversations": turns}


def _rec_questions(box: tuple[float, float, float, float], count: int) -> list[dict]:
    regions = [ReferringRegion(ref_id=i, image=f"{i}.png", width=100, height=100, bbox_xyxy=box, split="val",
                               expressions=((i, f"object {i}"),)) for i in range(count)]
    return build_rec_questions(regions)


def test_a_world_where_every_box_is_the_same_gives_a_constant_box_acc_of_one():
    train = [_conversation(REC_PROMPT.format(expression=f"the thing {i}"), "[0.20, 0.30, 0.60, 0.70]")
             for i in range(5)]
    train.append(_conversation("Describe the image briefly.", "a small red circle"))  # not a box: ignored
    task = PreparedTask(_spec("rec"), _rec_questions((20.0, 30.0, 60.0, 70.0), 4), None)
    baseline = task_baseline(task, train)
    assert baseline["fit"]["box"] == pytest.approx([0.2, 0.3, 0.6, 0.7])
    assert baseline["fit"]["train_hit_rate"] == 1.0 and baseline["fit"]["train_boxes"] == 5
    assert baseline["metrics"] == {"acc@0.5": 1.0, "centre_in_box": 1.0}


def test_the_constant_box_is_the_train_box_most_train_boxes_overlap():
    # three boxes near the top-left corner, one far away: a top-left one wins, hitting 3 of 4
    answers = ["[0.00, 0.00, 0.50, 0.50]", "[0.00, 0.00, 0.45, 0.50]", "[0.05, 0.00, 0.50, 0.50]",
               "[0.60, 0.60, 0.90, 0.90]"]
    fit = constant_box(answers)
    assert fit.train_hit_rate == 0.75 and fit.candidates == 4
    assert fit.box[0] < 0.1 and fit.box[1] == 0.0
    with pytest.raises(ValueError, match="no train answer parses as a box"):
        constant_box(["a red circle"])


def test_blind_vqa_answers_the_majority_answer_of_each_template():
    train = [_conversation(q, a) for q, a in [
        ("What colour is the circle?", "red"), ("What colour is the square?", "red"),
        ("What colour is the circle?", "blue"), ("How many objects are there?", "2"),
        ("How many objects are there?", "3"), ("How many objects are there?", "3")]]
    questions = [{"question_id": 0, "text": "What colour is the triangle?"},
                 {"question_id": 1, "text": "How many objects are there?"}]
    # with the shapes as slots "what colour is the _?" has majority red (2 of 3)
    fit = majority_answers(qa_pairs(train), questions, slot_words=["circle", "square", "triangle"])
    assert fit.answers == {"0": "red", "1": "3"}
    assert fit.table == {"what colour is the _?": "red", "how many objects are there?": "3"}
    assert fit.unseen == 0 and fit.train_pairs_used == 6
    # without slots the triangle question was never asked in train: it gets the majority answer of
    # the train pairs used (those sharing a template with an eval question: the 3 count questions)
    exact = majority_answers(qa_pairs(train), questions)
    assert exact.unseen == 1 and exact.train_pairs_used == 3 and exact.answers == {"0": "3", "1": "3"}


def test_blind_vqa_accuracy_is_scored_by_the_tasks_own_scorer():
    train = [_conversation("Is there a red circle?", a) for a in ("yes", "yes", "no")]
    questions = [{"question_id": i, "text": "Is there a red circle?"} for i in range(4)]
    truth = {"0": "yes", "1": "no", "2": "yes", "3": "yes"}
    baseline = task_baseline(PreparedTask(_spec("gqa"), questions, truth), train)
    assert baseline["metrics"] == {"exact_match": 0.75}
    assert baseline["method"] == "most common train answer per question template"


def test_question_templates_ignore_the_image_token_case_spacing_and_slot_words():
    assert question_template("<image>\nWhat  colour is the Red circle?") == "what colour is the red circle?"
    assert question_template("What shape is the red one?", ["red", "circle"]) == "what shape is the _ one?"
    with pytest.raises(ValueError, match="no train question has the template"):
        majority_answers([("Describe it.", "a cat")], [{"question_id": 0, "text": "How many?"}])


def test_the_caption_baseline_is_the_most_common_train_caption():
    pytest.importorskip("pycocoevalcap")
    train = [_conversation("Describe the image briefly.", c)
             for c in ("a small red circle", "a large blue square", "a small red circle")]
    questions = [{"question_id": "e0", "text": "Describe the image briefly."}]
    fit = majority_answers(qa_pairs(train), questions)
    assert fit.answers == {"e0": "a small red circle"}
    references = {"e0": ["a small red circle", "a small red circle"]}
    baseline = task_baseline(PreparedTask(_spec("caption"), questions, references), train)
    assert baseline["metrics"]["Bleu_4"] == pytest.approx(1.0, abs=1e-6)


def test_centre_in_box_counts_boxes_whose_centre_falls_in_the_truth_and_parse_failures_miss():
    questions = _rec_questions((0.0, 0.0, 50.0, 50.0), 3)
    answers = {"0": format_box([0.10, 0.10, 0.30, 0.30]),  # centre (20, 20): in
               "1": format_box([0.40, 0.40, 0.90, 0.90]),  # centre (65, 65): out
               "2": "somewhere on the left"}  # no box
    assert rec_centre_in_box(questions, answers) == {"total": 3, "hits": 1, "rate": pytest.approx(1 / 3)}
    scores = {"overall": {"accuracy": 0.0}, "splits": {"val": {}}, "centre_in_box": {"rate": 0.5}}
    assert headline_metrics("rec", scores) == {"acc@0.5": 0.0, "centre_in_box": 0.5}


def test_a_score_at_or_below_its_baseline_is_marked_in_the_results_table():
    assert at_or_below(0.3, 0.3) and not at_or_below(0.31, 0.3)
    assert at_or_below(2.0, 1.5, higher_is_better=False)
    assert not at_or_below(None, 0.3) and not at_or_below(0.3, None)
    timing = {"questions": 2, "generated": 2, "resumed": 0, "generation_s": 1.0, "scoring_s": 0.1,
              "questions_per_s": 2.0}

    def entry(value):
        return {"metrics": {"exact_match": value}, "failures": 0, "timing": timing}

    results = {"suite": "s.json", "limit": None, "tasks": [{"name": "vqa"}],
               "baselines": {"vqa": {"method": "most common train answer per question template",
                                     "metrics": {"exact_match": 0.4}}},
               "checkpoints": {"blind": {"tasks": {"vqa": entry(0.4)}},
                               "seeing": {"tasks": {"vqa": entry(0.5)}}}}
    table = results_markdown(results)
    assert "| blind baseline | 40.0 |" in table
    assert "| blind | 40.0 (≤) |" in table and "| seeing | 50.0 |" in table
    assert "- vqa: most common train answer per question template" in table


def test_suite_baseline_keys_resolve_against_the_suite_folder_and_are_checked(tmp_path):
    suite = {"tasks": [{"name": "v", "type": "gqa", "question_file": "q.jsonl", "annotation_file": "a.jsonl",
                        "baseline_train": "train.json", "baseline_slot_words": ["red"]}]}
    (tmp_path / "s.json").write_text(json.dumps(suite))
    spec = load_suite(tmp_path / "s.json").tasks[0]
    assert spec.baseline_train == tmp_path / "train.json" and spec.baseline_slot_words == ("red",)
    suite["tasks"][0].pop("baseline_train")
    (tmp_path / "s.json").write_text(json.dumps(suite))
    with pytest.raises(SuiteError, match="'baseline_slot_words' needs 'baseline_train'"):
        load_suite(tmp_path / "s.json")


def test_a_baseline_that_cannot_be_fit_is_a_suite_error_naming_task_and_file(tmp_path):
    from dataclasses import replace

    from patch_align.evaluation.runner import suite_baselines

    train = tmp_path / "train.json"
    train.write_text(json.dumps([_conversation("Describe the image briefly.", "a cat")]))
    spec = replace(_spec("gqa"), baseline_train=train)
    task = PreparedTask(spec, [{"question_id": 0, "text": "How many objects are there?"}], {"0": "2"})
    with pytest.raises(SuiteError, match=r"task 'gqa': baseline from .*train.json: no train question"):
        suite_baselines([task])
    assert suite_baselines([PreparedTask(_spec("gqa"), task.questions, task.truth)]) == {}
