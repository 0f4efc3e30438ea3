"""What the demo's numbers say, claim by claim, with no sentence the numbers do not support.

Pure functions over the demo's summary (`method → key → {mean, std, n}`) and its baselines
(`key → value` of the blind or chance level of that number). A comparison "A beats B" is
*reproduced* only when A's mean exceeds B's by more than the two standard deviations added
(so with one seed, any positive gap counts, and the report says it is one seed), *reversed* when
B's exceeds A's by as much, and *within spread* otherwise. A downstream comparison whose two
sides both fail to beat their blind baseline is *not testable*: the task is at its floor.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from llava.eval.vqa_metrics import exact_match

BINDING_PREFIX = "bind_"


def vqa_by_category(answers: Mapping[str, str],
                    truth: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Exact-match accuracy per question category, and over every binding category (`binding`).

    `answers`: question id (str) → answer text; `truth`: the world's vqa_answers records
    ({question_id, answer, category}). Only answered questions are scored, so a run evaluated
    with `--limit` is scored on the questions it was asked. Returns category → {accuracy, n}.
    """
    totals: dict[str, list[float]] = {}
    for record in truth:
        qid = str(record["question_id"])
        if qid not in answers:
            continue
        score = exact_match(answers[qid], record["answer"])
        totals.setdefault(record["category"], []).append(score)
        if record["category"].startswith(BINDING_PREFIX):
            totals.setdefault("binding", []).append(score)
    return {category: {"accuracy": sum(scores) / len(scores), "n": len(scores)}
            for category, scores in sorted(totals.items())}


@dataclass(frozen=True)
class Comparison:
    """One claim's test: `better` beats `worse` on `key` (a higher number is better)."""

    claim: str
    key: str
    better: str
    worse: str


def compare(summary: Mapping[str, Mapping[str, Mapping[str, Any]]], comparison: Comparison,
            baselines: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The verdict of one comparison: reproduced, reversed, within spread, not testable or not measured.

    Returns {claim, key, better, worse, verdict, gap, spread, better_mean, worse_mean, baseline}.
    """
    baseline = (baselines or {}).get(comparison.key)
    entry = {"claim": comparison.claim, "key": comparison.key, "better": comparison.better,
             "worse": comparison.worse, "baseline": baseline, "gap": None, "spread": None,
             "better_mean": None, "worse_mean": None}
    sides = [summary.get(m, {}).get(comparison.key) for m in (comparison.better, comparison.worse)]
    if any(side is None or side["mean"] is None for side in sides):
        return {**entry, "verdict": "not measured"}
    (a, b) = sides
    gap, spread = a["mean"] - b["mean"], a["std"] + b["std"]
    entry.update(gap=gap, spread=spread, better_mean=a["mean"], worse_mean=b["mean"])
    if baseline is not None and a["mean"] <= baseline and b["mean"] <= baseline:
        return {**entry, "verdict": "not testable (both at or below the baseline)"}
    if gap > spread:
        verdict = "reproduced"
    elif -gap > spread:
        verdict = "reversed"
    else:
        verdict = "within spread"
    return {**entry, "verdict": verdict}


def above_baseline(summary: Mapping[str, Mapping[str, Mapping[str, Any]]], method: str, key: str,
                   baseline: float | None) -> bool | None:
    """Whether `method`'s mean on `key` minus its std still beats `baseline` (None: not measured)."""
    entry = summary.get(method, {}).get(key)
    if baseline is None or entry is None or entry["mean"] is None:
        return None
    return entry["mean"] - entry["std"] > baseline
