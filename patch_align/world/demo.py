"""`patch-align demo`: the paper's comparison in miniature, end to end, on the miniature world.

    OUT/world/                       `patch-align world make` (reused when the spec is unchanged)
    OUT/bootstrap/                   `patch-align world bootstrap` (cached by content hash)
    OUT/sea/<key>/                   `patch-align sea vocab|label` on the pretraining data (per CLIP)
    OUT/runs/<method>-seed<k>/       stage1/ (projector), stage2/ (full model), analysis/
    OUT/eval/                        `patch-align eval` over every stage-2 model (results.{json,md,png})
    OUT/logs/*.log                   each training subprocess's output
    OUT/report.md, OUT/metrics.json, OUT/demo_metrics.png, OUT/comparison/

Each method (caption-only LLaVA stage 1, patch-aligned, SEA) trains on identical data, steps and
seed, through the same entry points and upstream flags a 7B run uses, as subprocesses
(`python -m llava.train.train`, `python -m patch_align.train`). Analysis, SEA labelling and
evaluation run through the real `patch-align` commands in this process (no second import of torch).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from patch_align.world.bootstrap import DEFAULT_SETTINGS, QUICK_SETTINGS, BootstrapSettings
from patch_align.world.cli import add_demo_parser as add_parser  # noqa: F401 (`demo`'s GROUPS entry)
from patch_align.world.generator import WORLD_FILES, WorldSpec

logger = logging.getLogger(__name__)

METHODS = ("caption", "patch_align", "sea")
METHOD_TITLES = {"caption": "caption-only (LLaVA-1.5)", "patch_align": "patch-aligned", "sea": "SEA"}
# (key in a run's metrics, table title, format). Fractions are shown as they are measured.
TABLE_COLUMNS = (
    ("delta_h", "ΔH (nats)", "{:.3f}"),
    ("align_miou", "Align mIoU", "{:.3f}"),
    ("pointing_accuracy", "pointing acc.", "{:.3f}"),
    ("mp_precision", "MP precision", "{:.3f}"),
    ("mp_recall", "MP recall", "{:.3f}"),
    ("rec_acc50", "REC Acc@0.5", "{:.3f}"),
    ("vqa_accuracy", "VQA acc.", "{:.3f}"),
    ("caption_cider", "CIDEr", "{:.3f}"),
    ("stage1_train_s", "stage-1 train s", "{:.1f}"),
    ("stage2_train_s", "stage-2 train s", "{:.1f}"),
)
# (section, key) of each analysis number in an analyze metrics.json
ANALYSIS_KEYS = {
    "delta_h": ("compression", "delta_h"),
    "align_miou": ("alignment", "miou"),
    "pointing_accuracy": ("alignment", "pointing_accuracy"),
    "mp_precision": ("decomposition", "word_precision"),
    "mp_recall": ("decomposition", "word_recall"),
}
# (suite task name, headline metric) of each evaluation number
EVAL_KEYS = {"rec_acc50": ("rec", "acc@0.5"), "vqa_accuracy": ("vqa", "exact_match"),
             "caption_cider": ("caption", "CIDEr")}


class DemoError(RuntimeError):
    """A stage of the demo failed; the message names the stage and where its log is."""


@dataclass(frozen=True)
class StageSettings:
    """One training stage: `steps` optimizer steps of `batch_size` samples, peak `learning_rate`."""

    steps: int
    batch_size: int
    learning_rate: float


@dataclass(frozen=True)
class DemoPreset:
    """Everything sized for the time budget: world, bootstrap, both training stages, evaluation.

    `eval_limit`: first N questions of each evaluation task (None: all held-out questions).
    """

    name: str
    world: WorldSpec
    bootstrap: BootstrapSettings
    stage1: StageSettings
    stage2: StageSettings
    eval_limit: int | None = None


# Stage 1 learns only the projector (upstream lr 1e-3, kept). Stage 2 trains the whole tiny LLM:
# upstream's 2e-5 is a 7B fine-tuning rate; the tiny Llama was bootstrapped at 3e-3, so 1e-3 here.
DEFAULT_PRESET = DemoPreset(
    name="default", world=WorldSpec(n_train=2000, n_eval=200), bootstrap=DEFAULT_SETTINGS,
    stage1=StageSettings(steps=150, batch_size=16, learning_rate=1e-3),
    stage2=StageSettings(steps=150, batch_size=16, learning_rate=1e-3))
QUICK_PRESET = DemoPreset(
    name="quick", world=WorldSpec(n_train=300, n_eval=40), bootstrap=QUICK_SETTINGS,
    stage1=StageSettings(steps=40, batch_size=16, learning_rate=1e-3),
    stage2=StageSettings(steps=30, batch_size=16, learning_rate=1e-3))


@dataclass(frozen=True)
class DemoOptions:
    """One demo run. `device`: auto, cpu or cuda. `jobs`: training subprocesses at once (None: one
    per CPU core, at most one per run). `report_to`: none or wandb (offline unless WANDB_MODE is set)."""

    out: Path
    preset: DemoPreset = DEFAULT_PRESET
    seeds: int = 1
    methods: tuple[str, ...] = METHODS
    report_to: str = "none"
    device: str = "auto"
    keep_going: bool = False
    jobs: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        # Absolute from here on: the subprocesses, the checkpoints' configs and every file the demo
        # writes then mean the same from any working directory (llava/paths.py).
        object.__setattr__(self, "out", Path(self.out).absolute())
        if self.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {self.seeds}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"--methods must name some of {', '.join(METHODS)}, got {list(self.methods)}")
        if self.report_to not in ("none", "wandb"):
            raise ValueError(f"--report-to must be none or wandb, got {self.report_to!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.jobs is not None and self.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {self.jobs}")


@dataclass(frozen=True)
class DemoPaths:
    """The inputs every training run shares: world files and the bootstrapped models."""

    world: Path
    clip: Path
    llm: Path
    sea_labels: Path | None = None

    @property
    def image_folder(self) -> Path:
        return self.world / WORLD_FILES["image_folder"]


@dataclass(frozen=True)
class RunSpec:
    """One method at one seed; its folders live under `root`."""

    method: str
    seed: int
    root: Path

    @property
    def name(self) -> str:
        return f"{self.method}-seed{self.seed}"

    @property
    def stage1(self) -> Path:
        return self.root / "stage1"

    @property
    def stage2(self) -> Path:
        return self.root / "stage2"

    @property
    def analysis(self) -> Path:
        return self.root / "analysis"


# ---------------------------------------------------------------- commands (pure)


def _shared_flags(paths: DemoPaths, stage: StageSettings, run: RunSpec, output_dir: Path,
                  report_to: str) -> list[str]:
    """Upstream's flags common to both stages (scripts/v1_5/*.sh), minus DeepSpeed/bf16 and with the
    miniature's steps, batch and learning rate."""
    return [
        "--model_name_or_path", str(paths.llm),
        "--image_folder", str(paths.image_folder),
        "--vision_tower", str(paths.clip),
        "--mm_projector_type", "mlp2x_gelu",
        "--mm_vision_select_layer", "-2",
        "--mm_use_im_start_end", "False",
        "--mm_use_im_patch_token", "False",
        "--output_dir", str(output_dir),
        "--max_steps", str(stage.steps),
        "--per_device_train_batch_size", str(stage.batch_size),
        "--gradient_accumulation_steps", "1",
        "--save_strategy", "no",
        "--learning_rate", f"{stage.learning_rate:g}",
        "--weight_decay", "0.",
        "--warmup_ratio", "0.03",
        "--lr_scheduler_type", "cosine",
        "--logging_steps", "5",
        "--model_max_length", "256",
        "--gradient_checkpointing", "True",
        "--dataloader_num_workers", "0",
        "--lazy_preprocess", "True",
        "--seed", str(run.seed),
        "--report_to", report_to,
        "--run_name", f"demo-{run.name}-{output_dir.name}",
        "--disable_tqdm", "True",
    ]


def stage1_command(run: RunSpec, paths: DemoPaths, preset: DemoPreset, report_to: str = "none") -> list[str]:
    """The stage-1 (projector pretraining) command line of `run.method`.

    caption: `llava.train.train` as upstream's pretrain.sh; patch_align: `patch_align.train` with the
    world's PAD file and the paper's β 0 → 5 linear; sea: `patch_align.train --align_objective sea`
    with the offline labels and the documented λ = 1 constant.
    """
    world = paths.world
    entry = "llava.train.train" if run.method == "caption" else "patch_align.train"
    command = [sys.executable, "-m", entry,
               "--version", "plain",
               "--data_path", str(world / WORLD_FILES["pretrain"]),
               "--tune_mm_mlp_adapter", "True",
               *_shared_flags(paths, preset.stage1, run, run.stage1, report_to)]
    if run.method == "patch_align":
        command += ["--pad_path", str(world / WORLD_FILES["pad_train"]), "--patch_loss_weight", "5.0",
                    "--patch_beta_schedule", "linear"]
    elif run.method == "sea":
        if paths.sea_labels is None:
            raise ValueError("the sea method needs SEA labels (DemoPaths.sea_labels)")
        command += ["--align_objective", "sea", "--sea_labels", str(paths.sea_labels),
                    "--sea_loss_weight", "1.0", "--sea_lambda_schedule", "constant"]
    return command


def stage2_command(run: RunSpec, paths: DemoPaths, preset: DemoPreset, report_to: str = "none") -> list[str]:
    """The stage-2 (instruction tuning) command line from the run's stage-1 projector: upstream's
    finetune.sh flags (v1 template, pad geometry, modality-grouped batches) on the world's instructions."""
    return [sys.executable, "-m", "llava.train.train",
            "--version", "v1",
            "--data_path", str(paths.world / WORLD_FILES["instruct"]),
            "--pretrain_mm_mlp_adapter", str(run.stage1 / "mm_projector.bin"),
            "--image_aspect_ratio", "pad",
            "--group_by_modality_length", "True",
            *_shared_flags(paths, preset.stage2, run, run.stage2, report_to)]


def eval_suite(world: Path, suite_folder: Path, captions: bool = True) -> dict[str, Any]:
    """The `patch-align eval` suite of the world's held-out files: REC (Acc@0.5), VQA (exact match,
    one answer per question, hence the `gqa` task type) and, if `captions`, captions (CIDEr).

    Paths are written relative to `suite_folder`, the folder the suite file will be in: the suite
    runner resolves them against it, so the demo's output folder can be moved as a whole."""

    def file(key: str) -> str:
        return os.path.relpath(Path(world).absolute() / WORLD_FILES[key], Path(suite_folder).absolute())

    folder = file("image_folder")
    tasks = [
        {"name": "rec", "type": "rec", "question_file": file("rec_questions"),
         "image_folder": folder, "max_new_tokens": 24},
        {"name": "vqa", "type": "gqa", "question_file": file("vqa_questions"),
         "annotation_file": file("vqa_answers"), "image_folder": folder, "max_new_tokens": 8},
    ]
    if captions:
        tasks.append({"name": "caption", "type": "caption", "question_file": file("caption_questions"),
                      "annotation_file": file("caption_references"), "image_folder": folder,
                      "max_new_tokens": 40})
    return {"defaults": {"conv_mode": "llava_v1"}, "tasks": tasks}


# ---------------------------------------------------------------- numbers (pure)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1; 0.0 for a single value)."""
    if not values:
        raise ValueError("mean_std of no values")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def run_numbers(analysis: dict[str, Any], eval_checkpoint: dict[str, Any], train_seconds: dict[str, float],
                run_name: str, skipped: Collection[str] = ()) -> dict[str, float | None]:
    """The table numbers of one run from its analyze metrics.json and its `patch-align eval` entry.

    Numbers named in `skipped` (not measured this run, reported as such) are None. Raises `DemoError`
    naming the run and the number when any other one is missing or not finite.
    """
    numbers: dict[str, float] = {}
    for key, (section, name) in ANALYSIS_KEYS.items():
        numbers[key] = analysis.get(section, {}).get(name)
    for key, (task, metric) in EVAL_KEYS.items():
        numbers[key] = eval_checkpoint.get("tasks", {}).get(task, {}).get("metrics", {}).get(metric)
    numbers["stage1_train_s"] = train_seconds.get("stage1")
    numbers["stage2_train_s"] = train_seconds.get("stage2")
    for key, value in numbers.items():
        if key in skipped:
            numbers[key] = None
        elif not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise DemoError(f"run {run_name}: {key} is {value!r}, not a finite number")
        else:
            numbers[key] = float(value)
    return numbers


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """method → table key → {mean, std, n} over the runs' seeds; runs are `{"method", "numbers"}` dicts.

    A number no run measured (None, see `run_numbers`) has mean and std None and n 0."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        numbers = [r["numbers"] for r in runs if r["method"] == method]
        summary[method] = {}
        for key, _, _ in TABLE_COLUMNS:
            values = [n[key] for n in numbers if n[key] is not None]
            mean, std = mean_std(values) if values else (None, None)
            summary[method][key] = {"mean": mean, "std": std, "n": len(values)}
    return summary


def format_table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """The comparison table in markdown: one row per method, `mean ± std` when there are several seeds,
    `n/a` for a number that was not measured."""
    header = ["method", *(title for _, title, _ in TABLE_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(TABLE_COLUMNS)]
    for method, columns in summary.items():
        cells = [METHOD_TITLES.get(method, method)]
        for key, _, fmt in TABLE_COLUMNS:
            entry = columns[key]
            if entry["mean"] is None:
                cells.append("n/a")
                continue
            cell = fmt.format(entry["mean"])
            if entry["n"] > 1:
                cell += " ± " + fmt.format(entry["std"])
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_report(metrics: dict[str, Any]) -> str:
    """report.md: setting, quality of the bootstrapped models, the comparison table, figures, timings."""
    settings, boot = metrics["settings"], metrics["bootstrap"]
    seeds = settings["seeds"]
    spread = f"mean ± sample std over seeds 0..{seeds - 1}" if seeds > 1 else "seed 0"
    world = metrics["world"]
    lines = [
        f"# patch-align demo ({settings['preset']} preset)",
        "",
        f"World: {world['train_images']} training / {world['eval_images']} held-out images "
        f"(`{settings['out']}/world`). Bootstrapped CLIP: held-out retrieval top-1 "
        f"{boot['clip']['retrieval_top1']:.3f} (chance {boot['clip']['retrieval_chance']:.3f}); "
        f"Llama: held-out perplexity {boot['llm']['perplexity']:.2f} "
        f"(unigram {boot['llm']['unigram_perplexity']:.1f}).",
        "",
        f"Stage 1: {settings['stage1']['steps']} steps of {settings['stage1']['batch_size']}; stage 2: "
        f"{settings['stage2']['steps']} steps of {settings['stage2']['batch_size']}; identical data, steps "
        f"and seed for every method. Numbers: {spread}. Analysis on the held-out PAD file "
        "(stage-1 projectors); evaluation on the held-out questions (stage-2 models).",
        "",
        format_table(metrics["summary"]),
        "",
        *[f"- **not measured** {key}: {reason}" for key, reason in metrics["not_measured"].items()],
        *[f"- **failed** {name}: {error.splitlines()[0]}" for name, error in metrics["failed_runs"].items()],
        "- ΔH = H_vision − H_projected (nats), Align mIoU and pointing accuracy: `patch-align analyze`",
        "  (docs/metrics.md); MP precision/recall: matching-pursuit words vs. the region labels.",
        "- REC Acc@0.5, VQA accuracy (exact match), CIDEr: `patch-align eval` (docs/demo.md).",
        "- train s: the Trainer's own runtime of each stage (parallel runs share the CPU).",

        "",
        "## Figures",
        "",
        "![demo metrics](demo_metrics.png)",
        "",
        "![analysis comparison, seed 0](comparison/comparison.png)",
        "",
        "![evaluation, every run](eval/results.png)",
        "",
        "Per-run analysis reports with region maps and matching-pursuit words: "
        + ", ".join(f"[{r['name']}](runs/{r['name']}/analysis/report.md)" for r in metrics["runs"]),
        "",
        "## Wall time",
        "",
        f"Training ran {settings['jobs']} subprocesses at a time, so the training stages overlap; the "
        "total is the demo's wall time after its own imports.",
        "",
        "| stage | seconds |",
        "|---|---:|",
        *[f"| {stage} | {seconds:.1f} |" for stage, seconds in metrics["stage_seconds"].items()],
        f"| **total** | **{metrics['wall_seconds']:.1f}** |",
        "",
    ]
    return "\n".join(lines)


def plot_summary(summary: dict[str, dict[str, dict[str, float]]], path: Path) -> Path:
    """Bar chart of every table metric except times, one bar per method, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(summary)
    columns = [(key, title) for key, title, _ in TABLE_COLUMNS if not key.endswith("_train_s")
               and all(summary[m][key]["mean"] is not None for m in methods)]
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(11, 4))
    for i, method in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(columns))]
        ax.bar(xs, [summary[method][k]["mean"] for k, _ in columns], width,
               yerr=[summary[method][k]["std"] for k, _ in columns], capsize=3,
               label=METHOD_TITLES.get(method, method))
    ax.set_xticks(range(len(columns)), [title for _, title in columns], rotation=20, ha="right")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_title("patch-align demo: stage-1 analysis and stage-2 evaluation per method")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- running


class StageClock:
    """Progress through the demo: one tqdm bar over all stages and a line per finished stage."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.bar = tqdm(total=total, unit="stage", desc="demo", disable=not enabled, dynamic_ncols=True)
        self.enabled = enabled

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def done(self, stage: str, seconds: float, detail: str = "") -> None:
        self.seconds[stage] = seconds
        line = f"[{self.elapsed():7.1f} s] {stage}: {seconds:.1f} s" + (f" - {detail}" if detail else "")
        if self.enabled:
            self.bar.write(line)
        logger.info(line)
        self.bar.update(1)

    def timed(self, stage: str, action: Callable[[], str]) -> None:
        """Run `action` as the stage `stage`; its return value is the stage line's detail."""
        self.bar.set_postfix_str(stage)
        started = time.perf_counter()
        detail = action()
        self.done(stage, time.perf_counter() - started, detail)

    def close(self) -> None:
        self.bar.close()


def subprocess_env(options: DemoOptions) -> dict[str, str]:
    """Environment of the training subprocesses: offline hub, one thread each on CPU, wandb offline."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if options.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    # One thread per process: the runs go in parallel, and OpenMP spin-waiting on shared cores made
    # 2 threads ~20x slower than 1 (measured for the bootstrap, docs/demo.md).
    env.setdefault("OMP_NUM_THREADS", "1")
    if options.report_to == "wandb":
        env.setdefault("WANDB_MODE", "offline")
        env.setdefault("WANDB_PROJECT", "patch-align-demo")
        env.setdefault("WANDB_DIR", str(options.out))
    return env


def run_logged(command: list[str], log_path: Path, env: dict[str, str], stage: str) -> None:
    """Run one subprocess with its output in `log_path`; `DemoError` with the log's tail if it fails."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        log.write(" ".join(command) + "\n\n")
        log.flush()
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode
    if code != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-25:])
        raise DemoError(f"{stage} failed (exit {code}); log {log_path}:\n{tail}")


def trainer_runtime(output_dir: Path) -> float:
    """The Trainer's `train_runtime` (s) from the run's trainer_state.json."""
    state_path = output_dir / "trainer_state.json"
    try:
        history = json.loads(state_path.read_text())["log_history"]
        return float(next(e["train_runtime"] for e in reversed(history) if "train_runtime" in e))
    except (OSError, KeyError, StopIteration, json.JSONDecodeError) as error:
        raise DemoError(f"{state_path}: no train_runtime ({error})") from error


def _cli(argv: list[str], stage: str) -> None:
    from patch_align.cli import main as cli_main

    code = cli_main(argv)
    if code != 0:
        raise DemoError(f"{stage}: `patch-align {' '.join(argv)}` exited with {code}")


@dataclass
class _RunState:
    spec: RunSpec
    train_seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def _train_all(runs: list[_RunState], paths: DemoPaths, options: DemoOptions, clock: StageClock) -> None:
    """Stage 1 then stage 2 of every run, `jobs` subprocesses at a time; a run's stage 2 starts when its
    stage 1 ends. A failure stops the rest unless `keep_going` (the run is then marked failed)."""
    env = subprocess_env(options)
    logs = options.out / "logs"
    jobs = training_jobs(options.jobs, len(runs))
    builders = {"stage 1": stage1_command, "stage 2": stage2_command}

    def train(state: _RunState, stage: str) -> None:
        output_dir = state.spec.stage1 if stage == "stage 1" else state.spec.stage2
        shutil.rmtree(output_dir, ignore_errors=True)
        command = builders[stage](state.spec, paths, options.preset, options.report_to)
        log_name = f"{state.spec.name}-{stage.replace(' ', '')}.log"
        run_logged(command, logs / log_name, env, f"{stage} of {state.spec.name}")

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        pending: dict[Future, tuple[_RunState, str, float]] = {}
        for state in runs:
            pending[pool.submit(train, state, "stage 1")] = (state, "stage 1", time.perf_counter())
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                state, stage, submitted = pending.pop(future)
                try:
                    future.result()
                except DemoError as error:
                    if not options.keep_going:
                        for other in pending:
                            other.cancel()
                        raise
                    state.error = str(error)
                    clock.done(f"{stage} {state.spec.name}", 0.0, f"FAILED, see {logs}")
                    if stage == "stage 1":
                        clock.done(f"stage 2 {state.spec.name}", 0.0, "skipped (stage 1 failed)")
                    continue
                output_dir = state.spec.stage1 if stage == "stage 1" else state.spec.stage2
                state.train_seconds[stage.replace(" ", "")] = trainer_runtime(output_dir)
                clock.done(f"{stage} {state.spec.name}", time.perf_counter() - submitted,
                           f"trainer {state.train_seconds[stage.replace(' ', '')]:.1f} s")
                if stage == "stage 1":
                    pending[pool.submit(train, state, "stage 2")] = (state, "stage 2", time.perf_counter())


def training_jobs(requested: int | None, runs: int) -> int:
    """Training subprocesses at once: the requested number, else one per CPU core, at most one per run."""
    return requested or max(1, min(runs, os.cpu_count() or 1))


def _sea_labels(world: Path, clip: Path, out: Path, cache_key: str) -> Path:
    """SEA vocabulary and offline labels of the pretraining data, kept per bootstrapped CLIP."""
    folder = out / "sea" / cache_key[:16]
    labels = folder / "labels"
    if (labels / "index.json").is_file():
        return labels
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    # min-count 1: the world's vocabulary is closed, every caption word is a label word
    _cli(["sea", "vocab", "--data", str(world / WORLD_FILES["pretrain"]), "--min-count", "1",
          "--out", str(vocab)], "SEA vocabulary")
    _cli(["sea", "label", "--clip", str(clip), "--vocab", str(vocab),
          "--data", str(world / WORLD_FILES["pretrain"]), "--image-folder",
          str(world / WORLD_FILES["image_folder"]), "--out", str(labels), "--image-aspect-ratio", "square"],
         "SEA labels")
    return labels


def run_demo(options: DemoOptions) -> dict[str, Any]:
    """Run the whole demo and write report.md, metrics.json and the figures; returns metrics.json's content.

    Raises `DemoError` when a stage fails (with `keep_going`, only when no run finished).
    """
    import torch
    from transformers.utils import logging as transformers_logging

    # the demo prints one line per stage; the in-process loads' bars and notices would bury them
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    preset = options.preset
    if options.device == "cpu" or not torch.cuda.is_available():
        # in-process analysis and evaluation: one thread, for the reason given in subprocess_env
        torch.set_num_threads(1)
    runs = [_RunState(RunSpec(method, seed, out / "runs" / f"{method}-seed{seed}"))
            for seed in range(options.seeds) for method in options.methods]
    # world, bootstrap, SEA labels, stage 1 + stage 2 + analysis per run, evaluation, report
    total = 2 + ("sea" in options.methods) + 3 * len(runs) + 2
    clock = StageClock(total, options.progress)
    world, boot_dir = out / "world", out / "bootstrap"
    state: dict[str, Any] = {}
    try:
        clock.timed("world", lambda: _world_stage(world, preset, state))
        clock.timed("bootstrap", lambda: _bootstrap_stage(world, boot_dir, preset, state))
        boot = state["bootstrap"]
        paths = DemoPaths(world=world, clip=boot_dir / boot["clip_dir"], llm=boot_dir / boot["llm_dir"])
        if "sea" in options.methods:
            started = time.perf_counter()
            paths = replace(paths, sea_labels=_sea_labels(world, paths.clip, out, boot["cache_key"]))
            clock.done("SEA labels", time.perf_counter() - started, str(paths.sea_labels))
        _train_all(runs, paths, options, clock)
        finished = [r for r in runs if r.error is None]
        if not finished:
            raise DemoError("every training run failed; logs in " + str(out / "logs"))
        for run in finished:
            clock.timed(f"analysis {run.spec.name}", lambda run=run: _analyze(run, paths, options))
        eval_results: dict[str, Any] = {}
        clock.timed("evaluation", lambda: _evaluate(finished, world, options, eval_results))
        result = _report(runs, eval_results, options, clock, state)
    finally:
        clock.close()
    return result


def _world_stage(world: Path, preset: DemoPreset, state: dict[str, Any]) -> str:
    from patch_align.world.generator import make_world

    manifest = make_world(world, preset.world)
    counts = manifest["counts"]
    state["world"] = {"train_images": counts["train"]["images"], "eval_images": counts["eval"]["images"],
                      "spec": manifest["spec"]}
    return f"{counts['train']['images']} train / {counts['eval']['images']} held-out images"


def _bootstrap_stage(world: Path, boot_dir: Path, preset: DemoPreset, state: dict[str, Any]) -> str:
    from patch_align.world.bootstrap import bootstrap_world

    report = bootstrap_world(world, boot_dir, preset.bootstrap)
    state["bootstrap"] = report
    clip, llm = report["clip"], report["llm"]
    return (("cached; " if report["cached"] else "")
            + f"CLIP retrieval {clip['retrieval_top1']:.3f} (chance {clip['retrieval_chance']:.3f}), "
            f"Llama perplexity {llm['perplexity']:.2f}")


def _analyze(run: _RunState, paths: DemoPaths, options: DemoOptions) -> str:
    shutil.rmtree(run.spec.analysis, ignore_errors=True)
    _cli(["analyze", "--model-path", str(run.spec.stage1), "--model-base", str(paths.llm),
          "--pad", str(paths.world / WORLD_FILES["pad_eval"]), "--image-folder", str(paths.image_folder),
          "--out", str(run.spec.analysis), "--device", options.device, "--no-progress"],
         f"analysis of {run.spec.name}")
    metrics = json.loads((run.spec.analysis / "metrics.json").read_text())
    return f"Align mIoU {metrics['alignment']['miou']:.3f}, ΔH {metrics['compression']['delta_h']:.3f}"


def captions_scorable() -> bool:
    """Whether caption metrics can be computed: pycocoevalcap is the optional `eval` extra."""
    return importlib.util.find_spec("pycocoevalcap") is not None


def _evaluate(runs: list[_RunState], world: Path, options: DemoOptions, results: dict[str, Any]) -> str:
    suite_path = options.out / "eval_suite.json"
    suite = eval_suite(world, suite_path.parent, captions=captions_scorable())
    suite_path.write_text(json.dumps(suite, indent=2) + "\n")
    eval_dir = options.out / "eval"
    shutil.rmtree(eval_dir, ignore_errors=True)
    argv = ["eval", "--suite", str(suite_path), "--out", str(eval_dir), "--device", options.device,
            "--batch-size", "32", "--no-progress"]
    for run in runs:
        argv += ["--model-path", f"{run.spec.name}={run.spec.stage2}"]
    if options.preset.eval_limit is not None:
        argv += ["--limit", str(options.preset.eval_limit)]
    _cli(argv, "evaluation")
    results.update(json.loads((eval_dir / "results.json").read_text()))
    return f"{len(runs)} models, results in {eval_dir}"


def _report(runs: list[_RunState], eval_results: dict[str, Any], options: DemoOptions, clock: StageClock,
            state: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    out = options.out
    finished = [r for r in runs if r.error is None]
    skipped = {} if captions_scorable() else {
        "caption_cider": "pycocoevalcap (the eval extra) is not installed: no caption task was run"}
    for key, reason in skipped.items():
        logger.warning("%s not measured: %s", key, reason)
    run_entries = []
    for run in finished:
        analysis = json.loads((run.spec.analysis / "metrics.json").read_text())
        numbers = run_numbers(analysis, eval_results["checkpoints"][run.spec.name], run.train_seconds,
                              run.spec.name, skipped)
        run_entries.append({"name": run.spec.name, "method": run.spec.method, "seed": run.spec.seed,
                            "numbers": numbers, "stage1": str(run.spec.stage1),
                            "stage2": str(run.spec.stage2)})
    seed0 = [r for r in finished if r.spec.seed == 0] or finished[:1]
    _cli(["analyze", "compare", *(str(r.spec.analysis) for r in seed0), "--out", str(out / "comparison")],
         "analysis comparison")
    summary = summarize(run_entries)
    plot_summary(summary, out / "demo_metrics.png")
    boot = state["bootstrap"]
    metrics = {
        "settings": {"preset": options.preset.name, "seeds": options.seeds, "methods": list(options.methods),
                     "device": options.device, "report_to": options.report_to, "out": str(out),
                     "jobs": training_jobs(options.jobs, len(runs)),
                     "stage1": asdict(options.preset.stage1), "stage2": asdict(options.preset.stage2),
                     "eval_limit": options.preset.eval_limit, "bootstrap": asdict(options.preset.bootstrap)},
        "world": state["world"],
        "bootstrap": {"cached": boot["cached"], "clip": boot["clip"], "llm": boot["llm"],
                      "seconds": boot["seconds"]},
        "runs": run_entries,
        "failed_runs": {r.spec.name: r.error for r in runs if r.error is not None},
        "not_measured": skipped,
        "summary": summary,
        "stage_seconds": {},
        "wall_seconds": 0.0,
    }
    clock.done("report", time.perf_counter() - started)
    metrics["stage_seconds"] = dict(clock.seconds)
    metrics["wall_seconds"] = clock.elapsed()
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    (out / "report.md").write_text(format_report(metrics))
    return metrics
