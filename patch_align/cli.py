"""The `patch-align` console script: subcommand groups, each registered by its own module.

A group module exposes `add_parser(subparsers)`, whose subcommands set `func(args) -> int`.
Only the group named on the command line is imported, so `patch-align pad ...` never
pays for torch or a model; `patch-align --help` lists the groups from the table below.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# group name -> (module with add_parser, one-line help)
GROUPS: dict[str, tuple[str, str]] = {
    "pad": ("patch_align.pad.cli", "Patch-Aligned Dataset files: check them"),
    "analyze": ("patch_align.analysis.cli", "measure compression and patch alignment of a projector"),
    "sea": ("patch_align.sea.cli", "SEA token labels: vocabulary and offline CLIP labelling"),
    "world": ("patch_align.world.cli", "the miniature world: generate it, bootstrap its models"),
    "eval": ("patch_align.evaluation.cli", "evaluation suites: answer, score and compare checkpoints"),
    "demo": ("patch_align.world.demo", "the main job: the paper's comparison in miniature, end to end"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser, with the group named first in `argv` fully registered and the others as names only."""
    parser = argparse.ArgumentParser(prog="patch-align",
                                     description="Fine-grained vision-language alignment.")
    subparsers = parser.add_subparsers(dest="group", required=True, metavar="GROUP")
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, (module, help_text) in GROUPS.items():
        if name == chosen:
            importlib.import_module(module).add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
