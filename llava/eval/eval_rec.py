"""Score grounding answers: Acc@IoU≥0.5 per split.

    python -m llava.eval.eval_rec --question-file Q.jsonl --result-file A.jsonl [--out SCORES.json]

The question file comes from `llava.eval.convert_refcoco`; the result file is LLaVA's
answer JSONL. Several question files can be concatenated: splits are kept apart.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from llava.eval.eval_vqa import load_answer_texts, read_jsonl
from llava.eval.rec import score_rec


def format_table(scores: dict[str, Any]) -> str:
    """The per-split and overall tallies of `score_rec` as a plain-text table."""
    rows = [("split", "total", "correct", f"acc@{scores['iou_threshold']:g}", "unparsed", "missing")]
    for name, tally in [*scores["splits"].items(), ("overall", scores["overall"])]:
        rows.append((name, str(tally["total"]), str(tally["correct"]), f"{100 * tally['accuracy']:.2f}",
                     str(tally["parse_failures"]), str(tally["missing"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--question-file", required=True)
    parser.add_argument("--result-file", required=True)
    parser.add_argument("--iou-threshold", type=float, default=0.5)
    parser.add_argument("--out", default=None, help="write the full scores (with failure lists) as JSON")
    args = parser.parse_args(argv)
    questions = read_jsonl(args.question_file)
    scores = score_rec(questions, load_answer_texts(args.result_file), args.iou_threshold)
    print(format_table(scores))
    if args.out:
        Path(args.out).write_text(json.dumps(scores, indent=2))
    return scores


if __name__ == "__main__":
    main()
