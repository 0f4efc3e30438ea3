"""`patch-align bench ...`: train / generate / pad throughput at named shapes (docs/performance.md)."""

from __future__ import annotations

import argparse

from patch_align.cli import CommandError, set_command


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", default="tiny", help="tiny, 7b or 13b (default tiny)")
    parser.add_argument("--llm-layers", type=int, default=None, help="keep only the LLM's first N layers")
    parser.add_argument("--work", default="runs/bench", help="where the synthetic models and data are kept")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak dense TFLOP/s for MFU (default: per-GPU table; CPU: a measured matmul)")
    parser.add_argument("--out", default=None, help="also write the JSON result to this file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", default="wall",
                        help="wall, or process: CPU time / threads, for a shared CPU (docs/performance.md)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("bench", help="throughput and MFU at named model shapes")
    commands = group.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="stage-1 step time: caption-only vs patch-aligned vs SEA")
    _common(train)
    train.add_argument("--methods", default="caption,patch_cosine,sea", help="comma-separated, in order")
    train.add_argument("--batch-size", type=int, default=4)
    train.add_argument("--steps", type=int, default=6, help="timed optimizer steps per method")
    train.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of every round")
    train.add_argument("--rounds", type=int, default=2, help="rounds over the methods (steps split evenly)")
    train.add_argument("--attn-implementation", default="sdpa", help="sdpa, flash_attention_2 or eager")
    train.add_argument("--gradient-checkpointing", action="store_true")
    train.add_argument("--deepspeed", default=None, help="a DeepSpeed JSON config (e.g. scripts/zero2.json)")
    train.add_argument("--dataloader-workers", type=int, default=0)
    train.add_argument("--caption-tokens", type=int, default=None, help="caption length in tokens (24)")
    set_command(train, run_train)

    generate = commands.add_parser("generate", help="batched vs one-at-a-time greedy generation")
    _common(generate)
    generate.add_argument("--prompts", type=int, default=8)
    generate.add_argument("--batch-size", type=int, default=8)
    generate.add_argument("--new-tokens", type=int, default=16)
    generate.add_argument("--rounds", type=int, default=3)
    generate.add_argument("--attn-implementation", default="sdpa", help="sdpa, flash_attention_2 or eager")
    set_command(generate, run_generate)

    pad = commands.add_parser("pad", help="PAD generation throughput per stage (Grounding DINO + SAM)")
    pad.add_argument("--models", default="tiny", help="tiny, or full: Grounding DINO base + SAM ViT-H shapes")
    pad.add_argument("--work", default="runs/bench", help="where the synthetic models and images are kept")
    pad.add_argument("--device", default="auto", help="auto, cpu or cuda (CUDA runs under bf16 autocast)")
    pad.add_argument("--images", type=int, default=8)
    pad.add_argument("--batch-size", type=int, default=4)
    pad.add_argument("--image-width", type=int, default=512)
    pad.add_argument("--image-height", type=int, default=384)
    pad.add_argument("--max-regions", type=int, default=4, help="boxes kept per image (the paper: ~4)")
    pad.add_argument("--out", default=None, help="also write the JSON result to this file")
    pad.add_argument("--seed", type=int, default=0)
    set_command(pad, run_pad)


def _shape(args: argparse.Namespace):
    from patch_align.bench.shapes import shape_named

    try:
        return shape_named(args.shape, args.llm_layers)
    except ValueError as err:
        raise CommandError(str(err)) from err


def run_train(args: argparse.Namespace) -> int:
    from patch_align.bench.synthetic import CAPTION_TOKENS
    from patch_align.bench.train import TrainBenchOptions, run_train_bench, write_result

    options = TrainBenchOptions(
        shape=_shape(args), work=args.work, methods=tuple(m for m in args.methods.split(",") if m),
        batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
        dtype=args.dtype, attn_implementation=args.attn_implementation,
        gradient_checkpointing=args.gradient_checkpointing, device=args.device, deepspeed=args.deepspeed,
        dataloader_workers=args.dataloader_workers, peak_tflops=args.peak_tflops,
        caption_tokens=args.caption_tokens or CAPTION_TOKENS, clock=args.clock, seed=args.seed,
    )
    try:
        options.check()
    except ValueError as err:
        raise CommandError(str(err)) from err
    print(write_result(run_train_bench(options), args.out))
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from patch_align.bench.generate import GenerateBenchOptions, run_generate_bench, write_generate_result

    options = GenerateBenchOptions(
        shape=_shape(args), work=args.work, prompts=args.prompts, batch_size=args.batch_size,
        new_tokens=args.new_tokens, rounds=args.rounds, dtype=args.dtype,
        attn_implementation=args.attn_implementation, device=args.device, peak_tflops=args.peak_tflops,
        clock=args.clock, seed=args.seed,
    )
    try:
        options.check()
    except ValueError as err:
        raise CommandError(str(err)) from err
    print(write_generate_result(run_generate_bench(options), args.out))
    return 0


def run_pad(args: argparse.Namespace) -> int:
    from patch_align.bench.pad import check_pad_flags, run_pad_bench, write_pad_result

    sizes = (args.images, args.batch_size, args.image_width, args.image_height, args.max_regions)
    try:
        check_pad_flags(args.models, *sizes)
    except ValueError as err:
        raise CommandError(str(err)) from err
    result = run_pad_bench(args.work, args.models, args.images, args.batch_size, args.image_width,
                           args.image_height, args.device, args.max_regions, args.seed)
    print(write_pad_result(result, args.out))
    return 0
