"""`patch-align import hf`: a llava-hf folder → our checkpoint layout (docs/export.md).

    patch-align import hf --model-path HF_DIR [--revision REV] --out DIR [--projector-only]
                          [--dtype auto|float32|float16|bfloat16]

Full (default): OUT is a full checkpoint (`load_pretrained_model(OUT, None)`), its tower in
OUT/vision_tower. `--projector-only`: OUT holds mm_projector.bin + config.json (the stage-1
layout, for `--pretrain_mm_mlp_adapter`), its LLM in OUT/llm and its tower in OUT/vision_tower.
Bad input is `patch-align import hf: error: ...`, exit 2.
"""
from __future__ import annotations

import argparse

from patch_align.cli import CommandError, set_command
from patch_align.export.cli import DTYPES, empty_output_folder, torch_dtype


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `import` group on the top-level `subparsers`."""
    group = subparsers.add_parser("import", help="read a checkpoint from another layout (llava-hf)")
    commands = group.add_subparsers(dest="import_command", required=True, metavar="FORMAT")
    hf = commands.add_parser(
        "hf", help="from transformers' LlavaForConditionalGeneration layout",
        description="Import a llava-hf folder as a full checkpoint, or as mm_projector.bin + its base LLM.",
    )
    hf.add_argument("--model-path", required=True, help="llava-hf folder or hub id")
    hf.add_argument("--revision", default=None, help="hub revision of --model-path (default main)")
    hf.add_argument("--out", required=True, help="new (or empty) output folder")
    hf.add_argument("--projector-only", action="store_true",
                    help="write mm_projector.bin + config.json with the LLM in OUT/llm (stage-1 layout)")
    hf.add_argument("--dtype", choices=DTYPES, default="auto", help="weights' dtype (default: the folder's)")
    set_command(hf, run)


def run(args: argparse.Namespace) -> int:
    from llava.model.hf_layout import HfLayoutError, import_hf
    from llava.paths import resolve_model_path

    out = empty_output_folder(args.out)
    try:
        folder = resolve_model_path(args.model_path, args.revision, "--model-path")
        import_hf(folder, out, projector_only=args.projector_only, dtype=torch_dtype(args.dtype))
    except (HfLayoutError, OSError) as err:
        raise CommandError(err) from err
    kind = "mm_projector.bin + config.json, base LLM in llm/" if args.projector_only else "full checkpoint"
    print(f"wrote {out}: {kind}, vision tower in vision_tower/")
    return 0
