"""The `patch-align` console script: subcommand groups, each registered by its own module.

A group module exposes `add_parser(subparsers)`, whose subcommands register
`func(args) -> int` with `set_command`. Only the group named on the command line is imported,
so `patch-align pad ...` never pays for torch or a model; `patch-align --help` lists the groups
from the table below.

Exit codes: 0 done; 1 the command ran and its answer is negative (`pad validate` found bad
records, `pad merge` is incomplete, a demo run failed); 2 bad input (a usage error, a missing
or unreadable file, a bad value). Bad input is raised as `CommandError` and printed as
`patch-align GROUP COMMAND: error: MESSAGE`, like argparse's own usage errors, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

# group name -> (module with add_parser, one-line help)
GROUPS: dict[str, tuple[str, str]] = {
    "pad": ("patch_align.pad.cli", "Patch-Aligned Dataset files: check them"),
    "analyze": ("patch_align.analysis.cli", "measure compression and patch alignment of a projector"),
    "sea": ("patch_align.sea.cli", "SEA token labels: vocabulary and offline CLIP labelling"),
    "world": ("patch_align.world.cli", "the miniature world: generate it, bootstrap its models"),
    "eval": ("patch_align.evaluation.cli", "evaluation suites: answer, score and compare checkpoints"),
    "demo": ("patch_align.world.demo", "the main job: the paper's comparison in miniature, end to end"),
    "bench": ("patch_align.bench.cli", "throughput and MFU at named model shapes (docs/performance.md)"),
    "export": ("patch_align.export.cli", "write a checkpoint in the llava-hf layout (docs/export.md)"),
    "import": ("patch_align.export.import_cli", "read a llava-hf folder into our checkpoint layout"),
    "app": ("patch_align.app.cli", "a local web page: chat and see each patch's alignment (docs/app.md)"),
}


class CommandError(Exception):
    """Bad input to a subcommand (a missing file, a bad value): exit 2 with the message, no traceback."""


def set_command(parser: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int]) -> None:
    """Make `func` the command of `parser`; its `CommandError`s are printed under `parser.prog`."""
    parser.set_defaults(func=func, command_prog=parser.prog)


def output_folder(path: str, flag: str = "--out") -> Path:
    """`path` as an output folder to create: `CommandError` when it exists and is not a folder."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise CommandError(f"{flag} {path} exists and is not a folder")
    return folder


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
    try:
        return args.func(args)
    except CommandError as err:
        prog = getattr(args, "command_prog", f"patch-align {args.group}")
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
