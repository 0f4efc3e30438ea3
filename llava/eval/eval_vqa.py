"""Score a LLaVA answer file against VQA-style ground truth.

    python -m llava.eval.eval_vqa --annotation-file GT --result-file ANSWERS.jsonl \
        --metric vqa|exact|option [--out SCORES.json]

The result file is LLaVA's answer JSONL (`question_id`, `text`, ...). The annotation file
may be:
- JSONL or a JSON list of records with `question_id` and `answers` (list of strings or of
  `{"answer": ...}`) or `answer` (a string, or an option index for `option`);
- the official VQA annotation JSON (`{"annotations": [...]}`, same record layout);
- a JSON object keyed by question id whose values hold `answer`/`answers` (GQA layout).
Question ids are compared as strings. Scores go to `--out` (default: next to the result
file, `<result stem>.<metric>_scores.json`).
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llava.eval.vqa_metrics import Metric, score_answers


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """`(line number, record)` of a JSONL file; blank lines are skipped, a malformed line is an error."""
    with Path(path).open() as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number}: not valid JSON ({error.msg})") from error
            yield line_number, record


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; blank lines are skipped, a malformed line is an error naming it."""
    return [record for _, record in iter_jsonl(path)]


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records from `.jsonl`, a JSON list, `{"annotations": [...]}`, or an id-keyed JSON object."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    with path.open() as f:
        data = json.load(f)
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        return data["annotations"]
    if isinstance(data, dict):
        return [{"question_id": qid, **record} for qid, record in data.items()]
    raise TypeError(f"{path}: expected JSON records, got {type(data).__name__}")


def load_answer_texts(path: str | Path) -> dict[str, str]:
    """LLaVA answer JSONL → question id (as string) → answer text; duplicate ids are an error."""
    answers: dict[str, str] = {}
    for record in read_jsonl(path):
        if "question_id" not in record or "text" not in record:
            raise ValueError(f"{path}: answer record lacks question_id or text: {record}")
        qid = str(record["question_id"])
        if qid in answers:
            raise ValueError(f"{path}: duplicate answer for question_id {qid!r}")
        answers[qid] = record["text"]
    return answers


def ground_truth_for(records: list[dict[str, Any]], metric: Metric, source: str) -> dict[str, Any]:
    """Question id → what `score_answers` expects for `metric`; `source` names the file in errors."""
    truth: dict[str, Any] = {}
    for record in records:
        if "question_id" not in record:
            raise ValueError(f"{source}: record lacks question_id: {record}")
        qid = str(record["question_id"])
        if metric == "vqa":
            if "answers" not in record:
                raise ValueError(f"{source}: question {qid} lacks 'answers' (needed by --metric vqa)")
            truth[qid] = [a["answer"] if isinstance(a, dict) else a for a in record["answers"]]
        else:
            if "answer" not in record:
                raise ValueError(f"{source}: question {qid} lacks 'answer' (needed by --metric {metric})")
            truth[qid] = record["answer"]
    return truth


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--annotation-file", required=True)
    parser.add_argument("--result-file", required=True)
    parser.add_argument("--metric", required=True, choices=["vqa", "exact", "option"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    truth = ground_truth_for(read_records(args.annotation_file), args.metric, args.annotation_file)
    scores = score_answers(truth, load_answer_texts(args.result_file), args.metric)
    result_path = Path(args.result_file)
    default_out = result_path.with_name(f"{result_path.stem}.{args.metric}_scores.json")
    out = Path(args.out) if args.out else default_out
    out.write_text(json.dumps(scores, indent=2))
    print(f"{args.metric} accuracy: {100 * scores['accuracy']:.2f}% over {scores['total']} questions "
          f"({len(scores['missing'])} missing, {len(scores['unparsed'])} unparsed) -> {out}")
    return scores


if __name__ == "__main__":
    main()
