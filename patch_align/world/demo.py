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

from patch_align.world.bootstrap import (
    CLIP_PATCH_SIZE,
    DEFAULT_LLM_VARIANT,
    DEFAULT_SETTINGS,
    QUICK_SETTINGS,
    BootstrapSettings,
    stage2_template,
)
from patch_align.world.cli import add_demo_parser as add_parser  # noqa: F401 (`demo`'s GROUPS entry)
from patch_align.world.generator import WORLD_FILES, WorldSpec
from patch_align.world.scene import SceneSpec

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
    ("pointing_held_out_pairs", "pointing, held-out pairs", "{:.3f}"),
    ("mp_recall_size_words", "MP recall, size words", "{:.3f}"),
    ("mp_recall_relation_words", "MP recall, relation words", "{:.3f}"),
    ("align_miou_stage2", "Align mIoU after stage 2", "{:.3f}"),
    ("pointing_accuracy_stage2", "pointing after stage 2", "{:.3f}"),
    ("rec_acc50", "REC Acc@0.5", "{:.3f}"),
    ("vqa_accuracy", "VQA acc.", "{:.3f}"),
    ("vqa_binding", "binding VQA acc.", "{:.3f}"),
    ("caption_cider", "CIDEr", "{:.3f}"),
    ("stage1_train_s", "stage-1 train s", "{:.1f}"),
    ("stage2_train_s", "stage-2 train s", "{:.1f}"),
)
# (analysis, section, key) of each analysis number: `analysis` names the analyze run (RUN_ANALYSES)
# and (section, key) the number in its metrics.json. A number whose analysis did not run this preset
# is not measured (None).
ANALYSIS_KEYS = {
    "delta_h": ("stage1", "compression", "delta_h"),
    "align_miou": ("stage1", "alignment", "miou"),
    "pointing_accuracy": ("stage1", "alignment", "pointing_accuracy"),
    "mp_precision": ("stage1", "decomposition", "word_precision"),
    "mp_recall": ("stage1", "decomposition", "word_recall"),
    "pointing_held_out_pairs": ("held_out_pairs", "alignment", "pointing_accuracy"),
    "mp_recall_size_words": ("size_words", "decomposition", "word_recall"),
    "mp_recall_relation_words": ("relation_words", "decomposition", "word_recall"),
    "align_miou_stage2": ("stage2", "alignment", "miou"),
    "pointing_accuracy_stage2": ("stage2", "alignment", "pointing_accuracy"),
}
# analysis name → (checkpoint, PAD file key in WORLD_FILES): the stage-1 projector on the held-out
# PAD file and its views (docs/demo.md), and the stage-2 model's projector (does alignment survive?)
RUN_ANALYSES = {
    "stage1": ("stage1", "pad_eval"),
    "held_out_pairs": ("stage1", "pad_eval_held_out_pairs"),
    "size_words": ("stage1", "pad_eval_size_words"),
    "relation_words": ("stage1", "pad_eval_relation_words"),
    "stage2": ("stage2", "pad_eval"),
}
# (suite task name, headline metric) of each evaluation number
EVAL_KEYS = {"rec_acc50": ("rec", "acc@0.5"), "vqa_accuracy": ("vqa", "exact_match"),
             "caption_cider": ("caption", "CIDEr")}
# the table number → VQA category group of `verdicts.vqa_by_category`
VQA_CATEGORY_KEYS = {"vqa_binding": "binding"}


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
    `stage2_eval_every`: save stage 2 every N steps and evaluate those checkpoints on the first
    `curve_eval_limit` questions of REC and VQA (learning curves); None: the final model only.
    `analyses`: the `RUN_ANALYSES` run per run. `model_max_length`: the training sequence length.
    """

    name: str
    world: WorldSpec
    bootstrap: BootstrapSettings
    stage1: StageSettings
    stage2: StageSettings
    eval_limit: int | None = None
    stage2_eval_every: int | None = None
    curve_eval_limit: int | None = None
    analyses: tuple[str, ...] = ("stage1",)
    model_max_length: int = 256

    def __post_init__(self) -> None:
        unknown = [a for a in self.analyses if a not in RUN_ANALYSES]
        if unknown or "stage1" not in self.analyses:
            raise ValueError(f"preset {self.name}: analyses must include stage1 and name some of "
                             f"{list(RUN_ANALYSES)}, got {list(self.analyses)}")
        grid, snap = self.bootstrap.clip_image_size // CLIP_PATCH_SIZE, self.world.rec_answer_grid
        if snap not in (0, grid):
            raise ValueError(f"preset {self.name}: rec_answer_grid {snap} is not the CLIP's {grid}×{grid} "
                             "patch grid (0: exact boxes)")
        every = self.stage2_eval_every
        if every is not None and not 0 < every < self.stage2.steps:
            raise ValueError(f"preset {self.name}: stage2_eval_every must be in (0, {self.stage2.steps}), "
                             f"got {every}")


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
# The world of `--full` and the studies (docs/demo.md §1 and "Calibration"): near-square images, so the
# 6×6 patch grid leaves a grid-snapped REC oracle ceiling of about 0.8 (default world: 0.65); 2-3
# objects; binding questions; two colour-shape pairs, picked before any run, left out of the training
# PAD labels. REC made learnable for the tiny models, each change calibrated with caption-only runs
# alone: box answers snapped to the 6×6 grid the model reads, six REC conversations per image, and a
# CLIP whose position embeddings start as a 2D sine-cosine table (the default CLIP's patches barely
# know their row or column). Stage 2 at 2e-3 for 800 steps: the shortest after which caption-only
# VQA and REC clear their blind baselines.
FULL_WORLD = WorldSpec(n_train=2000, n_eval=200, scene=SceneSpec(min_size=96, max_size=128, objects_max=3),
                       binding_per_image=2, held_out_pairs=("green diamond", "purple circle"),
                       rec_answer_grid=6, rec_records_per_image=6)
FULL_PRESET = DemoPreset(
    name="full", world=FULL_WORLD, bootstrap=replace(DEFAULT_SETTINGS, clip_position_scale=1.0),
    stage1=StageSettings(steps=150, batch_size=16, learning_rate=1e-3),
    stage2=StageSettings(steps=800, batch_size=16, learning_rate=2e-3),
    stage2_eval_every=200, curve_eval_limit=150, analyses=tuple(RUN_ANALYSES), model_max_length=320)


@dataclass(frozen=True)
class DemoOptions:
    """One demo run. `device`: auto, cpu or cuda. `jobs`: training subprocesses at once (None: one
    per CPU core, at most one per run). `report_to`: none or wandb (offline unless WANDB_MODE is set).
    `study`: a `studies.Study` whose runs replace the methods (its preset is the one to pass)."""

    out: Path
    preset: DemoPreset = DEFAULT_PRESET
    seeds: int = 1
    methods: tuple[str, ...] = METHODS
    report_to: str = "none"
    device: str = "auto"
    keep_going: bool = False
    jobs: int | None = None
    progress: bool = True
    study: Any = None

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
    """One method at one seed; its folders live under `root`.

    A study's run also has a `variant` (its name instead of the method's), flags that replace or
    add to the method's stage-1 / stage-2 flags, and may start stage 2 from the stage 1 of the run
    whose folder is `stage1_root` (the same projector under another stage-2 treatment).
    """

    method: str
    seed: int
    root: Path
    variant: str = ""
    stage1_flags: tuple[str, ...] = ()
    stage2_flags: tuple[str, ...] = ()
    stage1_root: Path | None = None

    @property
    def name(self) -> str:
        return f"{self.variant or self.method}-seed{self.seed}"

    @property
    def owns_stage1(self) -> bool:
        return self.stage1_root is None

    @property
    def stage1(self) -> Path:
        return (self.stage1_root or self.root) / "stage1"

    @property
    def stage2(self) -> Path:
        return self.root / "stage2"

    @property
    def analysis(self) -> Path:
        return self.root / "analysis"


# ---------------------------------------------------------------- commands (pure)


def with_flags(command: list[str], flags: Sequence[str]) -> list[str]:
    """`command` with each `--flag value` pair of `flags` replacing that flag's value, or appended."""
    if len(flags) % 2 or not all(f.startswith("--") for f in flags[::2]):
        raise ValueError(f"flags must be '--flag value' pairs, got {list(flags)}")
    command = list(command)
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        if flag in command:
            command[command.index(flag) + 1] = value
        else:
            command += [flag, value]
    return command


def _shared_flags(paths: DemoPaths, stage: StageSettings, run: RunSpec, output_dir: Path,
                  report_to: str, model_max_length: int) -> list[str]:
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
        "--model_max_length", str(model_max_length),
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
               *_shared_flags(paths, preset.stage1, run, run.stage1, report_to, preset.model_max_length)]
    if run.method == "patch_align":
        command += ["--pad_path", str(world / WORLD_FILES["pad_train"]), "--patch_loss_weight", "5.0",
                    "--patch_beta_schedule", "linear"]
    elif run.method == "sea":
        if paths.sea_labels is None:
            raise ValueError("the sea method needs SEA labels (DemoPaths.sea_labels)")
        command += ["--align_objective", "sea", "--sea_labels", str(paths.sea_labels),
                    "--sea_loss_weight", "1.0", "--sea_lambda_schedule", "constant"]
    return with_flags(command, run.stage1_flags)


def stage2_command(run: RunSpec, paths: DemoPaths, preset: DemoPreset, report_to: str = "none") -> list[str]:
    """The stage-2 (instruction tuning) command line from the run's stage-1 projector: upstream's
    finetune.sh flags (v1 template, or the bootstrapped family's; pad geometry, modality-grouped
    batches) on the world's instructions. With `preset.stage2_eval_every`, the model is also saved
    every that many steps (weights only) for the learning curves."""
    command = [sys.executable, "-m", "llava.train.train",
               "--version", stage2_template(preset.bootstrap),
               "--data_path", str(paths.world / WORLD_FILES["instruct"]),
               "--pretrain_mm_mlp_adapter", str(run.stage1 / "mm_projector.bin"),
               "--image_aspect_ratio", "pad",
               "--group_by_modality_length", "True",
               *_shared_flags(paths, preset.stage2, run, run.stage2, report_to, preset.model_max_length)]
    if preset.stage2_eval_every is not None:
        every = str(preset.stage2_eval_every)
        command = with_flags(command, ["--save_strategy", "steps", "--save_steps", every,
                                       "--save_only_model", "True"])
    return with_flags(command, run.stage2_flags)


def eval_conv_mode(settings: BootstrapSettings) -> str:
    """The template the demo evaluates stage 2 with: llava_v1 for the world's Llama (as always), else
    the bootstrapped family's own template, the one its stage 2 trained with."""
    return "llava_v1" if settings.llm_variant == DEFAULT_LLM_VARIANT else stage2_template(settings)


def eval_suite(world: Path, suite_folder: Path, captions: bool = True,
               slot_words: Sequence[str] | None = None, conv_mode: str = "llava_v1") -> dict[str, Any]:
    """The `patch-align eval` suite of the world's held-out files: REC (Acc@0.5), VQA (exact match,
    one answer per question, hence the `gqa` task type) and, if `captions`, captions (CIDEr).

    With `slot_words` (the world's attribute words), every task also gets its blind baseline, fit on
    the world's instruct.json (`baseline_train`; docs/evaluation.md). REC may generate twice the 24
    tokens of a box answer, so a longer answer is seen as such, not cut to a box.

    Paths are written relative to `suite_folder`, the folder the suite file will be in: the suite
    runner resolves them against it, so the demo's output folder can be moved as a whole."""

    def file(key: str) -> str:
        return os.path.relpath(Path(world).absolute() / WORLD_FILES[key], Path(suite_folder).absolute())

    folder = file("image_folder")
    baseline = {} if slot_words is None else {"baseline_train": file("instruct"),
                                              "baseline_slot_words": list(slot_words)}
    tasks = [
        {"name": "rec", "type": "rec", "question_file": file("rec_questions"),
         "image_folder": folder, "max_new_tokens": 48, **baseline},
        {"name": "vqa", "type": "gqa", "question_file": file("vqa_questions"),
         "annotation_file": file("vqa_answers"), "image_folder": folder, "max_new_tokens": 8, **baseline},
    ]
    if captions:
        tasks.append({"name": "caption", "type": "caption", "question_file": file("caption_questions"),
                      "annotation_file": file("caption_references"), "image_folder": folder,
                      "max_new_tokens": 40, **baseline})
    return {"defaults": {"conv_mode": conv_mode}, "tasks": tasks}


# ---------------------------------------------------------------- numbers (pure)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1; 0.0 for a single value)."""
    if not values:
        raise ValueError("mean_std of no values")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _finite(value: Any, run_name: str, key: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise DemoError(f"run {run_name}: {key} is {value!r}, not a finite number")
    return float(value)


def run_numbers(analyses: dict[str, dict[str, Any]], eval_checkpoint: dict[str, Any],
                train_seconds: dict[str, float], run_name: str, skipped: Collection[str] = (),
                vqa_categories: dict[str, dict[str, float]] | None = None) -> dict[str, float | None]:
    """The table numbers of one run from its analyze metrics.json files, its `patch-align eval` entry
    and its VQA accuracy per category (`verdicts.vqa_by_category`).

    `analyses`: analysis name (RUN_ANALYSES) → that analyze run's metrics.json content. A number whose
    source did not run (an analysis not in `analyses`, a category the world does not ask) or that is
    named in `skipped` is None (not measured). Raises `DemoError` naming the run and the number when
    any other one is missing or not finite.
    """
    numbers: dict[str, float | None] = {}
    for key, (analysis, section, name) in ANALYSIS_KEYS.items():
        if analysis not in analyses or key in skipped:
            numbers[key] = None
            continue
        numbers[key] = _finite(analyses[analysis].get(section, {}).get(name), run_name, key)
    for key, (task, metric) in EVAL_KEYS.items():
        value = eval_checkpoint.get("tasks", {}).get(task, {}).get("metrics", {}).get(metric)
        numbers[key] = None if key in skipped else _finite(value, run_name, key)
    for key, group in VQA_CATEGORY_KEYS.items():
        entry = (vqa_categories or {}).get(group)
        numbers[key] = None if entry is None or key in skipped else _finite(entry["accuracy"], run_name, key)
    for stage in ("stage1", "stage2"):
        key = f"{stage}_train_s"
        numbers[key] = None if key in skipped else _finite(train_seconds.get(stage), run_name, key)
    return numbers


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """group → table key → {mean, std, n} over the runs' seeds; runs are `{"method", "numbers"}` dicts,
    grouped by their `group` (a study's variant) when they have one, else by method.

    A number no run measured (None, see `run_numbers`) has mean and std None and n 0."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    group_of = [r.get("group", r["method"]) for r in runs]
    for group in dict.fromkeys(group_of):
        numbers = [r["numbers"] for r, g in zip(runs, group_of, strict=True) if g == group]
        summary[group] = {}
        for key, _, _ in TABLE_COLUMNS:
            values = [n[key] for n in numbers if n[key] is not None]
            mean, std = mean_std(values) if values else (None, None)
            summary[group][key] = {"mean": mean, "std": std, "n": len(values)}
    return summary


def baselines_of(analyses: Sequence[dict[str, dict[str, Any]]], blind: dict[str, float]) -> dict[str, float]:
    """The baseline of each table number: chance Align mIoU / pointing from the analyze runs (they
    depend only on the masks, so every run's are equal; the first run's are taken), the matching-pursuit
    recall of atoms drawn at random (atoms used per patch / dictionary words: the chance that a given
    word is among them, whatever its sign), the blind downstream levels in `blind` (REC constant box,
    VQA majority answers per template, ...), and 0 for ΔH (no compression)."""
    baselines = {"delta_h": 0.0, **blind}
    chance = {"align_miou": ("stage1", "chance_miou"),
              "pointing_accuracy": ("stage1", "chance_pointing_accuracy"),
              "pointing_held_out_pairs": ("held_out_pairs", "chance_pointing_accuracy"),
              "align_miou_stage2": ("stage2", "chance_miou"),
              "pointing_accuracy_stage2": ("stage2", "chance_pointing_accuracy")}
    for key, (analysis, name) in chance.items():
        value = analyses[0].get(analysis, {}).get("alignment", {}).get(name) if analyses else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            baselines[key] = float(value)
    pursuit = {"mp_recall": "stage1", "mp_recall_size_words": "size_words",
               "mp_recall_relation_words": "relation_words"}
    for key, analysis in pursuit.items():
        metrics = analyses[0].get(analysis) if analyses else None
        if metrics:
            atoms, words = metrics["decomposition"]["mean_atoms_used"], metrics["dictionary"]["words"]
            baselines[key] = min(1.0, float(atoms) / words)
    return baselines


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
    stage 1 ends (a run sharing another's stage 1 waits for that one). A failure stops the rest unless
    `keep_going` (the run and the runs sharing its stage 1 are then marked failed)."""
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

    def sharing(state: _RunState) -> list[_RunState]:
        """The runs whose stage 2 starts from `state`'s stage 1: itself and those sharing it."""
        return [state, *(r for r in runs if r.spec.stage1_root == state.spec.root)]

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        pending: dict[Future, tuple[_RunState, str, float]] = {}
        for state in runs:
            if state.spec.owns_stage1:
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
                    clock.done(f"{stage} {state.spec.name}", 0.0, f"FAILED, see {logs}")
                    for failed in sharing(state) if stage == "stage 1" else [state]:
                        failed.error = str(error)
                        if stage == "stage 1":
                            clock.done(f"stage 2 {failed.spec.name}", 0.0, "skipped (stage 1 failed)")
                    continue
                output_dir = state.spec.stage1 if stage == "stage 1" else state.spec.stage2
                seconds = trainer_runtime(output_dir)
                clock.done(f"{stage} {state.spec.name}", time.perf_counter() - submitted,
                           f"trainer {seconds:.1f} s")
                if stage == "stage 2":
                    state.train_seconds["stage2"] = seconds
                    continue
                for follower in sharing(state):
                    follower.train_seconds["stage1"] = seconds
                    future = pool.submit(train, follower, "stage 2")
                    pending[future] = (follower, "stage 2", time.perf_counter())


def training_jobs(requested: int | None, runs: int) -> int:
    """Training subprocesses at once: the requested number, else one per CPU core, at most one per run."""
    return requested or max(1, min(runs, os.cpu_count() or 1))


def _sea_labels(world: Path, clip: Path, out: Path, cache_key: str) -> tuple[Path, dict[str, Any]]:
    """SEA vocabulary and offline labels of the pretraining data, kept per bootstrapped CLIP, with the
    label sign chosen by measured precision on the held-out images (`sea_check`); returns the label
    folder and the measurement (both signs' precision and recall, the chosen sign, top-n)."""
    from patch_align.sea.labeling import SIGNS
    from patch_align.sea.vocab import read_word_list
    from patch_align.world.sea_check import SEA_TOP_N, SIGN_FILE, choose_sign, world_label_quality

    folder = out / "sea" / cache_key[:16]
    labels = folder / "labels"
    if (labels / "index.json").is_file() and (folder / SIGN_FILE).is_file():
        return labels, json.loads((folder / SIGN_FILE).read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    vocab = folder / "vocab.txt"
    # min-count 1: the world's vocabulary is closed, every caption word is a label word
    _cli(["sea", "vocab", "--data", str(world / WORLD_FILES["pretrain"]), "--min-count", "1",
          "--out", str(vocab)], "SEA vocabulary")

    def label(data_key: str, sign: str, target: Path) -> None:
        _cli(["sea", "label", "--clip", str(clip), "--vocab", str(vocab),
              "--data", str(world / WORLD_FILES[data_key]),
              "--image-folder", str(world / WORLD_FILES["image_folder"]), "--out", str(target),
              "--image-aspect-ratio", "square", "--sign", sign, "--top-n", str(SEA_TOP_N)],
             f"SEA labels ({sign})")

    quality = {}
    for sign in SIGNS:
        label("pretrain_eval", sign, folder / f"held-out-{sign}")
        quality[sign] = world_label_quality(folder / f"held-out-{sign}", world, clip)
    chosen = choose_sign(quality)
    label("pretrain", chosen, labels)
    report = {"signs": quality, "chosen": chosen, "top_n": SEA_TOP_N,
              "vocabulary": len(read_word_list(vocab))}
    (folder / SIGN_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return labels, report


def run_specs(options: DemoOptions) -> list[RunSpec]:
    """Every run of the demo: the study's runs, or each method, at seeds 0..seeds-1."""
    if options.study is not None:
        return options.study.run_specs(options.seeds, options.out)
    return [RunSpec(method, seed, options.out / "runs" / f"{method}-seed{seed}")
            for seed in range(options.seeds) for method in options.methods]


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
    runs = [_RunState(spec) for spec in run_specs(options)]
    methods = {r.spec.method for r in runs}
    # world, bootstrap, SEA labels, stage 1 (own ones) + stage 2 + analysis per run, evaluation,
    # learning curves, report
    total = (2 + ("sea" in methods) + sum(r.spec.owns_stage1 for r in runs) + 2 * len(runs) + 1
             + (preset.stage2_eval_every is not None) + 1)
    clock = StageClock(total, options.progress)
    world, boot_dir = out / "world", out / "bootstrap"
    state: dict[str, Any] = {}
    try:
        clock.timed("world", lambda: _world_stage(world, preset, state))
        clock.timed("bootstrap", lambda: _bootstrap_stage(world, boot_dir, preset, state))
        boot = state["bootstrap"]
        paths = DemoPaths(world=world, clip=boot_dir / boot["clip_dir"], llm=boot_dir / boot["llm_dir"])
        if "sea" in methods:
            started = time.perf_counter()
            labels, state["sea_labels"] = _sea_labels(world, paths.clip, out, boot["cache_key"])
            paths = replace(paths, sea_labels=labels)
            clock.done("SEA labels", time.perf_counter() - started,
                       f"sign {state['sea_labels']['chosen']}, {labels}")
        _train_all(runs, paths, options, clock)
        finished = [r for r in runs if r.error is None]
        if not finished:
            raise DemoError("every training run failed; logs in " + str(out / "logs"))
        state["analyses"], state["skipped_analyses"] = analyses_to_run(preset.analyses, world)
        for run in finished:
            clock.timed(f"analysis {run.spec.name}",
                        lambda run=run: _analyze(run, paths, options, state["analyses"]))
        eval_results: dict[str, Any] = {}
        clock.timed("evaluation", lambda: _evaluate(finished, world, options, eval_results))
        if preset.stage2_eval_every is not None:
            clock.timed("learning curves", lambda: _curves(finished, paths, options, state))
        result = _report(runs, eval_results, options, clock, state)
    finally:
        clock.close()
    return result


def _world_stage(world: Path, preset: DemoPreset, state: dict[str, Any]) -> str:
    from llava.eval.eval_vqa import read_jsonl
    from patch_align.world.generator import make_world
    from patch_align.world.oracle import oracle_rec_ceiling

    manifest = make_world(world, preset.world)
    counts = manifest["counts"]
    grid = preset.bootstrap.clip_image_size // CLIP_PATCH_SIZE
    oracle = oracle_rec_ceiling(read_jsonl(world / WORLD_FILES["rec_questions"]), grid)
    state["world"] = {"train_images": counts["train"]["images"], "eval_images": counts["eval"]["images"],
                      "spec": manifest["spec"], "counts": counts, "rec_oracle": oracle}
    return (f"{counts['train']['images']} train / {counts['eval']['images']} held-out images; "
            f"REC oracle ceiling {oracle['accuracy']:.3f} on the {grid}x{grid} grid")


def _bootstrap_stage(world: Path, boot_dir: Path, preset: DemoPreset, state: dict[str, Any]) -> str:
    from patch_align.world.bootstrap import bootstrap_world

    report = bootstrap_world(world, boot_dir, preset.bootstrap)
    state["bootstrap"] = report
    clip, llm = report["clip"], report["llm"]
    return (("cached; " if report["cached"] else "")
            + f"CLIP retrieval {clip['retrieval_top1']:.3f} (chance {clip['retrieval_chance']:.3f}), "
            f"Llama perplexity {llm['perplexity']:.2f}")


def analysis_folder(run: RunSpec, analysis: str) -> Path:
    """Where one analysis of a run goes: `analysis/` for the stage-1 one, `analysis-<name>/` otherwise."""
    return run.analysis if analysis == "stage1" else run.root / f"analysis-{analysis.replace('_', '-')}"


def analyses_to_run(analyses: Sequence[str], world: Path) -> tuple[list[str], dict[str, str]]:
    """The analyses whose PAD file has a region (a small world may hold no held-out pair among its
    held-out images), and why each other one is skipped."""
    from patch_align.pad import load_pad_index

    kept, skipped = [], {}
    for analysis in analyses:
        pad_file = world / WORLD_FILES[RUN_ANALYSES[analysis][1]]
        if any(record.regions for record in load_pad_index(pad_file).values()):
            kept.append(analysis)
        else:
            skipped[analysis] = f"{pad_file} has no region (no held-out image shows one)"
            logger.warning("analysis %s skipped: %s", analysis, skipped[analysis])
    return kept, skipped


def _analyze(run: _RunState, paths: DemoPaths, options: DemoOptions, analyses: Sequence[str]) -> str:
    for analysis in analyses:
        checkpoint, pad_key = RUN_ANALYSES[analysis]
        folder = analysis_folder(run.spec, analysis)
        shutil.rmtree(folder, ignore_errors=True)
        if checkpoint == "stage1":
            model = ["--model-path", str(run.spec.stage1), "--model-base", str(paths.llm)]
        else:
            model = ["--model-path", str(run.spec.stage2)]
        _cli(["analyze", *model, "--pad", str(paths.world / WORLD_FILES[pad_key]),
              "--image-folder", str(paths.image_folder), "--out", str(folder), "--device", options.device,
              "--no-progress"], f"{analysis} analysis of {run.spec.name}")
    metrics = json.loads((run.spec.analysis / "metrics.json").read_text())
    return f"Align mIoU {metrics['alignment']['miou']:.3f}, ΔH {metrics['compression']['delta_h']:.3f}"


def captions_scorable() -> bool:
    """Whether caption metrics can be computed: pycocoevalcap is the optional `eval` extra."""
    return importlib.util.find_spec("pycocoevalcap") is not None


def _slot_words(spec: dict[str, Any]) -> list[str]:
    """The words a question template abstracts for the blind baselines: the world's attribute words."""
    scene = spec["scene"]
    return [*scene["colours"], *scene["shapes"], *scene["sizes"]]


def _evaluate(runs: list[_RunState], world: Path, options: DemoOptions, results: dict[str, Any]) -> str:
    suite_path = options.out / "eval_suite.json"
    spec = json.loads((world / "world.json").read_text())["spec"]
    suite = eval_suite(world, suite_path.parent, captions=captions_scorable(), slot_words=_slot_words(spec),
                       conv_mode=eval_conv_mode(options.preset.bootstrap))
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


def checkpoint_steps(stage2: Path, final_step: int) -> list[tuple[int, Path]]:
    """(step, folder) of the stage-2 checkpoints saved for the learning curves, then the final model."""
    saved = []
    for folder in stage2.glob("checkpoint-*"):
        step = folder.name.removeprefix("checkpoint-")
        if step.isdigit():
            saved.append((int(step), folder))
    return [*sorted(s for s in saved if s[0] < final_step), (final_step, stage2)]


def _vqa_categories(answers_file: Path, world: Path) -> dict[str, dict[str, float]]:
    from llava.eval.eval_vqa import load_answer_texts, read_jsonl
    from patch_align.world.verdicts import vqa_by_category

    return vqa_by_category(load_answer_texts(answers_file), read_jsonl(world / WORLD_FILES["vqa_answers"]))


def _answer_nll(checkpoint: Path, world: Path, records: list[dict[str, Any]],
                device: str, conv_mode: str) -> dict[str, float]:
    """Held-out teacher-forced answer NLL (nats/token) per task of one stage-2 checkpoint."""
    import torch

    from llava.model.builder import load_pretrained_model
    from patch_align.evaluation.nll import answer_nll

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer, model, image_processor, _ = load_pretrained_model(
        str(checkpoint), None, checkpoint.name, device_map=None, device=device)
    model.eval()
    with torch.inference_mode():
        groups = answer_nll((tokenizer, model, image_processor), records, world / WORLD_FILES["image_folder"],
                            conv_mode)
    return {f"nll_{task}": entry["mean_nll"] for task, entry in groups.items()}


def _curves(runs: list[_RunState], paths: DemoPaths, options: DemoOptions, state: dict[str, Any]) -> str:
    """Evaluate every run's saved stage-2 checkpoints (and its final model) on the first
    `curve_eval_limit` REC and VQA questions, and their held-out answer NLL on as many instruction
    records; state["curves"]: run → [{step, rec_acc50, vqa_accuracy, vqa_binding, nll_<task>}]."""
    preset, world = options.preset, paths.world
    suite_path = options.out / "eval_suite_curves.json"
    conv_mode = eval_conv_mode(preset.bootstrap)
    suite = eval_suite(world, suite_path.parent, captions=False, conv_mode=conv_mode)
    suite_path.write_text(json.dumps(suite, indent=2) + "\n")
    curve_dir = options.out / "eval_curves"
    shutil.rmtree(curve_dir, ignore_errors=True)
    points = {run.spec.name: checkpoint_steps(run.spec.stage2, preset.stage2.steps) for run in runs}
    argv = ["eval", "--suite", str(suite_path), "--out", str(curve_dir), "--device", options.device,
            "--batch-size", "32", "--no-progress", "--limit", str(preset.curve_eval_limit)]
    for name, steps in points.items():
        argv += [f"--model-path={name}-step{step}={folder}" for step, folder in steps]
    _cli(argv, "learning-curve evaluation")
    results = json.loads((curve_dir / "results.json").read_text())["checkpoints"]
    records = json.loads((world / WORLD_FILES["instruct_eval"]).read_text())[:preset.curve_eval_limit]
    curves = {}
    for name, steps in points.items():
        curves[name] = []
        for step, folder in steps:
            label = f"{name}-step{step}"
            tasks = results[label]["tasks"]
            categories = _vqa_categories(curve_dir / label / "vqa" / "answers.jsonl", world)
            curves[name].append({"step": step, "rec_acc50": tasks["rec"]["metrics"]["acc@0.5"],
                                 "vqa_accuracy": tasks["vqa"]["metrics"]["exact_match"],
                                 "vqa_binding": categories.get("binding", {}).get("accuracy"),
                                 **_answer_nll(folder, world, records, options.device, conv_mode)})
    state["curves"] = curves
    return f"{sum(len(s) for s in points.values())} checkpoints in {curve_dir}"


def blind_baselines(eval_results: dict[str, Any], world: Path) -> tuple[dict[str, float], dict[str, str]]:
    """The blind downstream levels of the table's evaluation numbers and how each was fit: the eval's
    own task baselines (constant REC box, majority answer per VQA template, most common caption, fit on
    instruct.json) and the binding questions' share of the VQA majority answers."""
    from llava.eval.eval_vqa import read_jsonl
    from patch_align.evaluation.baselines import majority_answers, qa_pairs
    from patch_align.world.verdicts import vqa_by_category

    values, sources = {}, {}
    task_baselines = eval_results.get("baselines", {})
    for key, (task, metric) in EVAL_KEYS.items():
        entry = task_baselines.get(task)
        if entry is not None and metric in entry["metrics"]:
            values[key] = float(entry["metrics"][metric])
            sources[key] = entry["method"]
    spec = json.loads((world / "world.json").read_text())["spec"]
    if spec.get("binding_per_image"):
        pairs = qa_pairs(r for r in json.loads((world / WORLD_FILES["instruct"]).read_text())
                         if r["id"].endswith("-vqa"))
        fit = majority_answers(pairs, read_jsonl(world / WORLD_FILES["vqa_questions"]), _slot_words(spec))
        binding = vqa_by_category(fit.answers, read_jsonl(world / WORLD_FILES["vqa_answers"])).get("binding")
        if binding is not None:
            values["vqa_binding"] = binding["accuracy"]
            sources["vqa_binding"] = "most common train answer per question template, binding questions"
    return values, sources


def _report(runs: list[_RunState], eval_results: dict[str, Any], options: DemoOptions, clock: StageClock,
            state: dict[str, Any]) -> dict[str, Any]:
    from patch_align.world.demo_report import format_report, plot_curves, plot_study, plot_summary

    started = time.perf_counter()
    out = options.out
    finished = [r for r in runs if r.error is None]
    skipped = {} if captions_scorable() else {
        "caption_cider": "pycocoevalcap (the eval extra) is not installed: no caption task was run"}
    for key, reason in skipped.items():
        logger.warning("%s not measured: %s", key, reason)
    skipped |= {key: reason for analysis, reason in state["skipped_analyses"].items()
                for key, (source, _, _) in ANALYSIS_KEYS.items() if source == analysis}
    run_entries, all_analyses = [], []
    for run in finished:
        analyses = {a: json.loads((analysis_folder(run.spec, a) / "metrics.json").read_text())
                    for a in state["analyses"]}
        all_analyses.append(analyses)
        categories = _vqa_categories(out / "eval" / run.spec.name / "vqa" / "answers.jsonl", out / "world")
        numbers = run_numbers(analyses, eval_results["checkpoints"][run.spec.name], run.train_seconds,
                              run.spec.name, skipped, categories)
        run_entries.append({"name": run.spec.name, "method": run.spec.method, "group": run.spec.variant
                            or run.spec.method, "seed": run.spec.seed, "numbers": numbers,
                            "vqa_categories": categories, "stage1": str(run.spec.stage1),
                            "stage2": str(run.spec.stage2)})
    seed0 = [r for r in finished if r.spec.seed == 0] or finished[:1]
    _cli(["analyze", "compare", *(str(r.spec.analysis) for r in seed0), "--out", str(out / "comparison")],
         "analysis comparison")
    summary = summarize(run_entries)
    blind, sources = blind_baselines(eval_results, out / "world")
    baselines = baselines_of(all_analyses, blind)
    sources = {"ΔH": "0 (no compression)", "Align mIoU and pointing": "chance of a uniform random label per "
               "patch over the image's labels (patch-align analyze)",
               "MP recall": "atoms used per patch / dictionary words (random atoms, either sign)", **sources}
    study = options.study
    study_entry = None if study is None else {
        "name": study.name, "question": study.question, "x": study.x, "series": study.series,
        "figure_keys": list(study.figure_keys), "runs": {r.variant: dict(r.params) for r in study.runs}}
    if study_entry is None:
        plot_summary(summary, out / "demo_metrics.png", baselines)
    else:
        plot_study(summary, study_entry, out / "study.png", baselines)
    curves = state.get("curves")
    if curves:
        plot_curves(curves, {r["name"]: r["group"] for r in run_entries}, out / "learning_curves.png",
                    baselines)
    boot = state["bootstrap"]
    metrics = {
        "settings": {"preset": options.preset.name, "study": None if study is None else study.name,
                     "seeds": options.seeds, "methods": sorted({r.spec.method for r in runs}),
                     "device": options.device, "report_to": options.report_to, "out": str(out),
                     "jobs": training_jobs(options.jobs, len(runs)),
                     "stage1": asdict(options.preset.stage1), "stage2": asdict(options.preset.stage2),
                     "eval_limit": options.preset.eval_limit,
                     "stage2_eval_every": options.preset.stage2_eval_every,
                     "curve_eval_limit": options.preset.curve_eval_limit,
                     "analyses": list(options.preset.analyses),
                     "bootstrap": asdict(options.preset.bootstrap)},
        "world": state["world"],
        "bootstrap": {"cached": boot["cached"], "clip": boot["clip"], "llm": boot["llm"],
                      "seconds": boot["seconds"]},
        "sea_labels": state.get("sea_labels"),
        "study": study_entry,
        "runs": run_entries,
        "failed_runs": {r.spec.name: r.error for r in runs if r.error is not None},
        "not_measured": skipped,
        "summary": summary,
        "baselines": baselines,
        "baseline_sources": sources,
        "curves": curves,
        "stage_seconds": {},
        "wall_seconds": 0.0,
    }
    clock.done("report", time.perf_counter() - started)
    metrics["stage_seconds"] = dict(clock.seconds)
    metrics["wall_seconds"] = clock.elapsed()
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    (out / "report.md").write_text(format_report(metrics))
    return metrics
