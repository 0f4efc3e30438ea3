"""`patch-align app`: the local web page for chatting with a checkpoint and seeing its patch alignment.

    patch-align app --model-path CKPT [--model-base BASE] [--compare CKPT2 [--compare-base BASE2]]
                    [--pad PAD --image-folder DIR] [--conv-mode MODE] [--host 127.0.0.1 --port 7860]

Paths, the PAD file, the template and gradio itself are checked before any model loads; each
checkpoint is loaded once. Bad input exits 2 with the flag or file named (docs/app.md).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from patch_align.cli import CommandError, set_command


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "app", help="a local web page: chat, nearest words, heatmaps and regions per patch",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--model-path", required=True, help="checkpoint folder (or hub id)")
    parser.add_argument("--model-base", default=None, help="LLM of a projector-only or LoRA --model-path")
    parser.add_argument("--compare", default=None, help="a second checkpoint shown side by side")
    parser.add_argument("--compare-base", default=None, help="LLM of a projector-only or LoRA --compare")
    parser.add_argument("--pad", default=None, help="PAD file: its records and region scores on the page")
    parser.add_argument("--image-folder", default=None, help="images to pick from (and the PAD's images)")
    parser.add_argument("--conv-mode", default=None,
                        help="chat template; by default upstream's rule on the checkpoint folder's name")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    set_command(parser, run)


def build_handlers(args: argparse.Namespace):
    """Check the flags, then load every checkpoint once → `AppHandlers` (CommandError on bad input)."""
    from patch_align.app.handlers import AppHandlers
    from patch_align.app.session import AppInputError, load_sessions

    if not 0 < args.port < 65536:
        raise CommandError(f"--port {args.port} is not a TCP port")
    if args.compare_base and not args.compare:
        raise CommandError("--compare-base needs --compare")
    checkpoints = [(args.model_path, args.model_base)]
    if args.compare:
        checkpoints.append((args.compare, args.compare_base))
    try:
        sessions = load_sessions(checkpoints, args.conv_mode, args.device, args.pad, args.image_folder)
    except AppInputError as err:
        raise CommandError(str(err)) from err
    return AppHandlers(sessions, Path(args.image_folder) if args.image_folder else None)


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("gradio") is None:
        raise CommandError('gradio is not installed: pip install -e ".[app]"')
    from patch_align.app.page import build_page

    handlers = build_handlers(args)
    build_page(handlers).launch(server_name=args.host, server_port=args.port)
    return 0
