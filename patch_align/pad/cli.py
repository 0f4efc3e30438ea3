"""The `patch-align pad ...` subcommands: argument parsing and printing only."""
from __future__ import annotations

import argparse
import sys

from patch_align.pad.schema import PadFormatError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `pad` group and its subcommands on the top-level `subparsers`."""
    pad = subparsers.add_parser("pad", help="Patch-Aligned Dataset files: check them")
    commands = pad.add_subparsers(dest="pad_command", required=True, metavar="COMMAND")
    validate = commands.add_parser(
        "validate", help="name every bad record of a PAD file; exit 1 if any",
        description="Check a PAD file (JSON or JSONL) against its images. Exit 0 when clean, "
                    "1 when any record is bad, 2 on a usage error.")
    validate.add_argument("file", help="PAD file (.json array or .jsonl)")
    validate.add_argument("--image-folder", required=True,
                          help="folder the records' 'image' paths are relative to")
    validate.add_argument("--tokenizer", default=None,
                          help="tokenizer folder: also check that every label tokenises to something")
    validate.add_argument("--max-print", type=int, default=None, metavar="N",
                          help="print at most N problems (default: all); counts always cover all")
    validate.set_defaults(func=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    from patch_align.pad.validate import validate_pad

    tokenizer = None
    if args.tokenizer is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    try:
        report = validate_pad(args.file, args.image_folder, tokenizer=tokenizer, show_progress=True)
    except (FileNotFoundError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except PadFormatError as err:
        print(f"{args.file}: not a readable PAD file: {err}")
        return 1
    shown = report.problems if args.max_print is None else report.problems[:max(args.max_print, 0)]
    for problem in shown:
        print(f"{problem.record_id}: {problem.kind}: {problem.detail}")
    if len(shown) < len(report.problems):
        hidden = len(report.problems) - len(shown)
        print(f"... {hidden} more problems not printed (--max-print {args.max_print})")
    print(f"{args.file}: {report.records} records, {report.regions} regions, "
          f"{len(report.problems)} problems in {report.bad_records} records")
    for kind, count in report.counts.items():
        print(f"  {kind}: {count}")
    return 0 if report.ok else 1
