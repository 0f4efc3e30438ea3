"""`patch-align bench train`: stage-1 step time of caption-only, patch-aligned and SEA training
at a named shape, through the real training path, alternating the methods in one process.

The model is built once by `llava.train.train.build_trainer` (caption-only recipe, the run's
flags); each method's trainer is then made by its own recipe from the same `TrainContext`, so
the three share one model, tower and tokenizer. Rounds alternate the methods: in each round
every method runs `trainer.train()` for warm-up + timed optimizer steps; a step's time is the
wall time between consecutive `on_step_end` callbacks (data loading, forward, backward,
clipping, optimizer, logging: everything the Trainer does per step), warm-up steps dropped.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from patch_align.bench.measure import (
    CLOCKS,
    Spread,
    clock,
    peak_memory_bytes,
    peak_tflops,
    reset_peak_memory,
    synchronize,
)
from patch_align.bench.shapes import BenchShape, stage_one_flops
from patch_align.bench.synthetic import CAPTION_TOKENS, build_bench_folders

METHODS = ("caption", "patch_cosine", "sea")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class TrainBenchOptions:
    """What `patch-align bench train` takes (see its --help)."""

    shape: BenchShape
    work: str
    methods: tuple[str, ...] = METHODS
    batch_size: int = 4
    steps: int = 6
    warmup: int = 1
    rounds: int = 2
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    device: str = "auto"
    deepspeed: str | None = None
    dataloader_workers: int = 0
    peak_tflops: float | None = None
    caption_tokens: int = CAPTION_TOKENS
    clock: str = "wall"
    seed: int = 0

    def check(self) -> None:
        """ValueError naming the flag, before anything is built."""
        if self.clock not in CLOCKS:
            raise ValueError(f"--clock {self.clock!r}: choose one of {CLOCKS}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"--methods {','.join(self.methods)}: choose from {METHODS}")
        for flag in ("batch_size", "steps", "rounds"):
            if getattr(self, flag) < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(self, flag)}")
        if self.warmup < 0 or self.dataloader_workers < 0:
            raise ValueError("--warmup and --dataloader-workers must not be negative")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype!r}: choose one of {sorted(DTYPES)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device {self.device!r}: choose auto, cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
        if self.deepspeed is not None and not Path(self.deepspeed).is_file():
            raise ValueError(f"--deepspeed {self.deepspeed}: no such file")
        if self.deepspeed is not None and (len(self.methods) != 1 or self.rounds != 1):
            raise ValueError("--deepspeed times one method in one round per process (accelerate allows one "
                             "DeepSpeed Accelerator per process, and one train() on its engine): give one "
                             "--methods value and --rounds 1, and run once per method")
        if self.caption_tokens < 1:
            raise ValueError(f"--caption-tokens must be at least 1, got {self.caption_tokens}")

    @property
    def steps_per_round(self) -> int:
        return math.ceil(self.steps / self.rounds)


@dataclass
class MethodResult:
    """One method's figures; times in seconds, FLOPs per sample, memory in bytes."""

    method: str
    step: Spread
    data: Spread  # fetching one batch from the method's dataloader (dataset + collator), timed apart
    samples_per_s: float
    tokens_per_s: float
    flops_per_sample: int
    mfu: float
    peak_memory: int
    ratio_to_caption: float | None = None


@dataclass
class TrainBenchResult:
    shape: str
    llm_layers: int
    settings: dict[str, Any]
    tokens_per_sample: int
    flops_by_part: dict[str, int]
    peak_tflops: float
    peak_source: str
    memory_kind: str
    methods: list[MethodResult] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def markdown_rows(self) -> list[str]:
        """One row per method: the table of docs/performance.md."""
        s = self.settings
        rows = []
        for m in self.methods:
            ratio = f"{m.ratio_to_caption:.3f}" if m.ratio_to_caption is not None else "-"
            rows.append(
                f"| {self.shape} (LLM {self.llm_layers} layers) | {m.method} | {s['device']} {s['dtype']} "
                f"{s['attn_implementation']} {s['clock']} clock | {s['batch_size']} "
                f"| {m.step.median * 1e3:.1f} [{m.step.minimum * 1e3:.1f}, {m.step.maximum * 1e3:.1f}] ms "
                f"(n={m.step.count}) "
                f"| {m.data.median * 1e3:.1f} ms | {ratio} "
                f"| {m.samples_per_s:.3g} | {m.tokens_per_s:.4g} | {m.flops_per_sample / 1e9:.4g} G "
                f"| {m.mfu * 100:.2f} % | {m.peak_memory / 2**20:.0f} MiB |"
            )
        return rows


MARKDOWN_HEADER = (
    "| shape | method | device / dtype / attention / clock | batch | step median [min, max] | batch fetch "
    "| ratio to caption | samples/s | tokens/s | FLOPs/sample | MFU | peak memory |\n" + "|---" * 12 + "|"
)


class StepClock(TrainerCallback):
    """Wall time between consecutive `on_step_end`s of one `train()` call (the first: from
    `on_train_begin`)."""

    def __init__(self, device: torch.device, clock_kind: str = "wall") -> None:
        self.device = device
        self.now = clock(clock_kind)
        self.times: list[float] = []
        self._last = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        synchronize(self.device)
        self.times = []
        self._last = self.now()

    def on_step_end(self, args, state, control, **kwargs):
        synchronize(self.device)
        now = self.now()
        self.times.append(now - self._last)
        self._last = now


def training_argv(options: TrainBenchOptions, folders, output_dir: str) -> list[str]:
    """LLaVA-1.5 stage-1 flags (scripts/v1_5/pretrain.sh) on the synthetic folders."""
    flags = {
        "model_name_or_path": folders.llm, "version": "plain", "data_path": folders.data_json,
        "image_folder": folders.image_folder, "vision_tower": folders.clip,
        "mm_projector_type": "mlp2x_gelu", "tune_mm_mlp_adapter": True, "mm_vision_select_layer": -2,
        "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "image_aspect_ratio": "square",
        "output_dir": output_dir, "per_device_train_batch_size": options.batch_size,
        "gradient_accumulation_steps": 1, "learning_rate": 1e-3, "weight_decay": 0.0,
        "warmup_ratio": 0.03, "lr_scheduler_type": "cosine", "logging_steps": 1, "save_strategy": "no",
        "report_to": "none", "model_max_length": 2048, "dataloader_num_workers": options.dataloader_workers,
        "disable_tqdm": True, "seed": options.seed, "max_steps": options.warmup + options.steps_per_round,
        "lazy_preprocess": True,
    }
    if options.gradient_checkpointing:
        flags["gradient_checkpointing"] = True
    if options.dtype == "bfloat16":
        flags["bf16"] = True
    elif options.dtype == "float16":
        flags["fp16"] = True
    device = resolve_device(options.device)
    if device.type == "cpu":
        flags["use_cpu"] = True
    if options.deepspeed:
        flags["deepspeed"] = options.deepspeed
    return [part for key, value in flags.items() for part in (f"--{key}", str(value))]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _method_trainer(method: str, ctx, folders, clock: StepClock):
    """The trainer `method`'s recipe builds on the shared model (as `build_trainer` does)."""
    from transformers import HfArgumentParser

    from llava.train.recipe import TrainRecipe
    from patch_align.recipe import PatchAlignRecipe

    if method == "caption":
        recipe, method_ctx = TrainRecipe(), ctx
    else:
        recipe = PatchAlignRecipe()
        # the plugin's flag groups parsed from the method's flags, as build_trainer parses them
        parsed = HfArgumentParser(recipe.extra_arguments).parse_args_into_dataclasses(
            args=plugin_flags(method, folders))
        method_ctx = replace(ctx, extra_args={type(group).__name__: group for group in parsed})
    return recipe.trainer_class(
        model=ctx.model,
        processing_class=ctx.tokenizer,
        args=ctx.training_args,
        train_dataset=recipe.make_dataset(method_ctx),
        data_collator=recipe.make_collator(method_ctx),
        callbacks=[*recipe.make_callbacks(method_ctx), clock],
        **recipe.trainer_kwargs(method_ctx),
    )


def plugin_flags(method: str, folders) -> list[str]:
    """The plugin's flags that make `method`'s run (none for caption-only)."""
    if method == "patch_cosine":
        return ["--align_objective", "patch_cosine", "--pad_path", str(folders.pad),
                "--patch_beta_schedule", "constant"]
    if method == "sea":
        return ["--align_objective", "sea", "--sea_labels", str(folders.sea_labels)]
    return []


def batch_fetch_times(trainer, batches: int, clock_kind: str = "wall") -> Spread:
    """Seconds to fetch each of `batches` batches from `trainer`'s dataloader: the share of a step
    that `--dataloader-workers` moves off the training process (and the dataset's caches save)."""
    now = clock(clock_kind)
    seconds = []
    while len(seconds) < batches:
        iterator = iter(trainer.get_train_dataloader())
        while len(seconds) < batches:
            start = now()
            if next(iterator, None) is None:
                break
            seconds.append(now() - start)
    return Spread.of(seconds)


def run_train_bench(options: TrainBenchOptions) -> TrainBenchResult:
    """Build the shape, alternate the methods for `rounds` rounds, and return their figures."""
    from llava.train.train import build_trainer

    options.check()
    device = resolve_device(options.device)
    dtype = DTYPES[options.dtype]
    samples = options.batch_size * (options.warmup + options.steps_per_round)
    folders = build_bench_folders(options.work, options.shape, samples, options.seed, options.caption_tokens)
    output_dir = tempfile.mkdtemp(prefix="bench-train-")
    argv = training_argv(options, folders, output_dir)
    step_clock = StepClock(device, options.clock)
    if options.deepspeed:  # one method (see check): the trainer build_trainer makes for it
        from patch_align.recipe import PatchAlignRecipe

        method = options.methods[0]
        recipe = None if method == "caption" else PatchAlignRecipe()
        trainer, _ = build_trainer(recipe, argv + plugin_flags(method, folders), options.attn_implementation)
        trainer.add_callback(step_clock)
        trainers = {method: trainer}
    else:
        _, ctx = build_trainer(None, argv, options.attn_implementation)
        trainers = {method: _method_trainer(method, ctx, folders, step_clock) for method in options.methods}
    for trainer in trainers.values():
        trainer.remove_callback(PrinterCallback)  # the result is the output, not every step's logs

    times: dict[str, list[float]] = {method: [] for method in options.methods}
    memory: dict[str, int] = dict.fromkeys(options.methods, 0)
    memory_kind = ""
    for _ in range(options.rounds):
        for method, trainer in trainers.items():
            reset_peak_memory(device)
            trainer.train()
            times[method] += step_clock.times[options.warmup :]
            used, memory_kind = peak_memory_bytes(device)
            memory[method] = max(memory[method], used)

    text_tokens = len(trainers[options.methods[0]].train_dataset[0]["input_ids"]) - 1  # minus <image>
    tokens = options.shape.vision.num_patches + text_tokens
    flops = stage_one_flops(options.shape, text_tokens)
    peak, peak_source = peak_tflops(device, dtype, options.peak_tflops, options.clock)
    result = TrainBenchResult(
        shape=options.shape.name, llm_layers=options.shape.llm.num_hidden_layers,
        settings={
            "device": device.type, "dtype": options.dtype, "attn_implementation": options.attn_implementation,
            "gradient_checkpointing": options.gradient_checkpointing, "batch_size": options.batch_size,
            "steps": options.steps, "warmup": options.warmup, "rounds": options.rounds,
            "deepspeed": options.deepspeed, "dataloader_workers": options.dataloader_workers,
            "threads": torch.get_num_threads(), "caption_tokens": options.caption_tokens,
            "clock": options.clock,
        },
        tokens_per_sample=tokens, flops_by_part=asdict(flops), peak_tflops=peak, peak_source=peak_source,
        memory_kind=memory_kind,
    )
    for method in options.methods:
        step = Spread.of(times[method][: options.steps])
        samples_per_s = options.batch_size / step.median
        result.methods.append(MethodResult(
            method=method, step=step, data=batch_fetch_times(trainers[method], options.steps, options.clock),
            samples_per_s=samples_per_s, tokens_per_s=samples_per_s * tokens,
            flops_per_sample=flops.total, mfu=flops.total * samples_per_s / (peak * 1e12),
            peak_memory=memory[method],
        ))
    if "caption" in options.methods:  # the ratio of whole steps, data loading included
        caption = result.methods[options.methods.index("caption")].step.median
        for m in result.methods:
            m.ratio_to_caption = m.step.median / caption
    return result


def write_result(result: TrainBenchResult, out: str | None) -> str:
    """The JSON (to `out` when given) and the markdown rows, as printed by the command."""
    text = json.dumps(result.as_json(), indent=1)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    return "\n".join([MARKDOWN_HEADER, *result.markdown_rows()])
