"""`patch-align export hf`: one of our checkpoints → a llava-hf folder (docs/export.md).

    patch-align export hf --model-path CKPT [--model-base BASE] [--revision REV] --out DIR
                          [--conv-mode vicuna_v1] [--dtype auto|float32|float16|bfloat16]

Bad input (a missing path or unknown hub id, a checkpoint llava-hf cannot express, a LoRA or
projector checkpoint without its base, a non-empty `--out`) is `patch-align export hf: error: ...`,
exit 2, before any model loads.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from patch_align.cli import CommandError, output_folder, set_command

DTYPES = ("auto", "float32", "float16", "bfloat16")


def empty_output_folder(path: str) -> Path:
    """`path` as a new or empty folder: a conversion never mixes its files with another model's."""
    folder = output_folder(path)
    if folder.is_dir() and any(folder.iterdir()):
        raise CommandError(f"--out {path} is not empty: give a new folder")
    return folder


def torch_dtype(name: str):
    """`None` for `auto` (keep the source's dtype), else the torch dtype of that name."""
    import torch

    return None if name == "auto" else getattr(torch, name)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `export` group on the top-level `subparsers`."""
    group = subparsers.add_parser("export", help="write a checkpoint in another layout (llava-hf)")
    commands = group.add_subparsers(dest="export_command", required=True, metavar="FORMAT")
    hf = commands.add_parser(
        "hf", help="transformers' LlavaForConditionalGeneration layout (vLLM, SGLang, TGI, pipelines)",
        description="Export a full, LoRA (+ base) or projector (+ base) checkpoint to the llava-hf layout: "
        "config, safetensors with the tower, tokenizer with <image>, processor and chat template.",
    )
    hf.add_argument("--model-path", required=True, help="checkpoint folder or hub id")
    hf.add_argument("--model-base", default=None, help="base LLM of a LoRA or projector checkpoint")
    hf.add_argument("--revision", default=None, help="hub revision of --model-path (default main)")
    hf.add_argument("--out", required=True, help="new (or empty) output folder")
    hf.add_argument("--conv-mode", default="vicuna_v1",
                    help="conversation template the chat template renders (default vicuna_v1, LLaVA-1.5's)")
    hf.add_argument("--dtype", choices=DTYPES, default="auto",
                    help="weights' dtype (default auto: the checkpoint's recorded dtype)")
    set_command(hf, run)


def run(args: argparse.Namespace) -> int:
    from llava.model.hf_layout import HfLayoutError, export_checkpoint

    out = empty_output_folder(args.out)
    try:
        summary = export_checkpoint(
            args.model_path, args.model_base, out, conv_mode=args.conv_mode,
            dtype=torch_dtype(args.dtype), revision=args.revision,
        )
    except (HfLayoutError, OSError, ValueError) as err:  # bad input, found before the model loads
        raise CommandError(err) from err
    print(
        f"wrote {summary.out}: llava-hf, <image> = token {summary.image_token_index}, vocabulary "
        f"{summary.vocab_before} -> {summary.vocab_after}, image_aspect_ratio {summary.image_aspect_ratio}"
    )
    return 0
