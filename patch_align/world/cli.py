"""The `patch-align world ...` subcommands: argument parsing and printing only.

Bad input (a spec value, an output path that is a file, a folder that is no world) is a
`CommandError`: `patch-align world COMMAND: error: ...`, exit 2.
"""
from __future__ import annotations

import argparse
import json
import time

from llava.tiny import TINY_LM_VARIANTS
from patch_align.cli import CommandError, output_folder, set_command
from patch_align.world.generator import WorldError, WorldSpec
from patch_align.world.scene import PALETTE, SHAPES, SIZE_FRACTIONS, SceneSpec


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `world` group and its subcommands on the top-level `subparsers`."""
    world = subparsers.add_parser("world", help="the miniature world: generate it, bootstrap its models")
    commands = world.add_subparsers(dest="world_command", required=True, metavar="COMMAND")
    scene, spec = SceneSpec(), WorldSpec()
    make = commands.add_parser(
        "make", help="generate images, masks and LLaVA/PAD/eval files",
        description="Generate a deterministic miniature world (layout and formats in docs/demo.md).")
    make.add_argument("--out", required=True, help="world folder (reused when the spec is unchanged)")
    make.add_argument("--seed", type=int, default=spec.seed)
    make.add_argument("--n-train", type=int, default=spec.n_train, help="training images")
    make.add_argument("--n-eval", type=int, default=spec.n_eval, help="held-out images")
    make.add_argument("--min-size", type=int, default=scene.min_size, help="smallest image edge, px")
    make.add_argument("--max-size", type=int, default=scene.max_size, help="largest image edge, px")
    make.add_argument("--objects-min", type=int, default=scene.objects_min)
    make.add_argument("--objects-max", type=int, default=scene.objects_max)
    make.add_argument("--shapes", nargs="+", default=list(scene.shapes), help=f"from {', '.join(SHAPES)}")
    make.add_argument("--colours", nargs="+", default=list(scene.colours), help=f"from {', '.join(PALETTE)}")
    make.add_argument("--sizes", nargs="+", default=list(scene.sizes),
                      help=f"from {', '.join(SIZE_FRACTIONS)}")
    make.add_argument("--min-visible", type=float, default=scene.min_visible,
                      help="fraction of each object's area that stays visible after overlap")
    make.add_argument("--layout-grid", type=int, default=scene.layout_grid,
                      help="0: objects anywhere; G >= 2: each object centred in its own cell of a GxG layout")
    make.add_argument("--caption-references", type=int, default=spec.caption_references,
                      help="reference captions per held-out image")
    make.add_argument("--vqa-per-image", type=int, default=spec.vqa_per_image)
    make.add_argument("--binding-per-image", type=int, default=spec.binding_per_image,
                      help="binding questions per image ('What colour is the object left of the "
                           "red circle?')")
    make.add_argument("--held-out-pairs", nargs="*", default=list(spec.held_out_pairs), metavar="PAIR",
                      help="'<colour> <shape>' labels left out of the training PAD file, "
                           "e.g. 'purple triangle'")
    make.add_argument("--rec-answer-grid", type=int, default=spec.rec_answer_grid, metavar="G",
                      help="0: REC training answers are the exact box (LLaVA-1.5); G >= 1: the box snapped "
                           "to a GxG grid of the padded square (scoring always uses the exact box)")
    make.add_argument("--rec-records-per-image", type=int, default=spec.rec_records_per_image, metavar="K",
                      help="REC conversations per training image, each asking every object in a new order")
    make.add_argument("--force", action="store_true", help="regenerate even when the folder has this spec")
    set_command(make, run_make)

    boot = commands.add_parser(
        "bootstrap", help="train the world's small CLIP and Llama (cached)",
        description="Train a small CLIP contrastively on the world's image-caption pairs and a small Llama "
                    "on its text; save both as transformers folders and their quality in bootstrap.json.")
    boot.add_argument("--world", required=True, help="a folder written by `patch-align world make`")
    boot.add_argument("--out", required=True, help="folder for clip/, llm/ and bootstrap.json")
    boot.add_argument("--quick", action="store_true", help="the small, fast preset (~20-30 s on 2 CPU cores)")
    boot.add_argument("--seed", type=int, default=None, help="override the preset's seed")
    boot.add_argument("--force", action="store_true", help="retrain even when the cache matches")
    set_command(boot, run_bootstrap)


def run_make(args: argparse.Namespace) -> int:
    from patch_align.world.generator import make_world

    spec = WorldSpec(
        seed=args.seed, n_train=args.n_train, n_eval=args.n_eval,
        scene=SceneSpec(min_size=args.min_size, max_size=args.max_size, objects_min=args.objects_min,
                        objects_max=args.objects_max, shapes=tuple(args.shapes), colours=tuple(args.colours),
                        sizes=tuple(args.sizes), min_visible=args.min_visible, layout_grid=args.layout_grid),
        caption_references=args.caption_references, vqa_per_image=args.vqa_per_image,
        binding_per_image=args.binding_per_image, held_out_pairs=tuple(args.held_out_pairs),
        rec_answer_grid=args.rec_answer_grid, rec_records_per_image=args.rec_records_per_image)
    try:
        spec.check()
    except ValueError as err:
        raise CommandError(err) from err
    start = time.perf_counter()
    manifest = make_world(output_folder(args.out), spec, reuse=not args.force)
    counts = manifest["counts"]
    print(f"world in {args.out} ({time.perf_counter() - start:.1f} s): "
          f"{counts['train']['images']} train / {counts['eval']['images']} eval images, "
          f"{counts['train']['objects'] + counts['eval']['objects']} objects")
    return 0


def run_bootstrap(args: argparse.Namespace) -> int:
    from patch_align.world.bootstrap import DEFAULT_SETTINGS, QUICK_SETTINGS, bootstrap_world

    settings = QUICK_SETTINGS if args.quick else DEFAULT_SETTINGS
    if args.seed is not None:
        settings = settings.with_seed(args.seed)
    try:
        report = bootstrap_world(args.world, output_folder(args.out), settings, force=args.force)
    except WorldError as err:
        raise CommandError(err) from err
    print(json.dumps({key: report[key] for key in ("cached", "clip", "llm", "seconds")}, indent=2))
    return 0


def add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the top-level `demo` command (GROUPS entry `patch_align.world.demo`, docs/demo.md)."""
    demo = subparsers.add_parser(
        "demo", help="the main job: world -> bootstrap -> stage 1/2 per method -> analysis + eval -> report",
        description="Run the paper's comparison in miniature: caption-only LLaVA stage 1 vs patch-aligned "
                    "vs SEA, then stage 2, analysis and evaluation; writes OUT/report.md and "
                    "OUT/metrics.json.")
    demo.add_argument("--out", default=None,
                      help="output folder (default runs/demo; runs/demo-full with --full, runs/study-NAME)")
    preset = demo.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="the small preset (~2 min on 2 CPU cores)")
    preset.add_argument("--full", action="store_true",
                        help="the downstream preset: a world with binding questions and held-out pairs, "
                             "a long "
                             "stage 2 with learning curves (<= 30 min on 2 CPU cores with --seeds 2)")
    preset.add_argument("--study", choices=("beta", "projector"), default=None,
                        help="an ablation (docs/demo.md, Studies): beta = β_max × schedule; "
                             "projector = linear vs "
                             "mlp2x_gelu × objective, and stage 2's treatment of the projector")
    demo.add_argument("--llm-family", default="llama", metavar="VARIANT",
                      help="the world's LLM: llama (default: Llama, SentencePiece, vicuna_v1) or a tiny LM "
                           "variant of another family on its own tokenizer kind and chat template: "
                           f"{', '.join(TINY_LM_VARIANTS)} (docs/backbones.md); the default --out gets "
                           "-VARIANT appended")
    demo.add_argument("--seeds", type=int, default=1,
                      help="repeat stage 1/2 and evaluation with seeds 0..N-1 and report mean ± std")
    demo.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                      help="some of caption, patch_align, sea (default: all three)")
    demo.add_argument("--report-to", choices=("none", "wandb"), default="none",
                      help="training logs to wandb (offline unless WANDB_MODE is set)")
    demo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                      help="auto uses a GPU when there is one")
    demo.add_argument("--jobs", type=int, default=None,
                      help="training runs at once (default: one per CPU core, at most one per run)")
    demo.add_argument("--keep-going", action="store_true",
                      help="a failed run is reported and the others go on (default: stop at the first)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar or stage lines")
    set_command(demo, run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    import logging
    import sys
    from dataclasses import replace
    from pathlib import Path

    from patch_align.world import demo
    from patch_align.world.bootstrap import DEFAULT_LLM_VARIANT
    from patch_align.world.demo_report import format_table
    from patch_align.world.studies import STUDIES

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    study = STUDIES[args.study] if args.study else None
    if study is not None and args.methods:
        raise CommandError("--methods cannot be given with --study: a study names its own runs")
    if study is not None:
        preset, default_out = study.preset, f"runs/study-{study.name}"
    elif args.full:
        preset, default_out = demo.FULL_PRESET, "runs/demo-full"
    else:
        preset, default_out = demo.QUICK_PRESET if args.quick else demo.DEFAULT_PRESET, "runs/demo"
    if args.llm_family != DEFAULT_LLM_VARIANT:
        if args.llm_family not in TINY_LM_VARIANTS:
            raise CommandError(f"--llm-family {args.llm_family!r} is not one of: "
                               f"{DEFAULT_LLM_VARIANT}, {', '.join(TINY_LM_VARIANTS)}")
        preset = replace(preset, bootstrap=replace(preset.bootstrap, llm_variant=args.llm_family))
        default_out = f"{default_out}-{args.llm_family}"
    args.out = args.out or default_out
    try:
        options = demo.DemoOptions(out=Path(args.out), preset=preset, seeds=args.seeds,
                                   methods=tuple(args.methods or demo.METHODS), report_to=args.report_to,
                                   device=args.device, keep_going=args.keep_going, jobs=args.jobs,
                                   progress=not args.no_progress, study=study)
    except ValueError as error:
        raise CommandError(error) from error
    try:
        metrics = demo.run_demo(options)
    except demo.DemoError as error:
        print(f"patch-align demo: error: {error}", file=sys.stderr)
        return 1
    print(f"\n{format_table(metrics['summary'], metrics['baselines'])}\n")
    failed = metrics["failed_runs"]
    for name, message in failed.items():
        print(f"FAILED {name}: {message.splitlines()[0]}", file=sys.stderr)
    print(f"done in {metrics['wall_seconds']:.0f} s: {Path(args.out) / 'report.md'}, "
          f"{Path(args.out) / 'metrics.json'}, figures in {args.out}")
    return 1 if failed else 0
