"""Specification of llava.eval.model_vqa_loader: chunking, resumable answers files, end-to-end runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llava.eval import model_vqa_loader
from llava.eval.model_vqa_loader import get_chunk, main, read_questions, repair_answers_file, split_list

QUESTIONS = [
    {"question_id": 1, "image": "img003.png", "text": "What is in the picture?"},
    {"question_id": 2, "image": "img001.png", "text": "Name one object."},
    {"question_id": "q3", "text": "Describe a red box."},
    {"question_id": 4, "image": "img000.png", "text": "What colour is the left box?"},
    {"question_id": 5, "image": "img005.png", "text": "box?"},
]
ANSWER_KEYS = {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def run_loader(golden_dir, tmp_path):
    """Runs the CLI's main() on QUESTIONS with the upstream tiny checkpoint; returns (written, answers)."""
    question_file = _write_jsonl(tmp_path / "questions.jsonl", QUESTIONS)

    def run(answers_file: Path, *extra: str) -> tuple[int, list[dict]]:
        written = main([
            "--model-path", str(golden_dir / "llava-v1.5-tiny"),
            "--image-folder", str(golden_dir / "fixtures-437" / "images"),
            "--question-file", str(question_file),
            "--answers-file", str(answers_file),
            "--temperature", "0", "--max_new_tokens", "6", "--num-workers", "0", "--device", "cpu",
            *extra,
        ])
        return written, _read_jsonl(answers_file)

    return run


def test_ceil_split_gives_consecutive_chunks_that_concatenate_to_the_input():
    assert split_list([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    assert [get_chunk(range(5), 4, k) for k in range(4)] == [[0, 1], [2, 3], [4], []]
    assert sum((get_chunk(list(range(7)), 3, k) for k in range(3)), []) == list(range(7))


def test_chunk_index_outside_the_chunk_count_is_rejected():
    with pytest.raises(ValueError, match="--chunk-idx"):
        get_chunk([1, 2], 2, 2)


def test_question_records_without_text_or_with_repeated_ids_are_errors_naming_the_line(tmp_path):
    with pytest.raises(ValueError, match=r"q\.jsonl:2: question record lacks \['text'\]"):
        read_questions(_write_jsonl(tmp_path / "q.jsonl", [QUESTIONS[0], {"question_id": 9}]))
    with pytest.raises(ValueError, match=r"d\.jsonl:2: duplicate question_id 1"):
        read_questions(_write_jsonl(tmp_path / "d.jsonl", [QUESTIONS[0], QUESTIONS[0]]))


def test_torn_last_line_is_removed_and_earlier_answers_are_kept(tmp_path):
    answers = tmp_path / "a.jsonl"
    answers.write_text('{"question_id": 1, "text": "x"}\n{"question_id": 2, "te')
    assert repair_answers_file(answers) == {1}
    assert answers.read_text() == '{"question_id": 1, "text": "x"}\n'


def test_whole_last_record_without_newline_is_kept_and_terminated(tmp_path):
    answers = tmp_path / "a.jsonl"
    answers.write_text('{"question_id": 1}\n{"question_id": "q2"}')
    assert repair_answers_file(answers) == {1, "q2"}
    assert answers.read_text() == '{"question_id": 1}\n{"question_id": "q2"}\n'


def test_corrupt_line_inside_the_answers_file_is_an_error_naming_it(tmp_path):
    answers = tmp_path / "a.jsonl"
    answers.write_text('{"question_id": 1}\nnot json\n{"question_id": 3}\n')
    with pytest.raises(ValueError, match=r"a\.jsonl:2: not an answer record"):
        repair_answers_file(answers)


def test_missing_answers_file_means_nothing_answered(tmp_path):
    assert repair_answers_file(tmp_path / "absent.jsonl") == set()
    assert not (tmp_path / "absent.jsonl").exists()


def _never_load(*args, **kwargs):
    raise AssertionError("a model was loaded")


def _main_exit(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


def test_missing_images_exit_2_before_the_model_loads_counting_them_and_naming_question_and_path(
    golden_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(model_vqa_loader, "load_pretrained_model", _never_load)
    images = golden_dir / "fixtures-437" / "images"
    absent = [{"question_id": 10 + i, "image": f"absent{i}.png", "text": "?"} for i in range(6)]
    questions = _write_jsonl(tmp_path / "q.jsonl", [*QUESTIONS, *absent])
    code, error = _main_exit(["--model-path", str(golden_dir / "llava-v1.5-tiny"), "--image-folder",
                              str(images), "--question-file", str(questions),
                              "--answers-file", str(tmp_path / "a.jsonl")], capsys)
    assert code == 2
    assert "error: 6 of 11 questions have no readable image file:" in error
    assert f"question 10: image not found: {images / 'absent0.png'}" in error
    assert f"question 14: image not found: {images / 'absent4.png'}" in error
    assert "absent5.png" not in error and error.rstrip().endswith("...")  # five listed, all counted


@pytest.mark.parametrize(("extra", "message"), [
    (["--conv-mode", "vicuna_v9"], "unknown conversation mode 'vicuna_v9'"),
    (["--image-folder", ""],
     "4 of 5 questions have no readable image file:\n"
     "  question 1 has an image but no image folder was given"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
])
def test_bad_flags_exit_2_before_the_model_loads(golden_dir, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.setattr(model_vqa_loader, "load_pretrained_model", _never_load)
    questions = _write_jsonl(tmp_path / "q.jsonl", QUESTIONS)
    code, error = _main_exit(["--model-path", str(golden_dir / "llava-v1.5-tiny"), "--image-folder",
                              str(golden_dir / "fixtures-437" / "images"), "--question-file", str(questions),
                              "--answers-file", str(tmp_path / "a.jsonl"), *extra], capsys)
    assert code == 2
    assert f"error: {message}" in error


def test_answers_file_has_upstream_record_shape_in_question_order(run_loader, tmp_path):
    written, answers = run_loader(tmp_path / "out" / "answers.jsonl", "--batch-size", "2")
    assert written == 5
    assert [a["question_id"] for a in answers] == [1, 2, "q3", 4, 5]
    assert all(set(a) == ANSWER_KEYS for a in answers)
    assert [a["prompt"] for a in answers] == [q["text"] for q in QUESTIONS]
    assert {a["model_id"] for a in answers} == {"llava-v1.5-tiny"}
    assert all(a["metadata"] == {} and isinstance(a["text"], str) for a in answers)
    assert len({a["answer_id"] for a in answers}) == 5
    # Upstream's greedy answer to this question about img003 with llava_v1 is ",ox,ox,ox,ox" (8 tokens).
    assert answers[0]["text"] == ",ox,ox,ox"


def test_batch_size_and_dataloader_workers_do_not_change_greedy_answers(run_loader, tmp_path):
    _, one_by_one = run_loader(tmp_path / "b1.jsonl", "--batch-size", "1")
    _, batched = run_loader(tmp_path / "b3.jsonl", "--batch-size", "3", "--num-workers", "1")
    assert [a["text"] for a in batched] == [a["text"] for a in one_by_one]


def test_two_chunks_concatenated_equal_a_single_run(run_loader, tmp_path):
    _, single = run_loader(tmp_path / "all.jsonl", "--batch-size", "5")
    _, first = run_loader(tmp_path / "c0.jsonl", "--num-chunks", "2", "--chunk-idx", "0", "--batch-size", "2")
    _, second = run_loader(tmp_path / "c1.jsonl", "--num-chunks", "2", "--chunk-idx", "1")
    assert [a["question_id"] for a in first] == [1, 2, "q3"]
    merged = first + second
    assert [(a["question_id"], a["text"]) for a in merged] == [(a["question_id"], a["text"]) for a in single]


def test_rerun_answers_nothing_new(run_loader, tmp_path):
    answers_file = tmp_path / "answers.jsonl"
    run_loader(answers_file, "--batch-size", "5")
    before = answers_file.read_text()
    written, answers = run_loader(answers_file, "--batch-size", "5")
    assert written == 0
    assert answers_file.read_text() == before


def test_interrupted_run_resumes_after_repairing_the_torn_line(run_loader, tmp_path):
    _, reference = run_loader(tmp_path / "reference.jsonl", "--batch-size", "5")
    answers_file = tmp_path / "answers.jsonl"
    kept = "".join(json.dumps(a) + "\n" for a in reference[:2])
    answers_file.write_text(kept + json.dumps(reference[2])[:25])
    written, answers = run_loader(answers_file, "--batch-size", "2")
    assert written == 3
    assert answers_file.read_text().startswith(kept)
    assert [(a["question_id"], a["text"]) for a in answers] == [
        (a["question_id"], a["text"]) for a in reference
    ]
