"""Run a suite over checkpoints: answer every task (resumably), score it, and time both.

    OUT/<checkpoint>/<task>/answers.jsonl   upstream answer records, appended per answer
    OUT/<checkpoint>/<task>/scores.json     the scorer's full output (failure lists included)

Every task's files are read and checked before the first model loads; a checkpoint whose
tasks are all answered already is not loaded at all.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patch_align.evaluation.answering import answer_questions, pending_questions
from patch_align.evaluation.scoring import (
    PreparedTask,
    failure_count,
    headline_metrics,
    prepare_task,
    score_task,
)
from patch_align.evaluation.suite import Suite, SuiteError, check_suite_files, is_safe_name

logger = logging.getLogger(__name__)

ANSWERS_FILE = "answers.jsonl"
SCORES_FILE = "scores.json"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint to evaluate: `name` labels its results (and names its output folder)."""

    name: str
    path: str


def parse_checkpoint(value: str) -> Checkpoint:
    """`--model-path` value → Checkpoint: `NAME=PATH` names it, a bare PATH is named by its folder.

    The split happens at the first `=` only when what precedes it is a folder-safe name.
    """
    from llava.mm_utils import get_model_name_from_path

    name, sep, path = value.partition("=")
    if sep and is_safe_name(name) and path:
        return Checkpoint(name=name, path=path)
    return Checkpoint(name=get_model_name_from_path(value), path=value)


def check_checkpoints(checkpoints: list[Checkpoint]) -> None:
    """Names must be unique and folder-safe; then each path must be a checkpoint folder (model
    weights, LoRA adapter or projector, with its config.json), or a hub id this machine can get."""
    from llava.model.checkpoints import detect_checkpoint_kind, read_config_dict
    from llava.paths import resolve_model_path

    seen: dict[str, str] = {}
    for checkpoint in checkpoints:
        if not is_safe_name(checkpoint.name):
            raise SuiteError(f"checkpoint name {checkpoint.name!r} cannot be a folder name; "
                             "give one as --model-path NAME=PATH")
        if checkpoint.name in seen:
            raise SuiteError(f"checkpoints {seen[checkpoint.name]} and {checkpoint.path} are both named "
                             f"{checkpoint.name!r}; name them apart with --model-path NAME=PATH")
        seen[checkpoint.name] = checkpoint.path
    for checkpoint in checkpoints:
        try:
            folder = resolve_model_path(checkpoint.path, None, "--model-path")
        except OSError as error:
            raise SuiteError(f"checkpoint {checkpoint.name!r}: {error}") from error
        if not Path(folder).is_dir():
            raise SuiteError(f"checkpoint {checkpoint.name!r}: folder not found: {checkpoint.path}")
        try:
            detect_checkpoint_kind(folder)
            read_config_dict(folder)
        except json.JSONDecodeError as error:
            raise SuiteError(f"checkpoint {checkpoint.name!r}: {Path(checkpoint.path) / 'config.json'} "
                             f"is not valid JSON ({error})") from error
        except (OSError, ValueError) as error:
            raise SuiteError(f"checkpoint {checkpoint.name!r}: {error}") from error


def _load_checkpoint(checkpoint: Checkpoint, model_base: str | None, device: str) -> tuple[Any, Any, Any]:
    from llava.eval.run_llava import resolve_device
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model

    # The loader tells the checkpoint kind from its files; the name is only a hint.
    tokenizer, model, image_processor, _ = load_pretrained_model(
        checkpoint.path, model_base, get_model_name_from_path(checkpoint.path), device=resolve_device(device)
    )
    model.eval()
    return tokenizer, model, image_processor


def _evaluate_checkpoint(
    checkpoint: Checkpoint,
    tasks: list[PreparedTask],
    out_dir: Path,
    *,
    model_base: str | None,
    device: str,
    batch_size: int,
    max_new_tokens: int | None,
    num_workers: int,
    progress: bool,
) -> dict[str, Any]:
    folder = out_dir / checkpoint.name
    answer_files = {task.spec.name: folder / task.spec.name / ANSWERS_FILE for task in tasks}
    pending = {task.spec.name: pending_questions(task, answer_files[task.spec.name]) for task in tasks}
    loaded, load_s = None, 0.0
    if any(pending.values()):
        started = time.perf_counter()
        loaded = _load_checkpoint(checkpoint, model_base, device)
        load_s = time.perf_counter() - started
        logger.info("%s: loaded %s in %.1f s", checkpoint.name, checkpoint.path, load_s)
    results: dict[str, Any] = {"path": checkpoint.path, "load_s": load_s, "tasks": {}}
    for task in tasks:
        name = task.spec.name
        todo = pending[name]
        started = time.perf_counter()
        generated = 0
        if todo:
            generated = answer_questions(
                loaded, checkpoint.name, task, todo, answer_files[name],
                batch_size=batch_size,
                max_new_tokens=max_new_tokens or task.spec.max_new_tokens,
                num_workers=num_workers,
                progress=progress,
                label=f"{checkpoint.name}/{name}",
            )
        generation_s = time.perf_counter() - started
        started = time.perf_counter()
        scores = score_task(task, answer_files[name])
        scoring_s = time.perf_counter() - started
        (answer_files[name].parent / SCORES_FILE).write_text(json.dumps(scores, indent=2) + "\n")
        timing = {
            "questions": len(task.questions),
            "generated": generated,
            "resumed": len(task.questions) - len(todo),
            "generation_s": generation_s,
            "scoring_s": scoring_s,
            "questions_per_s": generated / generation_s if generated else None,
        }
        metrics = headline_metrics(task.spec.type, scores)
        results["tasks"][name] = {"type": task.spec.type, "metrics": metrics, "scores": scores,
                                  "failures": failure_count(task.spec.type, scores), "timing": timing}
        rate = f"{timing['questions_per_s']:.2f} q/s" if generated else "nothing to generate"
        first_metric, value = next(iter(metrics.items()))
        logger.info("%s/%s: %d generated, %d resumed, generation %.2f s (%s), scoring %.2f s; %s = %.4f",
                    checkpoint.name, name, generated, timing["resumed"], generation_s, rate, scoring_s,
                    first_metric, value)
    return results


def suite_baselines(tasks: list[PreparedTask]) -> dict[str, Any]:
    """task name → `baselines.task_baseline` of every task with a `baseline_train` (fit before any
    model loads; a training file is read once however many tasks use it). Errors are `SuiteError`s."""
    from llava.train.llava_json import load_llava_json
    from patch_align.evaluation.baselines import task_baseline

    records: dict[Path, list[dict[str, Any]]] = {}
    baselines = {}
    for task in tasks:
        path = task.spec.baseline_train
        if path is None:
            continue
        try:
            if path not in records:
                records[path] = load_llava_json(path)
            baselines[task.spec.name] = task_baseline(task, records[path], task.spec.baseline_slot_words)
        except (ValueError, KeyError, TypeError) as error:
            raise SuiteError(f"task {task.spec.name!r}: baseline from {path}: {error}") from error
    return baselines


def run_suite(
    suite: Suite,
    checkpoints: list[Checkpoint],
    out_dir: str | Path,
    *,
    model_base: str | None = None,
    device: str = "auto",
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    limit: int | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every checkpoint on every task; returns the results (see docs/evaluation.md).

    `max_new_tokens` overrides every task's own; `limit` keeps each task's first N questions.
    Raises `SuiteError` for a bad checkpoint list, a missing file or unreadable task data,
    all before any model is loaded.
    """
    if batch_size < 1:
        raise SuiteError(f"--batch-size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise SuiteError(f"--limit must be >= 1, got {limit}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise SuiteError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if not checkpoints:
        raise SuiteError("no checkpoint given (--model-path)")
    check_checkpoints(checkpoints)
    check_suite_files(suite)
    from llava.eval.run_llava import new_chat

    for spec in suite.tasks:
        try:
            new_chat(spec.conv_mode)
        except ValueError as error:
            raise SuiteError(f"task {spec.name!r}: {error}") from error
    tasks = [prepare_task(spec, limit) for spec in suite.tasks]
    baselines = suite_baselines(tasks)
    out_dir = Path(out_dir)
    results = {
        "suite": str(suite.path),
        "limit": limit,
        "max_new_tokens_override": max_new_tokens,
        "batch_size": batch_size,
        "tasks": [{"name": t.spec.name, "type": t.spec.type, "questions": len(t.questions)} for t in tasks],
        "baselines": baselines,
        "checkpoints": {},
    }
    for checkpoint in checkpoints:
        results["checkpoints"][checkpoint.name] = _evaluate_checkpoint(
            checkpoint, tasks, out_dir,
            model_base=model_base, device=device, batch_size=batch_size,
            max_new_tokens=max_new_tokens, num_workers=num_workers, progress=progress,
        )
    return results
