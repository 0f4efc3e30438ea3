"""`patch-align bench generate`: batched vs one-at-a-time greedy generation at a named shape.

The model is the stage-1 starting point that `build_trainer` makes from the synthetic folders
(random LLM, tower and projector); prompts are the synthetic images with a `llava_v1`-style
question. Both modes call `llava.eval.generation.generate_batch_token_ids` (the harnesses'
path), `--batch-size` prompts at a time or one at a time, alternating over `--rounds`.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from patch_align.bench.measure import CLOCKS, Spread, clock, peak_tflops, synchronize
from patch_align.bench.shapes import BenchShape, generation_flops, projector_flops, tower_forward_flops
from patch_align.bench.synthetic import build_bench_folders
from patch_align.bench.train import DTYPES, TrainBenchOptions, resolve_device, training_argv

PROMPT = "USER: <image>\nDescribe the image briefly. ASSISTANT:"


@dataclass(frozen=True)
class GenerateBenchOptions:
    shape: BenchShape
    work: str
    prompts: int = 8
    batch_size: int = 8
    new_tokens: int = 16
    rounds: int = 3
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    device: str = "auto"
    peak_tflops: float | None = None
    clock: str = "wall"
    seed: int = 0

    def check(self) -> None:
        if self.clock not in CLOCKS:
            raise ValueError(f"--clock {self.clock!r}: choose one of {CLOCKS}")
        for flag in ("prompts", "batch_size", "new_tokens", "rounds"):
            if getattr(self, flag) < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(self, flag)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype!r}: choose one of {sorted(DTYPES)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device {self.device!r}: choose auto, cpu or cuda")


@dataclass
class GenerateMode:
    mode: str
    batch_size: int
    seconds: Spread
    tokens_per_s: float
    mfu: float


@dataclass
class GenerateBenchResult:
    shape: str
    llm_layers: int
    settings: dict[str, Any]
    prompt_tokens: int
    new_tokens: int
    flops_per_prompt: int
    peak_tflops: float
    peak_source: str
    speedup: float  # one-at-a-time median / batched median
    same_tokens: bool  # did both modes produce the same greedy tokens
    modes: list[GenerateMode]

    def markdown_rows(self) -> list[str]:
        s = self.settings
        return [
            f"| {self.shape} (LLM {self.llm_layers} layers) | {m.mode} (batch {m.batch_size}) | "
            f"{s['device']} {s['dtype']} {s['clock']} clock | "
            f"{s['prompts']} × {self.new_tokens} new tokens | "
            f"{m.seconds.median:.3g} s [{m.seconds.minimum:.3g}, {m.seconds.maximum:.3g}] "
            f"(n={m.seconds.count}) | {m.tokens_per_s:.4g} | {m.mfu * 100:.3f} % | {self.speedup:.2f} |"
            for m in self.modes
        ]


MARKDOWN_HEADER = (
    "| shape | mode | device / dtype / clock | work | time median [min, max] | new tokens/s | MFU "
    "| speed-up |\n"
    + "|---" * 8 + "|"
)


def run_generate_bench(options: GenerateBenchOptions) -> GenerateBenchResult:
    """Time both modes over `rounds` alternating rounds; returns the figures."""
    from PIL import Image

    from llava.eval.generation import GenerationSettings, generate_batch_token_ids
    from llava.mm_utils import tokenizer_image_token
    from llava.train.train import build_trainer

    options.check()
    device = resolve_device(options.device)
    folders = build_bench_folders(options.work, options.shape, options.prompts, options.seed)
    train_options = TrainBenchOptions(shape=options.shape, work=options.work, batch_size=1, steps=1,
                                      warmup=0, rounds=1, dtype=options.dtype, device=options.device)
    _, ctx = build_trainer(None, training_argv(train_options, folders, tempfile.mkdtemp(prefix="bench-gen-")),
                           options.attn_implementation)
    model, tokenizer = ctx.model.eval(), ctx.tokenizer
    processor = ctx.data_args.image_processor
    records = json.loads(Path(folders.data_json).read_text())[: options.prompts]
    images = [Image.open(folders.image_folder / r["image"]).convert("RGB") for r in records]
    prompts = [PROMPT] * len(images)
    settings = GenerationSettings(max_new_tokens=options.new_tokens)

    now = clock(options.clock)

    def run(batch_size: int) -> tuple[float, list[list[int]]]:
        synchronize(device)
        start = now()
        with torch.inference_mode():
            ids = generate_batch_token_ids(model, tokenizer, prompts, images, processor, settings,
                                           batch_size=batch_size)
        synchronize(device)
        return now() - start, ids

    modes = {"batched": options.batch_size, "one at a time": 1}
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    tokens: dict[str, list[list[int]]] = {}
    run(options.batch_size)  # warm-up: first calls allocate and pick kernels
    for _ in range(options.rounds):
        for mode, batch_size in modes.items():
            seconds, tokens[mode] = run(batch_size)
            times[mode].append(seconds)

    # the <image> placeholder id becomes the image's patch tokens
    prompt_tokens = len(tokenizer_image_token(PROMPT, tokenizer)) - 1 + options.shape.vision.num_patches
    new = sum(len(row) for row in tokens["batched"])
    per_prompt = (tower_forward_flops(options.shape.vision) + projector_flops(options.shape)[0]
                  + generation_flops(options.shape.llm, prompt_tokens, options.new_tokens))
    peak, source = peak_tflops(device, DTYPES[options.dtype], options.peak_tflops, options.clock)
    results = []
    for mode, batch_size in modes.items():
        spread = Spread.of(times[mode])
        results.append(GenerateMode(mode=mode, batch_size=batch_size, seconds=spread,
                                    tokens_per_s=new / spread.median,
                                    mfu=per_prompt * len(prompts) / spread.median / (peak * 1e12)))
    return GenerateBenchResult(
        shape=options.shape.name, llm_layers=options.shape.llm.num_hidden_layers,
        settings={"device": device.type, "dtype": options.dtype, "prompts": options.prompts,
                  "batch_size": options.batch_size, "rounds": options.rounds,
                  "attn_implementation": options.attn_implementation, "threads": torch.get_num_threads(),
                  "clock": options.clock},
        prompt_tokens=prompt_tokens, new_tokens=options.new_tokens, flops_per_prompt=per_prompt,
        peak_tflops=peak, peak_source=source,
        speedup=results[1].seconds.median / results[0].seconds.median,
        same_tokens=tokens["batched"] == tokens["one at a time"], modes=results,
    )


def write_generate_result(result: GenerateBenchResult, out: str | None) -> str:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(asdict(result), indent=1) + "\n")
    return "\n".join([MARKDOWN_HEADER, *result.markdown_rows()])
