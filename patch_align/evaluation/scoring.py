"""Read a task's questions and ground truth up front, and score its answers file with llava.eval's scorers.

Everything that can be wrong with a task's files is found by `prepare_task`, before any model
is loaded. Scores are exactly what the scorers return; `headline_metrics` picks the numbers
shown in the results table (fractions, or CIDEr as pycocoevalcap reports it).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llava.eval.eval_vqa import load_answer_texts, load_ground_truth
from llava.eval.model_vqa_loader import check_question_images, read_questions
from llava.eval.rec import check_rec_question, padded_normalized_to_pixels, parse_box, score_rec
from llava.eval.vqa_metrics import score_answers
from patch_align.evaluation.suite import SuiteError, TaskSpec

logger = logging.getLogger(__name__)

# task type -> llava.eval.vqa_metrics metric name
VQA_METRIC_OF_TYPE = {"vqa": "vqa", "gqa": "exact", "mc": "option"}
# task type -> name of its one accuracy in the table
ACCURACY_NAME = {"vqa": "vqa_acc", "gqa": "exact_match", "mc": "option_acc"}
REC_IOU_THRESHOLD = 0.5
CAPTION_METRICS = ("CIDEr", "Bleu_4", "METEOR", "ROUGE_L")


@dataclass(frozen=True)
class PreparedTask:
    """A task's questions (split-filtered, limited) and its ground truth restricted to them.

    `truth`: question id (str) → human answers / answer / option (vqa, gqa, mc) or reference
    captions (caption); None for rec, whose ground truth is in the question records.
    """

    spec: TaskSpec
    questions: list[dict[str, Any]]
    truth: dict[str, Any] | None


def _select_questions(spec: TaskSpec, limit: int | None) -> list[dict[str, Any]]:
    questions = read_questions(spec.question_file)
    if spec.splits is not None:
        for question in questions:
            if "split" not in question:
                raise SuiteError(f"task {spec.name!r}: {spec.question_file}: question "
                                 f"{question['question_id']!r} has no 'split' but the task selects splits")
        questions = [q for q in questions if q["split"] in spec.splits]
    if limit is not None:
        questions = questions[:limit]
    if not questions:
        chosen = f" of splits {list(spec.splits)}" if spec.splits else ""
        raise SuiteError(f"task {spec.name!r}: {spec.question_file} has no questions{chosen}")
    return questions


def _check_rec_questions(spec: TaskSpec, questions: list[dict[str, Any]]) -> None:
    for question in questions:
        try:
            check_rec_question(question)
        except ValueError as error:
            raise SuiteError(f"task {spec.name!r}: {spec.question_file}: {error} "
                             "(make REC questions with llava.eval.convert_refcoco)") from error


def _load_truth(spec: TaskSpec) -> dict[str, Any]:
    if spec.type == "caption":
        try:
            # Imported here: pycocoevalcap is an optional extra, needed only by caption tasks; a caption
            # task without it must fail now, not after every answer has been generated.
            from llava.eval.caption_metrics import read_references
        except ImportError as error:
            raise SuiteError(f"task {spec.name!r}: {error}") from error
        return read_references(spec.annotation_file)
    return load_ground_truth(spec.annotation_file, VQA_METRIC_OF_TYPE[spec.type])


def prepare_task(spec: TaskSpec, limit: int | None = None) -> PreparedTask:
    """Read and check a task's files; `limit` keeps its first N questions. Errors are `SuiteError`s."""
    try:
        questions = _select_questions(spec, limit)
        try:
            check_question_images(questions, spec.image_folder)
        except ValueError as error:
            raise SuiteError(f"task {spec.name!r}: {spec.question_file}: {error}") from error
        if spec.type == "rec":
            _check_rec_questions(spec, questions)
            return PreparedTask(spec, questions, None)
        truth = _load_truth(spec)
    except SuiteError:
        raise
    except (ValueError, TypeError, KeyError, OSError) as error:
        raise SuiteError(f"task {spec.name!r}: {error}") from error
    asked = [str(q["question_id"]) for q in questions]
    without_truth = [qid for qid in asked if qid not in truth]
    if without_truth:
        raise SuiteError(f"task {spec.name!r}: {spec.annotation_file} has no ground truth for "
                         f"{len(without_truth)} question(s) of {spec.question_file}, "
                         f"e.g. question_id {without_truth[0]!r}")
    return PreparedTask(spec, questions, {qid: truth[qid] for qid in asked})


def _answers_to_asked(task: PreparedTask, answers_file: Path) -> dict[str, str]:
    """Answers of the asked questions; answers to others (a former run without --limit) are left out."""
    answers = load_answer_texts(answers_file)
    asked = {str(q["question_id"]) for q in task.questions}
    extra = len(set(answers) - asked)
    if extra:
        logger.info("task %s: %d answers in %s are for questions not asked this run; not scored",
                    task.spec.name, extra, answers_file)
    return {qid: text for qid, text in answers.items() if qid in asked}


def rec_centre_in_box(questions: list[dict[str, Any]], answers: dict[str, str]) -> dict[str, Any]:
    """How many answers put the centre of their box inside the true box (pixels, edges inside).

    A coarser hit than IoU ≥ 0.5 that still moves when boxes are about one patch off; a missing or
    unparsable answer is a miss. Returns `{"total", "hits", "rate"}` (rate over all questions)."""
    hits = 0
    for question in questions:
        box = parse_box(answers.get(str(question["question_id"]), ""))
        if box is None:
            continue
        x1, y1, x2, y2 = padded_normalized_to_pixels(box, question["width"], question["height"])
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        bx1, by1, bx2, by2 = question["bbox"]
        hits += bx1 <= cx <= bx2 and by1 <= cy <= by2
    return {"total": len(questions), "hits": hits, "rate": hits / len(questions) if questions else 0.0}


def score_task(task: PreparedTask, answers_file: str | Path) -> dict[str, Any]:
    """The full scorer output for the task's questions answered in `answers_file`."""
    return score_task_answers(task, _answers_to_asked(task, Path(answers_file)))


def score_task_answers(task: PreparedTask, answers: dict[str, str]) -> dict[str, Any]:
    """The full scorer output for `answers` (question id → text) to the task's questions;
    rec adds `centre_in_box` (`rec_centre_in_box`) to `score_rec`'s output."""
    if task.spec.type == "rec":
        scores = score_rec(task.questions, answers, REC_IOU_THRESHOLD)
        return {**scores, "centre_in_box": rec_centre_in_box(task.questions, answers)}
    if task.spec.type == "caption":
        # Imported here: pycocoevalcap is an optional extra, needed only by caption tasks.
        from llava.eval.caption_metrics import score_captions

        return score_captions(task.truth, answers)
    return score_answers(task.truth, answers, VQA_METRIC_OF_TYPE[task.spec.type])


def headline_metrics(task_type: str, scores: dict[str, Any]) -> dict[str, float]:
    """Table numbers of one scored task, the first being the one charted.

    rec: `acc@0.5` overall, then `acc@0.5 <split>` per split when there are several, then
    `centre_in_box`;
    vqa/gqa/mc: their accuracy; caption: CIDEr, Bleu_4, METEOR (when Java ran it), ROUGE_L.
    """
    if task_type == "rec":
        name = f"acc@{REC_IOU_THRESHOLD:g}"
        metrics = {name: scores["overall"]["accuracy"]}
        if len(scores["splits"]) > 1:
            for split, tally in scores["splits"].items():
                metrics[f"{name} {split}"] = tally["accuracy"]
        if "centre_in_box" in scores:  # absent from scores.json files written before it existed
            metrics["centre_in_box"] = scores["centre_in_box"]["rate"]
        return metrics
    if task_type == "caption":
        return {key: scores[key] for key in CAPTION_METRICS if key in scores}
    return {ACCURACY_NAME[task_type]: scores["accuracy"]}


def failure_count(task_type: str, scores: dict[str, Any]) -> int:
    """Answers that could not be read as an answer (REC boxes, option letters); 0 for other types."""
    if task_type == "rec":
        return len(scores["parse_failures"])
    return len(scores.get("unparsed", []))
