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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from llava.eval.vqa_metrics import Metric, option_letter_of, score_answers


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


def read_located_records(path: str | Path) -> list[tuple[str, Any]]:
    """`(where, record)` of an annotation file in any layout of the module doc, in file order.

    `where` locates the record for error messages: `line N` (JSONL), `record N` (1-based, a
    JSON list or `{"annotations": [...]}`), `key 'K'` (an id-keyed object, whose key becomes
    the record's `question_id`).
    """
    path = Path(path)
    if path.suffix == ".jsonl":
        return [(f"line {n}", record) for n, record in iter_jsonl(path)]
    with path.open() as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from error
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        data = data["annotations"]
    if isinstance(data, list):
        return [(f"record {n}", record) for n, record in enumerate(data, start=1)]
    if isinstance(data, dict):
        located = []
        for qid, record in data.items():
            if not isinstance(record, dict):
                raise ValueError(f"{path}: key {qid!r}: expected an object holding 'answer' or 'answers', "
                                 f"got {type(record).__name__}")
            located.append((f"key {qid!r}", {"question_id": qid, **record}))
        return located
    raise TypeError(f"{path}: expected JSON records, got {type(data).__name__}")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records from `.jsonl`, a JSON list, `{"annotations": [...]}`, or an id-keyed JSON object."""
    return [record for _, record in read_located_records(path)]


def load_answer_texts(path: str | Path) -> dict[str, str]:
    """LLaVA answer JSONL → question id (as string) → answer text; a bad or duplicate record is an error."""
    answers: dict[str, str] = {}
    for line_number, record in iter_jsonl(path):
        where = f"{path}:{line_number}"
        if not isinstance(record, dict) or "question_id" not in record or "text" not in record:
            raise ValueError(f"{where}: answer record lacks question_id or text: {record}")
        qid = str(record["question_id"])
        if not isinstance(record["text"], str):
            raise ValueError(f"{where}: question {qid}: 'text' must be a string, got {record['text']!r}")
        if qid in answers:
            raise ValueError(f"{where}: duplicate answer for question_id {qid!r}")
        answers[qid] = record["text"]
    return answers


def _human_answers(value: Any) -> list[str]:
    """`answers` of a VQA record → the human answer strings; ValueError saying what is wrong."""
    # A bare string would iterate into one-letter "answers" and score silently wrong.
    if not isinstance(value, list):
        raise ValueError(f"'answers' must be a list of human answers, got {type(value).__name__} {value!r}")
    humans = []
    for index, answer in enumerate(value):
        text = answer.get("answer") if isinstance(answer, dict) else answer
        if not isinstance(text, str):
            raise ValueError(f"'answers'[{index}] must be a string or {{\"answer\": string}}, got {answer!r}")
        humans.append(text)
    if len(humans) < 2:
        raise ValueError(f"'answers' must hold at least 2 human answers (VQA accuracy), got {len(humans)}")
    return humans


def _checked_truth(record: dict[str, Any], metric: Metric) -> Any:
    """What `score_answers` expects for `metric` from one record; ValueError naming the bad field."""
    if metric == "vqa":
        if "answers" not in record:
            raise ValueError("lacks 'answers' (needed by --metric vqa)")
        return _human_answers(record["answers"])
    if "answer" not in record:
        raise ValueError(f"lacks 'answer' (needed by --metric {metric})")
    answer = record["answer"]
    if metric == "option":
        try:
            option_letter_of(answer)
        except (TypeError, ValueError) as error:
            raise ValueError(f"'answer': {error}") from error
    elif not isinstance(answer, str):
        raise ValueError(f"'answer' must be a string, got {type(answer).__name__} {answer!r}")
    return answer


def ground_truth_for(located: Iterable[tuple[str, Any]], metric: Metric, source: str) -> dict[str, Any]:
    """Question id → what `score_answers` expects for `metric`, every record checked.

    `located`: `(where, record)` pairs as `read_located_records` gives them; errors name
    `source` (the file), `where` (line/record/key), the question and the bad field.
    """
    truth: dict[str, Any] = {}
    first_seen: dict[str, str] = {}
    for where, record in located:
        if not isinstance(record, dict):
            raise ValueError(f"{source}: {where}: expected a JSON object, got {type(record).__name__}")
        if "question_id" not in record:
            raise ValueError(f"{source}: {where}: record lacks question_id: {record}")
        qid = str(record["question_id"])
        if qid in first_seen:
            raise ValueError(f"{source}: {where}: question {qid} already has ground truth "
                             f"({first_seen[qid]})")
        try:
            truth[qid] = _checked_truth(record, metric)
        except ValueError as error:
            raise ValueError(f"{source}: {where}: question {qid}: {error}") from error
        first_seen[qid] = where
    return truth


def load_ground_truth(path: str | Path, metric: Metric) -> dict[str, Any]:
    """Read and check an annotation file (any layout of the module doc) for `metric`."""
    return ground_truth_for(read_located_records(path), metric, str(path))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--annotation-file", required=True)
    parser.add_argument("--result-file", required=True)
    parser.add_argument("--metric", required=True, choices=["vqa", "exact", "option"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    truth = load_ground_truth(args.annotation_file, args.metric)
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
