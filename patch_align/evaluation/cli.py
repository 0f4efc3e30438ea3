"""The `patch-align eval` command: run an evaluation suite over one or several checkpoints.

    patch-align eval --suite SUITE.yaml --model-path CKPT [--model-path NAME=CKPT2 ...] --out DIR
                     [--model-base BASE] [--batch-size B] [--device D] [--max-new-tokens N] [--limit N]

Writes OUT/results.{json,md,png} and OUT/<checkpoint>/<task>/{answers.jsonl,scores.json};
a re-run resumes from the answers files. Relative paths inside the suite file are resolved
against the suite file's folder (not the working directory). docs/evaluation.md describes
suites and scorers.
"""
from __future__ import annotations

import argparse
import logging

from patch_align.cli import CommandError, output_folder, set_command
from patch_align.wandb_report import REPORT_TO, check_wandb_available, flat_numbers, report_to_wandb


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `eval` group on the top-level `subparsers`."""
    parser = subparsers.add_parser(
        "eval",
        help="run an evaluation suite (REC, VQA, GQA, multiple choice, captions) over checkpoints",
        description="Answer every task of a suite with every checkpoint (resumable), score the answers and "
        "write results.json, results.md and results.png.",
    )
    parser.add_argument(
        "--suite", required=True,
        help="suite file (.yaml, .yml or .json); relative paths in it are resolved against the suite "
        "file's folder, not the working directory",
    )
    parser.add_argument(
        "--model-path", required=True, action="append", metavar="[NAME=]PATH",
        help="checkpoint folder, optionally named (default name: the folder's); repeat to compare",
    )
    parser.add_argument("--model-base", default=None, help="base LLM of LoRA or projector-only checkpoints")
    parser.add_argument("--out", required=True, help="output folder (created; re-runs resume in it)")
    parser.add_argument("--batch-size", type=int, default=8, help="questions per generate call (default 8)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="override every task's max_new_tokens")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="first N questions of each task")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding images")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--report-to", choices=REPORT_TO, default="none",
                        help="also log scores, results.png and a score table to a wandb run under OUT")
    set_command(parser, run)


def run(args: argparse.Namespace) -> int:
    """Run the suite; 0 on success. A bad suite, file, checkpoint or `--out` is a `CommandError` (exit 2)
    raised before any model loads."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from patch_align.evaluation.report import write_results
    from patch_align.evaluation.runner import parse_checkpoint, run_suite
    from patch_align.evaluation.suite import SuiteError, load_suite

    out = output_folder(args.out)
    try:
        check_wandb_available(args.report_to)
    except ValueError as error:
        raise CommandError(error) from error
    try:
        results = run_suite(
            load_suite(args.suite),
            [parse_checkpoint(value) for value in args.model_path],
            out,
            model_base=args.model_base,
            device=args.device,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            limit=args.limit,
            num_workers=args.num_workers,
            progress=not args.no_progress,
        )
    except SuiteError as error:
        raise CommandError(error) from error
    paths = write_results(results, args.out)
    if args.report_to == "wandb":
        rows = [
            [name, task, metric, value]
            for name, checkpoint in results["checkpoints"].items()
            for task, result in checkpoint["tasks"].items()
            for metric, value in flat_numbers(result.get("metrics", {})).items()
        ]
        scores = {f"{name}/{task}/{metric}": value for name, task, metric, value in rows}
        table = {"scores": (["checkpoint", "task", "metric", "value"], rows)}
        report_to_wandb(out, "eval", scores, [paths["figure"]], table, {"suite": results["suite"]})
    print(f"wrote {paths['markdown']}, {paths['json']} and {paths['figure']}")
    return 0
