"""Specification of `patch-align eval`: suite files, early checks, resume, results equal to the scorers."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from PIL import Image

from llava.eval.eval_vqa import load_answer_texts, load_ground_truth
from llava.eval.rec import (
    ReferringRegion,
    box_to_padded_normalized,
    build_rec_questions,
    format_box,
    score_rec,
)
from llava.eval.vqa_metrics import score_answers
from patch_align.cli import main as patch_align_main
from patch_align.evaluation import prepare, runner
from patch_align.evaluation.report import metric_columns, results_markdown
from patch_align.evaluation.runner import Checkpoint, parse_checkpoint, run_suite
from patch_align.evaluation.scoring import prepare_task, rec_centre_in_box
from patch_align.evaluation.suite import SuiteError, load_suite

IMAGES = ["img000.png", "img001.png", "img002.png"]
MC_SUFFIX = "Answer with the option's letter from the given choices directly."
HUMAN_ANSWERS = ["red", "red", "red", "blue", "blue", "red", "red", "green", "red", "red"]


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _rec_questions(image_folder: Path) -> list[dict]:
    regions = []
    for index, image in enumerate(IMAGES):
        width, height = Image.open(image_folder / image).size
        regions.append(ReferringRegion(
            ref_id=index, image=image, width=width, height=height,
            bbox_xyxy=(0.0, 0.0, width / 2, height / 2), split="val" if index < 2 else "testA",
            expressions=((100 + index, f"the top left part of picture {index}"),)))
    return build_rec_questions(regions)


def _write_suite_files(folder: Path, image_folder: Path) -> Path:
    """A suite of four tiny tasks (rec, vqa, mc, caption) over the golden fixture images."""
    _write_jsonl(folder / "rec.jsonl", _rec_questions(image_folder))
    _write_jsonl(folder / "vqa_questions.jsonl", [
        {"question_id": i, "image": image, "text": "What colour is the box?\nAnswer with one word."}
        for i, image in enumerate(IMAGES)])
    _write_jsonl(folder / "vqa_annotations.jsonl", [
        {"question_id": i, "answers": HUMAN_ANSWERS} for i in range(len(IMAGES))])
    _write_jsonl(folder / "mc_questions.jsonl", [
        {"question_id": f"m{i}", "image": image,
         "text": f"Which colour?\nA. red\nB. blue\n{MC_SUFFIX}"}
        for i, image in enumerate(IMAGES[:2])])
    (folder / "mc_answers.json").write_text(json.dumps({"m0": {"answer": "A"}, "m1": {"answer": 1}}))
    _write_jsonl(folder / "caption_questions.jsonl", [
        {"question_id": f"c{i}", "image": image, "text": "Describe the image briefly."}
        for i, image in enumerate(IMAGES[:2])])
    (folder / "caption_references.json").write_text(json.dumps({
        "c0": ["a red box on a grey background", "a red square"],
        "c1": ["two boxes", "a blue and a red box"]}))
    suite = {
        "defaults": {"conv_mode": "llava_v1", "max_new_tokens": 6, "image_folder": str(image_folder)},
        "tasks": [
            {"name": "refcoco", "type": "rec", "question_file": "rec.jsonl", "splits": ["val", "testA"]},
            {"name": "vqav2", "type": "vqa", "question_file": "vqa_questions.jsonl",
             "annotation_file": "vqa_annotations.jsonl"},
            {"name": "sqa", "type": "mc", "question_file": "mc_questions.jsonl",
             "annotation_file": "mc_answers.json"},
            {"name": "coco_caption", "type": "caption", "question_file": "caption_questions.jsonl",
             "annotation_file": "caption_references.json", "max_new_tokens": 4},
        ],
    }
    path = folder / "suite.json"
    path.write_text(json.dumps(suite))
    return path


def _never_load(*args, **kwargs):
    raise AssertionError("a model was loaded")


@pytest.fixture(scope="module")
def suite_files(golden_dir, tmp_path_factory) -> dict:
    """The tiny suite's files (no model run); `checkpoint` is the golden tiny LLaVA."""
    folder, images = tmp_path_factory.mktemp("suite"), golden_dir / "fixtures-437" / "images"
    suite_path = _write_suite_files(folder, images)
    return {"folder": folder, "suite": suite_path, "checkpoint": str(golden_dir / "llava-v1.5-tiny"),
            "images": images}


@pytest.fixture(scope="module")
def suite_run(suite_files):
    """`patch-align eval` over two names of the tiny checkpoint; a REC answer pre-seeded for 'base'."""
    folder, suite_path, checkpoint = suite_files["folder"], suite_files["suite"], suite_files["checkpoint"]
    out = folder / "out"
    rec_questions = _read_jsonl(folder / "rec.jsonl")
    first = rec_questions[0]
    exact_box = box_to_padded_normalized(first["bbox"], first["width"], first["height"], box_format="xyxy")
    seeded = {"question_id": first["question_id"], "prompt": first["text"], "text": format_box(exact_box),
              "answer_id": "seeded", "model_id": "seeded", "metadata": {}}
    (out / "base" / "refcoco").mkdir(parents=True)
    _write_jsonl(out / "base" / "refcoco" / "answers.jsonl", [seeded])
    with pytest.MonkeyPatch.context() as patch:
        # The PTB tokenizer and METEOR start a JVM per call: seconds each. The Java path has its own tests.
        patch.setattr("llava.eval.caption_metrics.java_available", lambda: False)
        code = patch_align_main(["eval", "--suite", str(suite_path), "--model-path", f"base={checkpoint}",
                                 "--model-path", f"again={checkpoint}", "--out", str(out),
                                 "--batch-size", "2", "--device", "cpu", "--no-progress"])
    assert code == 0
    return {"folder": folder, "suite": suite_path, "out": out, "checkpoint": checkpoint, "seeded": seeded,
            "results": json.loads((out / "results.json").read_text())}


@pytest.mark.slow  # runs the tiny checkpoint over 4 tasks twice: ~10-20 s on 2 busy cores
def test_every_checkpoint_answers_every_question_of_every_task(suite_run):
    results, out = suite_run["results"], suite_run["out"]
    assert list(results["checkpoints"]) == ["base", "again"]
    expected_counts = {"refcoco": 3, "vqav2": 3, "sqa": 2, "coco_caption": 2}
    assert {t["name"]: t["questions"] for t in results["tasks"]} == expected_counts
    for name in ("base", "again"):
        for task, count in expected_counts.items():
            answers = _read_jsonl(out / name / task / "answers.jsonl")
            assert len(answers) == count
            assert set(answers[0]) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}


@pytest.mark.slow  # runs the tiny checkpoint over 4 tasks twice: ~10-20 s on 2 busy cores
def test_metrics_equal_the_scorers_called_directly_on_the_answer_files(suite_run):
    folder, out, results = suite_run["folder"], suite_run["out"], suite_run["results"]
    for name in ("base", "again"):
        tasks = results["checkpoints"][name]["tasks"]
        rec_answers = load_answer_texts(out / name / "refcoco" / "answers.jsonl")
        rec_questions = _read_jsonl(folder / "rec.jsonl")
        rec = score_rec(rec_questions, rec_answers)
        rec["centre_in_box"] = rec_centre_in_box(rec_questions, rec_answers)
        assert tasks["refcoco"]["scores"] == json.loads(json.dumps(rec))
        assert tasks["refcoco"]["metrics"] == {"acc@0.5": rec["overall"]["accuracy"],
                                               "acc@0.5 testA": rec["splits"]["testA"]["accuracy"],
                                               "acc@0.5 val": rec["splits"]["val"]["accuracy"],
                                               "centre_in_box": rec["centre_in_box"]["rate"]}
        for task, metric, annotation, key in (("vqav2", "vqa", "vqa_annotations.jsonl", "vqa_acc"),
                                              ("sqa", "option", "mc_answers.json", "option_acc")):
            truth = load_ground_truth(folder / annotation, metric)
            direct = score_answers(truth, load_answer_texts(out / name / task / "answers.jsonl"), metric)
            assert tasks[task]["scores"] == direct
            assert tasks[task]["metrics"] == {key: direct["accuracy"]}
        assert json.loads((out / name / "sqa" / "scores.json").read_text()) == tasks["sqa"]["scores"]


@pytest.mark.slow  # runs the tiny checkpoint over 4 tasks twice: ~10-20 s on 2 busy cores
def test_caption_metrics_equal_score_captions_on_the_answer_file(suite_run, monkeypatch):
    from llava.eval.caption_metrics import score_captions

    monkeypatch.setattr("llava.eval.caption_metrics.java_available", lambda: False)
    references = json.loads((suite_run["folder"] / "caption_references.json").read_text())
    for name in ("base", "again"):
        answers = load_answer_texts(suite_run["out"] / name / "coco_caption" / "answers.jsonl")
        direct = score_captions(references, answers)
        entry = suite_run["results"]["checkpoints"][name]["tasks"]["coco_caption"]
        assert entry["scores"] == direct
        assert entry["metrics"] == {key: direct[key] for key in ("CIDEr", "Bleu_4", "ROUGE_L")}


@pytest.mark.slow  # runs the tiny checkpoint over 4 tasks twice: ~10-20 s on 2 busy cores
def test_a_pre_answered_question_is_kept_and_only_the_rest_generated(suite_run):
    results, out = suite_run["results"], suite_run["out"]
    base_rec = results["checkpoints"]["base"]["tasks"]["refcoco"]
    assert _read_jsonl(out / "base" / "refcoco" / "answers.jsonl")[0] == suite_run["seeded"]
    assert (base_rec["timing"]["generated"], base_rec["timing"]["resumed"]) == (2, 1)
    assert results["checkpoints"]["again"]["tasks"]["refcoco"]["timing"]["resumed"] == 0
    # The seeded answer is the exact box: it scores, whatever the untrained model says elsewhere.
    assert base_rec["scores"]["splits"]["val"]["correct"] >= 1
    timing = results["checkpoints"]["again"]["tasks"]["vqav2"]["timing"]
    assert timing["questions_per_s"] == pytest.approx(3 / timing["generation_s"])


@pytest.mark.slow  # runs the tiny checkpoint over 4 tasks twice: ~10-20 s on 2 busy cores
def test_results_markdown_has_a_row_per_checkpoint_and_a_column_per_task_metric(suite_run):
    table = (suite_run["out"] / "results.md").read_text()
    assert table == results_markdown(suite_run["results"])
    header = next(line for line in table.splitlines() if line.startswith("| checkpoint | refcoco"))
    assert header == ("| checkpoint | refcoco: acc@0.5 | refcoco: acc@0.5 testA | refcoco: acc@0.5 val | "
                      "refcoco: centre_in_box | vqav2: vqa_acc | sqa: option_acc | coco_caption: CIDEr | "
                      "coco_caption: Bleu_4 | coco_caption: ROUGE_L |")
    base_vqa = suite_run["results"]["checkpoints"]["base"]["tasks"]["vqav2"]["metrics"]["vqa_acc"]
    base_row = next(line for line in table.splitlines() if line.startswith("| base |")).split(" | ")
    assert base_row[5] == f"{100 * base_vqa:.1f}"


@pytest.mark.slow  # runs the tiny checkpoint over 4 tasks twice: ~10-20 s on 2 busy cores
def test_results_png_is_a_wide_rgb_chart(suite_run):
    with Image.open(suite_run["out"] / "results.png") as image:
        width, height = image.size
    assert width > height >= 400


@pytest.mark.slow  # runs the tiny checkpoint over 4 tasks twice: ~10-20 s on 2 busy cores
def test_rerun_of_a_finished_suite_loads_no_model_and_scores_the_same(suite_run, monkeypatch):
    monkeypatch.setattr(runner, "_load_checkpoint", _never_load)
    monkeypatch.setattr("llava.eval.caption_metrics.java_available", lambda: False)
    checkpoints = [Checkpoint("base", suite_run["checkpoint"]), Checkpoint("again", suite_run["checkpoint"])]
    again = run_suite(load_suite(suite_run["suite"]), checkpoints, suite_run["out"], progress=False)
    for name, entry in again["checkpoints"].items():
        for task, result in entry["tasks"].items():
            assert result["timing"]["generated"] == 0
            assert result["metrics"] == suite_run["results"]["checkpoints"][name]["tasks"][task]["metrics"]


def test_a_missing_task_file_fails_before_any_model_loads_naming_task_and_file(
    suite_files, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(runner, "_load_checkpoint", _never_load)
    suite = json.loads(suite_files["suite"].read_text())
    suite["tasks"][1]["annotation_file"] = str(tmp_path / "absent.jsonl")
    suite_path = tmp_path / "broken.json"
    rec_file = json.dumps(str(suite_files["folder"] / "rec.jsonl"))
    suite_path.write_text(json.dumps(suite).replace('"rec.jsonl"', rec_file))
    code = patch_align_main(["eval", "--suite", str(suite_path), "--model-path", suite_files["checkpoint"],
                             "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 2
    error = capsys.readouterr().err
    assert f"task 'vqav2': annotation_file file not found: {tmp_path / 'absent.jsonl'}" in error
    assert "task 'sqa'" in error  # its relative paths now point into tmp_path, where nothing is
    assert not (tmp_path / "out").exists()


def _eval_exit(suite: Path, checkpoint: str, out: Path, capsys) -> tuple[int, str]:
    """`patch-align eval` on one checkpoint → (exit code, stderr)."""
    code = patch_align_main(["eval", "--suite", str(suite), "--model-path", checkpoint, "--out", str(out),
                             "--device", "cpu", "--no-progress"])
    return code, capsys.readouterr().err


def _bad_truth_task(case: str, folder: Path, tmp_path: Path) -> tuple[dict, str]:
    """(suite task, expected error) of one task whose ground truth is wrong in one record."""
    if case == "vqa answers as a string":
        _write_jsonl(tmp_path / "ann.jsonl", [{"question_id": 0, "answers": HUMAN_ANSWERS},
                                              {"question_id": 1, "answers": "red"},
                                              {"question_id": 2, "answers": HUMAN_ANSWERS}])
        return ({"name": "v", "type": "vqa", "question_file": str(folder / "vqa_questions.jsonl"),
                 "annotation_file": "ann.jsonl"},
                r"ann\.jsonl: line 2: question 1: 'answers' must be a list of human answers, got str 'red'")
    if case == "mc answer not a letter":
        (tmp_path / "mc.json").write_text(json.dumps({"m0": {"answer": "A"}, "m1": {"answer": 7.5}}))
        return ({"name": "m", "type": "mc", "question_file": str(folder / "mc_questions.jsonl"),
                 "annotation_file": "mc.json"},
                r"mc\.json: key 'm1': question m1: 'answer': option answer must be a letter or an index")
    if case == "caption references as a string":
        (tmp_path / "refs.json").write_text(json.dumps({"c0": "a red box", "c1": ["two boxes"]}))
        return ({"name": "c", "type": "caption", "question_file": str(folder / "caption_questions.jsonl"),
                 "annotation_file": "refs.json"},
                r"refs\.json: references of id 'c0' must be a non-empty list of strings, got 'a red box'")
    questions = _read_jsonl(folder / "rec.jsonl")
    questions[1]["bbox"] = [30, 20, 10, 5]
    _write_jsonl(tmp_path / "rec.jsonl", questions)
    return ({"name": "r", "type": "rec", "question_file": "rec.jsonl"},
            r"rec\.jsonl: REC question 101: 'bbox' has x2 < x1 or y2 < y1")


@pytest.mark.parametrize("case", ["vqa answers as a string", "mc answer not a letter",
                                  "caption references as a string", "rec box corners swapped"])
def test_bad_ground_truth_fails_before_any_model_loads_naming_file_record_and_field(
    suite_files, tmp_path, monkeypatch, capsys, case
):
    monkeypatch.setattr(runner, "_load_checkpoint", _never_load)
    task, message = _bad_truth_task(case, suite_files["folder"], tmp_path)
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({"defaults": {"image_folder": str(suite_files["images"])}, "tasks": [task]}))
    code, error = _eval_exit(suite, suite_files["checkpoint"], tmp_path / "out", capsys)
    assert code == 2
    assert re.search(rf"patch-align eval: error: task '{task['name']}': .*{message}", error), error
    assert not (tmp_path / "out").exists()


def test_missing_images_fail_before_any_model_loads_counted_and_named_by_question(
    suite_files, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(runner, "_load_checkpoint", _never_load)
    _write_jsonl(tmp_path / "q.jsonl", [
        {"question_id": 0, "image": "img000.png", "text": "?"},
        {"question_id": 1, "image": "absent.png", "text": "?"},
        {"question_id": 2, "text": "text only"},
        {"question_id": 3, "image": ["img001.png"], "text": "?"}])
    _write_jsonl(tmp_path / "a.jsonl", [{"question_id": i, "answer": "red"} for i in range(4)])
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({"tasks": [{"name": "g", "type": "gqa", "question_file": "q.jsonl",
                                            "annotation_file": "a.jsonl",
                                            "image_folder": str(suite_files["images"])}]}))
    code, error = _eval_exit(suite, suite_files["checkpoint"], tmp_path / "out", capsys)
    assert code == 2
    assert f"task 'g': {tmp_path / 'q.jsonl'}: 2 of 4 questions have no readable image file:" in error
    assert f"question 1: image not found: {suite_files['images'] / 'absent.png'}" in error
    assert "question 3: 'image' must be a path string, got ['img001.png']" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("files", "message"), [
    ({"README.md": "notes"}, r"is not a LLaVA checkpoint: expected model weights"),
    ({"model.safetensors": ""}, r"config\.json is missing"),
    ({"model.safetensors": "", "config.json": "{not json"}, r"config\.json is not valid JSON"),
])
def test_a_folder_that_holds_no_checkpoint_fails_before_any_model_loads(
    suite_files, tmp_path, monkeypatch, capsys, files, message
):
    monkeypatch.setattr(runner, "_load_checkpoint", _never_load)
    folder = tmp_path / "not_a_checkpoint"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    code, error = _eval_exit(suite_files["suite"], str(folder), tmp_path / "out", capsys)
    assert code == 2
    assert re.search(rf"error: checkpoint 'not_a_checkpoint': .*{message}", error), error
    assert not (tmp_path / "out").exists()


def test_a_caption_task_without_pycocoevalcap_fails_when_prepared_saying_how_to_install(
    suite_files, monkeypatch
):
    monkeypatch.delitem(sys.modules, "llava.eval.caption_metrics", raising=False)
    monkeypatch.setitem(sys.modules, "pycocoevalcap.bleu.bleu", None)  # what an absent package does
    task = next(t for t in load_suite(suite_files["suite"]).tasks if t.type == "caption")
    with pytest.raises(SuiteError, match=r"task 'coco_caption': caption metrics need pycocoevalcap: "
                                         r"pip install 'patch-align\[eval\]'"):
        prepare_task(task)


def test_a_suite_run_from_another_directory_reads_its_files_from_the_suite_folder(
    suite_files, tmp_path, monkeypatch
):
    """Relative paths in the suite (question, annotation and image folder alike) resolve against the
    suite file's folder; the working directory and how the suite path is spelled do not matter."""
    monkeypatch.setattr(runner, "_load_checkpoint", _never_load)
    suite_folder, elsewhere = tmp_path / "suites" / "tiny", tmp_path / "elsewhere"
    (suite_folder / "images").mkdir(parents=True)
    elsewhere.mkdir()
    (suite_folder / "images" / "a.png").write_bytes((suite_files["images"] / "img000.png").read_bytes())
    _write_jsonl(suite_folder / "q.jsonl", [{"question_id": 0, "image": "a.png", "text": "Colour?"}])
    _write_jsonl(suite_folder / "truth.jsonl", [{"question_id": 0, "answer": "red"}])
    (suite_folder / "suite.yaml").write_text(
        "tasks:\n  - {name: g, type: gqa, question_file: q.jsonl, annotation_file: truth.jsonl,"
        " image_folder: images}\n")
    out = elsewhere / "out"
    # Every question answered already, so the checkpoint is never loaded.
    (out / "base" / "g").mkdir(parents=True)
    _write_jsonl(out / "base" / "g" / "answers.jsonl", [{"question_id": 0, "prompt": "Colour?", "text": "Red",
                                                         "answer_id": "x", "model_id": "seeded",
                                                         "metadata": {}}])
    monkeypatch.chdir(elsewhere)
    task = load_suite("../suites/tiny/suite.yaml").tasks[0]
    paths = (task.question_file, task.annotation_file, task.image_folder)
    assert all(path.is_absolute() for path in paths)  # still right if the working directory changes later
    assert [path.resolve() for path in paths] == [suite_folder / "q.jsonl", suite_folder / "truth.jsonl",
                                                  suite_folder / "images"]
    code = patch_align_main(["eval", "--suite", "../suites/tiny/suite.yaml", "--model-path",
                             f"base={suite_files['checkpoint']}", "--out", "out", "--no-progress"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["checkpoints"]["base"]["tasks"]["g"]["metrics"] == {"exact_match": 1.0}


def test_eval_help_states_that_suite_paths_resolve_against_the_suite_folder(capsys):
    with pytest.raises(SystemExit) as exit_info:
        patch_align_main(["eval", "--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "relative paths in it are resolved against the suite file's folder, not the working directory" \
        in help_text


def test_a_question_without_ground_truth_names_the_annotation_file(suite_files, tmp_path):
    annotation = _write_jsonl(tmp_path / "short.jsonl", [{"question_id": 0, "answers": HUMAN_ANSWERS}])
    suite = json.loads(suite_files["suite"].read_text())
    suite["tasks"] = [dict(suite["tasks"][1], annotation_file=str(annotation),
                           question_file=str(suite_files["folder"] / "vqa_questions.jsonl"))]
    (tmp_path / "s.json").write_text(json.dumps(suite))
    message = r"task 'vqav2': .*short\.jsonl has no ground truth for 2 question\(s\)"
    with pytest.raises(SuiteError, match=message):
        prepare_task(load_suite(tmp_path / "s.json").tasks[0])


def test_splits_and_limit_select_questions_in_file_order(suite_files, tmp_path):
    suite = {"tasks": [{"name": "r", "type": "rec", "question_file": str(suite_files["folder"] / "rec.jsonl"),
                        "image_folder": str(suite_files["images"]), "splits": ["val"]}]}
    (tmp_path / "s.yaml").write_text(json.dumps(suite))  # JSON is valid YAML
    task = load_suite(tmp_path / "s.yaml").tasks[0]
    assert [q["question_id"] for q in prepare_task(task).questions] == [100, 101]
    assert [q["question_id"] for q in prepare_task(task, limit=1).questions] == [100]


@pytest.mark.parametrize(("task", "message"), [
    ({"name": "x", "type": "vqa"}, r"task 'x': type 'vqa' needs 'annotation_file'"),
    ({"name": "x", "type": "ocr"}, r"task 'x': 'type' must be one of"),
    ({"name": "x", "type": "rec", "answer_file": "a"}, r"unknown key\(s\) \['answer_file'\]"),
    ({"name": "x/y", "type": "rec"}, r"task #1: 'name' must be a folder-safe"),
    ({"name": "x", "type": "rec", "max_new_tokens": 0}, r"'max_new_tokens' must be"),
    ({"name": "x", "type": "rec", "splits": "val"}, r"'splits' must be a non-empty list"),
])
def test_bad_task_entries_are_errors_naming_the_task(tmp_path, task, message):
    (tmp_path / "s.json").write_text(json.dumps({"tasks": [{"question_file": "q.jsonl", **task}]}))
    with pytest.raises(SuiteError, match=message):
        load_suite(tmp_path / "s.json")


def test_duplicate_task_names_and_bad_suite_files_are_errors(tmp_path):
    task = {"name": "x", "type": "rec", "question_file": "q.jsonl"}
    (tmp_path / "dup.json").write_text(json.dumps({"tasks": [task, task]}))
    with pytest.raises(SuiteError, match="task name 'x' is used twice"):
        load_suite(tmp_path / "dup.json")
    (tmp_path / "bad.yaml").write_text("tasks: [unclosed")
    with pytest.raises(SuiteError, match=r"bad\.yaml: not valid YAML"):
        load_suite(tmp_path / "bad.yaml")
    with pytest.raises(SuiteError, match=r"expected a \.yaml, \.yml or \.json file"):
        load_suite(tmp_path / "suite.txt")


def test_relative_paths_are_taken_from_the_suite_folder(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "defaults: {image_folder: imgs}\n"
        "tasks:\n  - {name: g, type: gqa, question_file: q.jsonl, annotation_file: a.json}\n")
    task = load_suite(tmp_path / "s.yaml").tasks[0]
    assert (task.question_file, task.annotation_file, task.image_folder) == (
        tmp_path / "q.jsonl", tmp_path / "a.json", tmp_path / "imgs")
    assert (task.conv_mode, task.max_new_tokens, task.splits) == ("llava_v1", 128, None)


def test_checkpoint_names_come_from_name_equals_path_or_the_folder():
    assert parse_checkpoint("ours=/ckpt/llava-v1.5-7b") == Checkpoint("ours", "/ckpt/llava-v1.5-7b")
    assert parse_checkpoint("/ckpt/llava-v1.5-7b/") == Checkpoint("llava-v1.5-7b", "/ckpt/llava-v1.5-7b/")
    assert parse_checkpoint("/runs/a=b/llava") == Checkpoint("llava", "/runs/a=b/llava")


def test_two_checkpoints_with_one_name_are_rejected(tmp_path):
    with pytest.raises(SuiteError, match="both named 'llava'"):
        runner.check_checkpoints([Checkpoint("llava", str(tmp_path)), Checkpoint("llava", str(tmp_path))])


def test_markdown_columns_follow_task_order_and_show_scores_times_100():
    def entry(metrics):
        timing = {"questions": 2, "generated": 2, "resumed": 0, "generation_s": 0.5, "scoring_s": 0.25,
                  "questions_per_s": 4.0}
        return {"metrics": metrics, "failures": 1, "timing": timing}

    results = {"suite": "s.yaml", "limit": None, "tasks": [{"name": "gqa"}, {"name": "cap"}],
               "checkpoints": {"a": {"tasks": {"gqa": entry({"exact_match": 0.5}),
                                               "cap": entry({"CIDEr": 1.234, "Bleu_4": 0.1})}}}}
    assert metric_columns(results) == [("gqa", "exact_match"), ("cap", "CIDEr"), ("cap", "Bleu_4")]
    table = results_markdown(results)
    assert "| a | 50.0 | 123.4 | 10.0 |" in table
    assert "| a | gqa | 2 | 2 | 0 | 0.50 | 4.00 | 0.25 | 1 |" in table


def test_vizwiz_questions_are_keyed_by_image_and_carry_the_unanswerable_prompt():
    questions, answers = prepare.vizwiz_files(
        [{"image": "VizWiz_val_00000001.jpg", "question": "What is this?",
          "answers": [{"answer": "soup", "answer_confidence": "yes"}, {"answer": "unanswerable"}]}],
        "val.json")
    assert questions == [{"question_id": "VizWiz_val_00000001.jpg", "image": "VizWiz_val_00000001.jpg",
                          "text": f"What is this?\n{prepare.UNANSWERABLE}\n{prepare.SHORT_ANSWER}"}]
    assert answers == [{"question_id": "VizWiz_val_00000001.jpg", "answers": ["soup", "unanswerable"]}]


def test_sqa_keeps_image_questions_only_with_their_answer_index():
    conversations = [
        {"id": "4", "image": "4/image.png",
         "conversations": [{"from": "human",
                            "value": "<image>\nContext: x\nQuestion: y?\nOptions: (A) a (B) b"}]},
        {"id": "5", "conversations": [{"from": "human", "value": "Question: text only?"}]},
    ]
    problems = {"4": {"answer": 1}, "5": {"answer": 0}}
    questions, answers = prepare.sqa_image_files(conversations, problems, "t.json")
    assert questions == [{"question_id": "4", "image": "4/image.png",
                          "text": f"Context: x\nQuestion: y?\nOptions: (A) a (B) b\n{prepare.OPTION_LETTER}"}]
    assert answers == [{"question_id": "4", "answer": 1}]


def test_okvqa_image_names_are_the_coco_file_names():
    questions = prepare.okvqa_questions(
        {"questions": [{"question_id": 2971475, "image_id": 297147, "question": "What sport?"}]},
        "COCO_val2014_", "q.json")
    assert questions == [{"question_id": 2971475, "image": "COCO_val2014_000000297147.jpg",
                          "text": f"What sport?\n{prepare.SHORT_ANSWER}"}]


def test_coco_caption_files_take_one_split_and_key_references_by_image_id():
    karpathy = {"images": [
        {"split": "test", "filepath": "val2014", "filename": "a.jpg", "cocoid": 7,
         "sentences": [{"raw": "A cat. "}, {"raw": "A kitten."}]},
        {"split": "train", "filepath": "train2014", "filename": "b.jpg", "cocoid": 8, "sentences": []},
    ]}
    questions, references = prepare.coco_caption_files(karpathy, "test", "k.json")
    assert questions == [{"question_id": 7, "image": "val2014/a.jpg", "text": prepare.SHORT_CAPTION}]
    assert references == {"7": ["A cat.", "A kitten."]}
    with pytest.raises(ValueError, match="k.json: no image of split 'val'"):
        prepare.coco_caption_files(karpathy, "val", "k.json")


def test_a_converter_input_record_without_a_needed_key_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"val\.json: record 0: record lacks \['answers'\]"):
        prepare.vizwiz_files([{"image": "a.jpg", "question": "q"}], "val.json")


def test_score_captions_command_writes_what_score_captions_returns(tmp_path, monkeypatch, capsys):
    from llava.eval.caption_metrics import score_captions

    monkeypatch.setattr("llava.eval.caption_metrics.java_available", lambda: False)
    (tmp_path / "refs.json").write_text(json.dumps({"7": ["a cat on a mat", "a small cat"]}))
    _write_jsonl(tmp_path / "answers.jsonl", [{"question_id": 7, "text": "a cat on the mat"}])
    code = prepare.main(["score-captions", "--references", str(tmp_path / "refs.json"),
                         "--result-file", str(tmp_path / "answers.jsonl"), "--out", str(tmp_path / "s.json")])
    assert code == 0
    expected = score_captions({"7": ["a cat on a mat", "a small cat"]}, {"7": "a cat on the mat"})
    assert json.loads((tmp_path / "s.json").read_text()) == expected
    assert json.loads(capsys.readouterr().out) == expected


def test_an_out_that_is_a_file_is_a_usage_error_before_any_model_loads(suite_files, tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.setattr(runner, "_load_checkpoint", _never_load)
    out = tmp_path / "results.txt"
    out.write_text("not a folder")
    code, error = _eval_exit(suite_files["suite"], suite_files["checkpoint"], out, capsys)
    assert code == 2
    assert f"patch-align eval: error: --out {out} exists and is not a folder" in error
