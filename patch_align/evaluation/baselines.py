"""Blind baselines: what a model scores on a task without looking at the image (docs/evaluation.md).

Each baseline is fit on training conversations and answers the held-out questions; the answers
are then scored by the task's own scorer, so a baseline and a checkpoint are measured alike:

- REC: one constant box for every question, the train box that most train boxes overlap at
  IoU ≥ 0.5 (``constant_box``);
- VQA / GQA / multiple choice: the majority train answer of the question's template
  (``majority_answers``);
- captions: the same rule over the caption prompt, i.e. the most common train caption.

``at_or_below`` decides whether a score fails to beat its baseline (the reports mark such rows).
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.eval.rec import format_box, parse_box

BASELINE_MARK = "≤ baseline"
_SPACES = re.compile(r"\s+")
_WORD = re.compile(r"[A-Za-z0-9']+")


def qa_pairs(records: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(question, answer) of every human turn followed by a gpt turn in LLaVA conversation records.

    ``<image>`` is removed from questions (where it sits is a training-time augmentation)."""
    pairs = []
    for record in records:
        turns = record["conversations"]
        for asked, answered in zip(turns, turns[1:], strict=False):
            if asked["from"] == "human" and answered["from"] == "gpt":
                pairs.append((asked["value"].replace(DEFAULT_IMAGE_TOKEN, ""), answered["value"]))
    return pairs


def question_template(text: str, slot_words: Iterable[str] = ()) -> str:
    """The template of a question: ``<image>`` removed, lower case, whitespace collapsed, and every
    word in ``slot_words`` (e.g. a world's colours and shapes) replaced by ``_``.

    Without slot words the template is the question itself, the finest key a blind model can use."""
    slots = {w.lower() for w in slot_words}
    text = _SPACES.sub(" ", text.replace(DEFAULT_IMAGE_TOKEN, " ").lower()).strip()
    return _WORD.sub(lambda m: "_" if m.group() in slots else m.group(), text) if slots else text


@dataclass(frozen=True)
class MajorityBaseline:
    """answers: question id (str) → the baseline's answer; table: template → majority train answer;
    fallback: the answer of templates unseen in train (most common over the pairs used);
    unseen: eval questions whose template is not in train; train_pairs_used: train pairs whose
    template is an eval template (the others are other tasks' and were ignored)."""

    answers: dict[str, str]
    table: dict[str, str]
    fallback: str
    unseen: int
    train_pairs_used: int


def majority_answers(
    train_pairs: Sequence[tuple[str, str]],
    questions: Sequence[Mapping[str, Any]],
    slot_words: Iterable[str] = (),
) -> MajorityBaseline:
    """The blind answer of each question: the most common train answer of its template.

    Only train pairs whose template is one of the questions' templates are used; ties go to the
    answer seen first in train. ValueError when no train pair shares a template with the questions.
    """
    slots = tuple(slot_words)
    templates = {str(q["question_id"]): question_template(q["text"], slots) for q in questions}
    wanted = set(templates.values())
    counts: dict[str, Counter[str]] = {}
    overall: Counter[str] = Counter()
    for question, answer in train_pairs:
        template = question_template(question, slots)
        if template in wanted:
            counts.setdefault(template, Counter())[answer.strip()] += 1
            overall[answer.strip()] += 1
    if not overall:
        example = next(iter(wanted), "")
        raise ValueError(f"no train question has the template of an eval question (e.g. {example!r})")
    table = {template: counter.most_common(1)[0][0] for template, counter in counts.items()}
    fallback = overall.most_common(1)[0][0]
    answers = {qid: table.get(template, fallback) for qid, template in templates.items()}
    unseen = sum(template not in table for template in templates.values())
    return MajorityBaseline(answers, table, fallback, unseen, sum(overall.values()))


def box_hit_counts(candidates: np.ndarray, boxes: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(C,) how many of ``boxes`` (M, 4) each candidate (C, 4) overlaps at IoU ≥ ``threshold``; xyxy."""
    hits = np.zeros(len(candidates), dtype=np.int64)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for start in range(0, len(candidates), 256):  # (256, M) IoUs at a time
        c = candidates[start:start + 256, None, :]
        inter = (np.clip(np.minimum(c[..., 2], boxes[:, 2]) - np.maximum(c[..., 0], boxes[:, 0]), 0, None)
                 * np.clip(np.minimum(c[..., 3], boxes[:, 3]) - np.maximum(c[..., 1], boxes[:, 1]), 0, None))
        union = (c[..., 2] - c[..., 0]) * (c[..., 3] - c[..., 1]) + area - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        hits[start:start + 256] = (iou >= threshold).sum(axis=1)
    return hits


@dataclass(frozen=True)
class ConstantBox:
    """box: normalised xyxy (LLaVA's padded square); train_hit_rate: its share of train boxes at
    IoU ≥ threshold; candidates / train_boxes: how many were tried / fit on."""

    box: list[float]
    train_hit_rate: float
    candidates: int
    train_boxes: int


def constant_box(
    train_answers: Iterable[str], threshold: float = 0.5, max_candidates: int = 4000, seed: int = 0
) -> ConstantBox:
    """The best constant REC answer: among the distinct train boxes (answers that parse as a box;
    others are ignored), the one overlapping most train boxes at IoU ≥ ``threshold``; ties go to the
    first in train order.

    An approximation of the true maximiser (any box may be best; ours are the train boxes), fit in
    the padded-square coordinates the answers use (IoU there equals IoU in pixels, but the scorer
    clips a box to each image, so the held-out score is what ``score_rec`` gives, not this fit).
    More than ``max_candidates`` distinct boxes: a seeded random subset of them is tried."""
    parsed = [box for box in (parse_box(text) for text in train_answers) if box is not None]
    if not parsed:
        raise ValueError("no train answer parses as a box: nothing to fit a constant box on")
    boxes = np.asarray(parsed, dtype=np.float64)
    candidates = np.unique(boxes, axis=0)
    if len(candidates) > max_candidates:
        rows = np.random.default_rng(seed).choice(len(candidates), size=max_candidates, replace=False)
        candidates = candidates[np.sort(rows)]
    hits = box_hit_counts(candidates, boxes, threshold)
    best = int(hits.argmax())
    return ConstantBox([float(v) for v in candidates[best]], float(hits[best]) / len(boxes),
                       len(candidates), len(boxes))


def constant_answers(questions: Iterable[Mapping[str, Any]], box: Sequence[float]) -> dict[str, str]:
    """The same box answer, as LLaVA-1.5 writes it, for every question."""
    text = format_box(box)
    return {str(q["question_id"]): text for q in questions}


def at_or_below(value: float | None, baseline: float | None, higher_is_better: bool = True) -> bool:
    """Whether ``value`` fails to beat ``baseline`` (False when either is unknown)."""
    if value is None or baseline is None:
        return False
    return value <= baseline if higher_is_better else value >= baseline


def task_baseline(task: Any, train_records: Sequence[Mapping[str, Any]], slot_words: Iterable[str] = ()
                  ) -> dict[str, Any]:
    """Fit the blind baseline of a prepared task (`scoring.PreparedTask`) on LLaVA training
    conversations and score it with the task's own scorer.

    Returns `{"method", "metrics"` (the task's headline metrics, as for a checkpoint)`, "fit"}`."""
    from patch_align.evaluation.scoring import headline_metrics, score_task_answers

    pairs = qa_pairs(train_records)
    if task.spec.type == "rec":
        fit = constant_box([answer for _, answer in pairs], threshold=0.5)
        answers = constant_answers(task.questions, fit.box)
        method, details = "constant box (the train box most train boxes overlap at IoU >= 0.5)", {
            "box": fit.box, "train_hit_rate": fit.train_hit_rate, "candidates": fit.candidates,
            "train_boxes": fit.train_boxes}
    else:
        fit = majority_answers(pairs, task.questions, slot_words)
        answers = fit.answers
        what = "train caption" if task.spec.type == "caption" else "train answer"
        method = f"most common {what} per question template"
        details = {"templates": len(fit.table), "unseen_templates": fit.unseen, "fallback": fit.fallback,
                   "train_pairs_used": fit.train_pairs_used, "slot_words": list(slot_words)}
    scores = score_task_answers(task, answers)
    return {"method": method, "metrics": headline_metrics(task.spec.type, scores), "fit": details}
