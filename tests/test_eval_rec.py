"""REC grounding: pad-square box geometry, answer parsing, IoU, scoring, RefCOCO conversion."""
from __future__ import annotations

import json
import pickle

import pytest

from llava.eval import convert_refcoco, eval_rec
from llava.eval.rec import (
    REC_PROMPT,
    ReferringRegion,
    box_to_padded_normalized,
    build_rec_questions,
    format_box,
    iou,
    padded_normalized_to_pixels,
    parse_box,
    parse_box_with_reason,
    score_rec,
)

# --- geometry -------------------------------------------------------------------------------


def test_wide_image_with_odd_padding_uses_floor_offset():
    # 7x4: side 7, top = (7 - 4) // 2 = 1 (not 1.5), so the full image spans y in [1/7, 5/7].
    assert box_to_padded_normalized([0, 0, 7, 4], 7, 4, box_format="xyxy") == [0.0, 0.14, 1.0, 0.71]


def test_tall_image_with_odd_padding_uses_floor_offset():
    # 4x7: side 7, left = 1.
    assert box_to_padded_normalized([0, 0, 4, 7], 4, 7, box_format="xyxy") == [0.14, 0.0, 0.71, 1.0]


def test_xywh_box_is_converted_before_normalising():
    # xywh [1, 0, 2, 4] on 7x4 is xyxy [1, 0, 3, 4]; y shifts by top = 1.
    assert box_to_padded_normalized([1, 0, 2, 4], 7, 4, box_format="xywh") == [0.14, 0.14, 0.43, 0.71]


def test_square_image_has_no_offset():
    assert box_to_padded_normalized([10, 20, 30, 40], 100, 100, box_format="xyxy") == [0.1, 0.2, 0.3, 0.4]


def test_box_overhanging_the_image_is_clipped_before_normalising():
    assert box_to_padded_normalized([-2, 0, 9, 4], 7, 4, box_format="xyxy") == [0.0, 0.14, 1.0, 0.71]


def test_normalised_to_pixels_on_tall_image_subtracts_floor_offset_and_clips():
    # 50x101: side 101, left = 51 // 2 = 25. x1 = 0.5 * 101 - 25 = 25.5; x2 = 101 - 25 = 76 -> clipped to 50.
    assert padded_normalized_to_pixels([0.5, 0.0, 1.0, 1.0], 50, 101) == [25.5, 0.0, 50, 101.0]


def test_normalised_to_pixels_on_wide_image_clips_the_padding_away():
    # 200x100: side 200, top 50. y = 0 -> -50 -> clipped to 0; y = 1 -> 150 -> clipped to 100.
    assert padded_normalized_to_pixels([0.25, 0.0, 0.75, 1.0], 200, 100) == [50.0, 0.0, 150.0, 100]


@pytest.mark.parametrize("width,height", [(640, 427), (427, 640), (333, 500)])
def test_round_trip_pixels_normalised_pixels_is_within_rounding(width, height):
    box = [100.5, 50.2, 300.0, 400.0]
    back = padded_normalized_to_pixels(box_to_padded_normalized(box, width, height, box_format="xyxy"),
                                       width, height)
    max_error = 0.005 * max(width, height)  # half a unit of the 2nd decimal, in pixels
    assert all(abs(a - b) <= max_error + 1e-9 for a, b in zip(box, back, strict=True))


def test_inverted_pixel_box_is_an_error():
    with pytest.raises(ValueError, match="x2 < x1"):
        box_to_padded_normalized([5, 0, 1, 4], 7, 4, box_format="xyxy")


def test_unknown_box_format_is_an_error():
    with pytest.raises(ValueError, match="box_format"):
        box_to_padded_normalized([0, 0, 1, 1], 7, 4, box_format="cxcywh")


def test_format_box_uses_two_decimals():
    assert format_box([0.1, 0.25, 0.5, 1.0]) == "[0.10, 0.25, 0.50, 1.00]"


# --- IoU ------------------------------------------------------------------------------------


def test_iou_of_half_overlapping_squares_is_one_seventh():
    assert iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)


def test_iou_of_identical_boxes_is_one_and_of_disjoint_boxes_zero():
    assert iou([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0


def test_iou_of_empty_boxes_is_zero_not_nan():
    assert iou([1, 1, 1, 1], [1, 1, 1, 1]) == 0.0


# --- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "[0.12, 0.3, 0.5, 0.9]",
    "(0.12,0.3,0.5,0.9)",
    "0.12 0.3 0.5 0.9",
    "The region is [0.12, 0.30, 0.50, 0.90].",
    "It is at 0.12, 0.3, 0.5, 0.9 in the picture",
    "[.12, .3, .5, .9]",
    "Answer: 2 dogs, box (0.12 0.3 0.5 0.9)",
])
def test_parse_box_accepts_documented_formats(text):
    assert parse_box(text) == [0.12, 0.3, 0.5, 0.9]


def test_parse_box_swaps_corners_given_in_the_wrong_order():
    assert parse_box("[0.5, 0.9, 0.12, 0.3]") == [0.12, 0.3, 0.5, 0.9]


@pytest.mark.parametrize("text,reason", [
    ("I cannot see it.", "no box"),
    ("", "no box"),
    ("0.1, 0.2, 0.3", "no box"),
    ("0.1 0.2 0.3 0.4 0.5", "no box"),
    ("[12, 30, 50, 90]", "out of range"),
    ("[-0.1, 0.2, 0.3, 0.4]", "out of range"),
])
def test_parse_box_rejects_garbage_and_out_of_range_values(text, reason):
    assert parse_box_with_reason(text) == (None, reason)


# --- questions and scoring ------------------------------------------------------------------

REGION = ReferringRegion(ref_id=7, image="COCO_1.jpg", width=200, height=100,
                         bbox_xyxy=(0.0, 0.0, 100.0, 100.0), split="val",
                         expressions=((11, "left dog"), (12, "brown dog")))


def test_build_rec_questions_writes_one_record_per_expression():
    questions = build_rec_questions([REGION])
    assert [q["question_id"] for q in questions] == [11, 12]
    assert questions[0] == {
        "question_id": 11, "image": "COCO_1.jpg",
        "text": "Please provide the bounding box coordinate of the region this sentence describes: left dog",
        "category": "rec", "split": "val", "ref_id": 7, "bbox": [0.0, 0.0, 100.0, 100.0],
        "width": 200, "height": 100,
    }
    assert build_rec_questions([REGION], splits=["testA"]) == []


def _question(qid, split):
    # 200x100 image, side 200, top 50: the ground truth [0, 0, 100, 100] is [0, 0.25, 0.5, 0.75] normalised.
    return {"question_id": qid, "split": split, "bbox": [0, 0, 100, 100], "width": 200, "height": 100}


HAND_QUESTIONS = [_question(1, "val"), _question(2, "val"), _question(3, "val"),
                  _question(4, "testA"), _question(5, "testA"), _question(6, "testA")]
HAND_ANSWERS = {
    1: "[0.0, 0.25, 0.5, 0.75]",    # IoU 1 -> correct
    2: "[0.25, 0.25, 0.75, 0.75]",  # pixels [50, 0, 150, 100]: IoU 1/3 -> wrong
    3: "no idea",                   # parse failure -> wrong, listed
    4: "0 0.25 0.45 0.75",          # pixels [0, 0, 90, 100]: IoU 0.9 -> correct
    5: "[0.0, 0.0, 1.0, 1.0]",      # clipped to the image [0, 0, 200, 100]: IoU exactly 0.5 -> correct
    # 6: no answer -> wrong, listed as missing
}


def test_score_rec_matches_the_hand_count():
    scores = score_rec(HAND_QUESTIONS, HAND_ANSWERS)
    assert scores["splits"]["val"] == {"total": 3, "correct": 1, "parse_failures": 1, "missing": 0,
                                       "accuracy": 1 / 3}
    assert scores["splits"]["testA"] == {"total": 3, "correct": 2, "parse_failures": 0, "missing": 1,
                                         "accuracy": 2 / 3}
    assert scores["overall"]["accuracy"] == 0.5
    assert scores["parse_failures"] == [{"question_id": 3, "text": "no idea", "reason": "no box"}]
    assert scores["missing"] == [6]


def test_score_rec_matches_ids_given_as_strings():
    scores = score_rec(HAND_QUESTIONS, {str(k): v for k, v in HAND_ANSWERS.items()})
    assert scores["overall"]["correct"] == 3


def test_score_rec_rejects_answers_for_unknown_questions():
    with pytest.raises(ValueError, match="no REC question"):
        score_rec(HAND_QUESTIONS, {99: "[0, 0, 1, 1]"})


def test_score_rec_rejects_duplicate_question_ids():
    with pytest.raises(ValueError, match="duplicate"):
        score_rec([_question(1, "val"), _question(1, "val")], {})


@pytest.mark.parametrize(("field", "value", "message"), [
    ("bbox", [10, 10, 5, 20], r"'bbox' has x2 < x1 or y2 < y1"),
    ("bbox", [0, 0, 5], r"'bbox' must be four numbers \[x1, y1, x2, y2\], got \[0, 0, 5\]"),
    ("bbox", "0 0 5 5", r"'bbox' must be four numbers"),
    ("bbox", [0, 0, float("nan"), 5], r"'bbox' must be four numbers"),
    ("width", 0, r"'width' must be a positive number, got 0"),
    ("height", "100", r"'height' must be a positive number, got '100'"),
    ("split", 1, r"'split' must be a string, got 1"),
])
def test_rec_ground_truth_that_cannot_be_scored_is_an_error_naming_question_and_field(field, value, message):
    question = {**_question(7, "val"), field: value}
    with pytest.raises(ValueError, match=rf"REC question 7: {message}"):
        score_rec([_question(1, "val"), question], {})


def test_eval_rec_cli_prints_a_per_split_table_and_writes_json(tmp_path, capsys):
    question_file = tmp_path / "q.jsonl"
    question_file.write_text("".join(json.dumps(q) + "\n" for q in HAND_QUESTIONS))
    result_file = tmp_path / "a.jsonl"
    result_file.write_text("".join(json.dumps({"question_id": k, "prompt": "", "text": v, "answer_id": "x",
                                               "model_id": "m", "metadata": {}}) + "\n"
                                   for k, v in HAND_ANSWERS.items()))
    out = tmp_path / "scores.json"
    eval_rec.main(["--question-file", str(question_file), "--result-file", str(result_file),
                   "--out", str(out)])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["split", "total", "correct", "acc@0.5", "unparsed", "missing"]
    assert table[1].split() == ["testA", "3", "2", "66.67", "0", "1"]
    assert table[2].split() == ["val", "3", "1", "33.33", "1", "0"]
    assert table[3].split() == ["overall", "6", "3", "50.00", "1", "1"]
    assert json.loads(out.read_text())["overall"]["correct"] == 3


# --- RefCOCO conversion ---------------------------------------------------------------------

REFS = [{"ref_id": 7, "ann_id": 70, "image_id": 1, "split": "val",
         "sentences": [{"sent_id": 11, "sent": "left dog"}, {"sent_id": 12, "sent": "brown dog"}]},
        {"ref_id": 8, "ann_id": 80, "image_id": 1, "split": "train",
         "sentences": [{"sent_id": 13, "sent": "right cat"}]}]
INSTANCES = {"images": [{"id": 1, "file_name": "COCO_1.jpg", "width": 200, "height": 100}],
             "annotations": [{"id": 70, "image_id": 1, "bbox": [0, 0, 100, 100]},
                             {"id": 80, "image_id": 1, "bbox": [100, 50, 100, 50]}]}


@pytest.fixture
def refcoco_files(tmp_path):
    refs_path = tmp_path / "refs.json"
    refs_path.write_text(json.dumps(REFS))
    instances_path = tmp_path / "instances.json"
    instances_path.write_text(json.dumps(INSTANCES))
    return refs_path, instances_path


def test_convert_refcoco_writes_question_files_per_split_and_training_conversations(refcoco_files, tmp_path):
    refs_path, instances_path = refcoco_files
    train_path = tmp_path / "train.json"
    convert_refcoco.main(["--refs", str(refs_path), "--instances", str(instances_path),
                          "--dataset", "refcoco", "--out-dir", str(tmp_path / "q"),
                          "--train-conversations", str(train_path)])
    val = [json.loads(line) for line in (tmp_path / "q" / "refcoco_val.jsonl").read_text().splitlines()]
    assert [q["question_id"] for q in val] == [11, 12]
    assert val[0]["bbox"] == [0, 0, 100, 100]
    assert val[1]["text"] == REC_PROMPT.format(expression="brown dog")
    # xywh [100, 50, 100, 50] on 200x100 (top 50) -> xyxy [100, 50, 200, 100] -> [0.5, 0.5, 1.0, 0.75].
    assert json.loads(train_path.read_text()) == [{
        "id": "rec-13", "image": "COCO_1.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\n" + REC_PROMPT.format(expression="right cat")},
            {"from": "gpt", "value": "[0.50, 0.50, 1.00, 0.75]"},
        ],
    }]


def test_join_refs_names_the_file_and_ref_when_an_annotation_is_missing(refcoco_files):
    images, annotations = convert_refcoco.load_instances(refcoco_files[1])
    del annotations[80]
    with pytest.raises(ValueError, match=r"refs\.json: ref 8 names annotation 80"):
        convert_refcoco.join_refs(REFS, images, annotations, source="refs.json")


def test_refs_pickle_needs_opt_in_and_then_loads_plain_data(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps(REFS, protocol=2))
    with pytest.raises(ValueError, match="allow_pickle"):
        convert_refcoco.load_refs(path)
    assert convert_refcoco.load_refs(path, allow_pickle=True) == REFS


class _Sneaky:
    def __reduce__(self):
        return (print, ("pickle ran code",))


def test_refs_pickle_that_references_a_global_is_refused(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([_Sneaky()]))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        convert_refcoco.load_refs(path, allow_pickle=True)
