"""VQA accuracy, answer normalisation, exact match and option-letter scoring."""
from __future__ import annotations

import json

import pytest

from llava.eval import eval_vqa
from llava.eval.vqa_metrics import (
    exact_match,
    extract_option_letter,
    normalize_vqa_answer,
    option_letter_of,
    score_answers,
    vqa_accuracy,
)


@pytest.mark.parametrize("raw,normalised", [
    ("Two dogs.", "2 dogs"),              # number word -> digit, trailing period dropped
    ("The cat", "cat"),                   # article removed
    ("an apple and a pear", "apple and pear"),
    ("dont know", "don't know"),          # contraction table
    ("1,000 people", "1000 people"),      # digit,digit: punctuation deleted, not spaced
    ("yes!", "yes"),
    ("it is 2.5 m.", "it is 2.5 m"),      # a period before a digit stays
    ("red-white flag", "red white flag"),  # hyphen not touching a space -> space
    ("red - white", "red white"),          # hyphen touching a space -> deleted
    ("  Zero\tnone\n", "0 0"),
])
def test_normalize_vqa_answer_follows_the_official_rules(raw, normalised):
    assert normalize_vqa_answer(raw) == normalised


def test_three_of_ten_humans_gives_point_nine_by_leave_one_out():
    # Dropping one of the 7 non-matching answers leaves 3 matches -> 1; dropping one of the 3
    # matching answers leaves 2 -> 2/3. Average: (7 * 1 + 3 * 2/3) / 10 = 0.9.
    humans = ["2"] * 3 + ["3"] * 7
    assert vqa_accuracy("2", humans) == pytest.approx((7 * 1 + 3 * (2 / 3)) / 10)
    assert vqa_accuracy("2", humans) == pytest.approx(0.9)


def test_one_of_ten_humans_gives_point_three():
    # 9 subsets keep the single match (1/3 each), one subset loses it (0): 9 * (1/3) / 10.
    assert vqa_accuracy("2", ["2"] + ["3"] * 9) == pytest.approx(0.3)


def test_four_of_ten_humans_gives_full_credit():
    assert vqa_accuracy("2", ["2"] * 4 + ["3"] * 6) == 1.0


def test_no_matching_human_gives_zero():
    assert vqa_accuracy("4", ["2"] * 10) == 0.0


def test_vqa_accuracy_normalises_prediction_and_human_answers():
    assert vqa_accuracy("Two.", ["2", "two", "the 2"] + ["3"] * 7) == pytest.approx(0.9)


def test_vqa_accuracy_needs_at_least_two_humans():
    with pytest.raises(ValueError, match="at least 2"):
        vqa_accuracy("2", ["2"])


def test_exact_match_compares_after_normalisation():
    assert exact_match("The Bus.", "bus") == 1.0
    assert exact_match("buses", "bus") == 0.0


@pytest.mark.parametrize("text,letter", [
    ("A", "A"), ("b", "B"), ("(C)", "C"), ("D.", "D"), ("E)", "E"),
    ("The answer is C.", "C"), ("answer: (D)", "D"),
    ("B. a cat", "B"), ("I think (C) is right", "C"),
])
def test_extract_option_letter_accepts_documented_forms(text, letter):
    assert extract_option_letter(text) == letter


@pytest.mark.parametrize("text", ["a cat", "None of them", "", "I am not sure"])
def test_extract_option_letter_returns_none_without_a_letter(text):
    assert extract_option_letter(text) is None


def test_option_ground_truth_may_be_an_index_or_a_letter():
    assert option_letter_of(2) == "C"
    assert option_letter_of(" b ") == "B"
    with pytest.raises(ValueError, match="single letter"):
        option_letter_of("AB")


def test_score_answers_option_counts_unparsed_and_missing_as_wrong():
    truth = {"1": "A", "2": 1, "3": "C", "4": "D"}
    predictions = {"1": "A", "2": "The answer is B.", "3": "a cat"}
    scores = score_answers(truth, predictions, "option")
    assert scores["accuracy"] == 0.5
    assert (scores["total"], scores["answered"]) == (4, 3)
    assert scores["missing"] == ["4"]
    assert scores["unparsed"] == [{"question_id": "3", "text": "a cat"}]


def test_score_answers_rejects_predictions_for_unknown_questions():
    with pytest.raises(ValueError, match="no ground truth"):
        score_answers({"1": "A"}, {"2": "A"}, "option")


def _write_answers(path, answers):
    path.write_text("".join(json.dumps({"question_id": k, "prompt": "", "text": v, "answer_id": "x",
                                        "model_id": "m", "metadata": {}}) + "\n" for k, v in answers.items()))


def test_eval_vqa_cli_reads_official_vqa_annotations_and_writes_json(tmp_path, capsys):
    annotations = tmp_path / "ann.json"
    annotations.write_text(json.dumps({"annotations": [
        {"question_id": 1, "answers": [{"answer": "2"}] * 3 + [{"answer": "3"}] * 7},
        {"question_id": 2, "answers": [{"answer": "yes"}] * 10},
    ]}))
    results = tmp_path / "answers.jsonl"
    _write_answers(results, {1: "two", 2: "Yes."})
    scores = eval_vqa.main(["--annotation-file", str(annotations), "--result-file", str(results),
                            "--metric", "vqa"])
    assert scores["accuracy"] == pytest.approx((0.9 + 1.0) / 2)
    written = json.loads((tmp_path / "answers.vqa_scores.json").read_text())
    assert written["accuracy"] == pytest.approx(0.95)
    assert "vqa accuracy: 95.00%" in capsys.readouterr().out


def test_eval_vqa_cli_reads_gqa_style_id_keyed_annotations(tmp_path):
    annotations = tmp_path / "gqa.json"
    annotations.write_text(json.dumps({"q1": {"answer": "bus"}, "q2": {"answer": "left"}}))
    results = tmp_path / "answers.jsonl"
    _write_answers(results, {"q1": "The bus", "q2": "right"})
    scores = eval_vqa.main(["--annotation-file", str(annotations), "--result-file", str(results),
                            "--metric", "exact", "--out", str(tmp_path / "s.json")])
    assert scores["accuracy"] == 0.5


def test_eval_vqa_names_the_file_and_question_missing_answers(tmp_path):
    annotations = tmp_path / "ann.jsonl"
    annotations.write_text(json.dumps({"question_id": 5, "answer": "A"}) + "\n")
    results = tmp_path / "answers.jsonl"
    _write_answers(results, {5: "A"})
    with pytest.raises(ValueError, match=r"ann\.jsonl: line 1: question 5: lacks 'answers'"):
        eval_vqa.main(["--annotation-file", str(annotations), "--result-file", str(results),
                       "--metric", "vqa"])


def test_malformed_answer_line_is_reported_with_its_line_number(tmp_path):
    results = tmp_path / "answers.jsonl"
    results.write_text('{"question_id": 1, "text": "A"}\n{not json\n')
    with pytest.raises(ValueError, match=r"answers\.jsonl:2"):
        eval_vqa.load_answer_texts(results)


def _jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.mark.parametrize(("metric", "record", "message"), [
    # a string would iterate into the three one-letter human answers "y", "e", "s"
    ("vqa", {"question_id": 7, "answers": "yes"},
     r"'answers' must be a list of human answers, got str 'yes'"),
    ("vqa", {"question_id": 7, "answers": ["yes", 5]}, r"'answers'\[1\] must be a string or \{\"answer\""),
    ("vqa", {"question_id": 7, "answers": [{"answer": None}, "no"]}, r"'answers'\[0\] must be a string"),
    ("vqa", {"question_id": 7, "answers": ["yes"]},
     r"'answers' must hold at least 2 human answers \(VQA accuracy\), got 1"),
    ("exact", {"question_id": 7, "answer": 3}, r"'answer' must be a string, got int 3"),
    ("option", {"question_id": 7, "answer": "AB"}, r"'answer': option answer must be a single letter"),
    ("option", {"question_id": 7, "answer": True}, r"'answer': option answer must be a letter or an index"),
])
def test_bad_ground_truth_is_an_error_naming_file_line_question_and_field(tmp_path, metric, record, message):
    annotations = _jsonl(tmp_path / "ann.jsonl", [{"question_id": 6, "answers": ["a", "b"], "answer": "A"},
                                                  record])
    with pytest.raises(ValueError, match=rf"ann\.jsonl: line 2: question 7: {message}"):
        eval_vqa.load_ground_truth(annotations, metric)


def test_ground_truth_locations_are_records_of_a_json_list_and_keys_of_an_id_keyed_object(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps([{"question_id": 1, "answer": "a"}, {"question_id": 2}]))
    with pytest.raises(ValueError, match=r"list\.json: record 2: question 2: lacks 'answer'"):
        eval_vqa.load_ground_truth(tmp_path / "list.json", "exact")
    (tmp_path / "keyed.json").write_text(json.dumps({"q1": {"answer": "bus"}, "q2": "left"}))
    with pytest.raises(ValueError, match=r"keyed\.json: key 'q2': expected an object holding 'answer'"):
        eval_vqa.load_ground_truth(tmp_path / "keyed.json", "exact")


def test_a_question_with_two_ground_truth_records_is_an_error_naming_both_places(tmp_path):
    annotations = _jsonl(tmp_path / "ann.jsonl", [{"question_id": 1, "answer": "a"},
                                                  {"question_id": "1", "answer": "b"}])
    message = r"ann\.jsonl: line 2: question 1 already has ground truth \(line 1\)"
    with pytest.raises(ValueError, match=message):
        eval_vqa.load_ground_truth(annotations, "exact")


def test_checked_ground_truth_holds_the_human_answer_strings(tmp_path):
    annotations = _jsonl(tmp_path / "ann.jsonl", [{"question_id": 1, "answers": [{"answer": "2"}, "two"]},
                                                  {"question_id": 2, "answers": ["no", "no", "yes"]}])
    assert eval_vqa.load_ground_truth(annotations, "vqa") == {"1": ["2", "two"], "2": ["no", "no", "yes"]}


def test_an_answer_whose_text_is_not_a_string_is_an_error_naming_its_line(tmp_path):
    results = _jsonl(tmp_path / "answers.jsonl",
                     [{"question_id": 1, "text": "A"}, {"question_id": 2, "text": 3}])
    with pytest.raises(ValueError, match=r"answers\.jsonl:2: question 2: 'text' must be a string, got 3"):
        eval_vqa.load_answer_texts(results)
