"""Evaluation suite files: which tasks to run, of which type, on which files (format in docs/evaluation.md).

A suite is YAML or JSON:

    defaults: {conv_mode: llava_v1, max_new_tokens: 32}       # optional, applied to every task
    tasks:
      - {name: refcoco_val, type: rec, question_file: refcoco/refcoco_val.jsonl,
         image_folder: refcoco/train2014, splits: [val]}
      - {name: gqa, type: gqa, question_file: gqa/questions.jsonl, annotation_file: gqa/answers.json,
         image_folder: gqa/images}

Relative paths in a suite are resolved against the folder of the suite file, never against the
working directory: `refcoco/refcoco_val.jsonl` in `/data/eval/suite.yaml` is
`/data/eval/refcoco/refcoco_val.jsonl` wherever `patch-align eval` runs from, so a suite and its
files can be moved together. Every problem with a suite (unknown key, wrong type, missing file) is
a `SuiteError` naming the task and, where there is one, the file.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# task type -> what the annotation file holds (None: the question file carries the ground truth)
TASK_TYPES: dict[str, str | None] = {
    "rec": None,
    "vqa": "human answers per question (VQA accuracy)",
    "gqa": "one answer per question (exact match)",
    "mc": "the correct option letter or index per question",
    "caption": "reference captions per question id",
}
DEFAULT_CONV_MODE = "llava_v1"
DEFAULT_MAX_NEW_TOKENS = 128
_TASK_KEYS = {"name", "type", "question_file", "annotation_file", "image_folder", "conv_mode",
              "max_new_tokens", "splits", "baseline_train", "baseline_slot_words"}
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


class SuiteError(ValueError):
    """A suite, checkpoint list or task file that cannot be run; the message names the culprit."""


@dataclass(frozen=True)
class TaskSpec:
    """One task of a suite, paths resolved.

    `splits`: keep only questions whose `split` field is one of these (None: all questions).
    `image_folder` None means text-only questions. `baseline_train`: LLaVA training conversations
    the task's blind baseline is fit on (None: no baseline); `baseline_slot_words`: words a
    question template abstracts (`baselines.question_template`).
    """

    name: str
    type: str
    question_file: Path
    annotation_file: Path | None
    image_folder: Path | None
    conv_mode: str
    max_new_tokens: int
    splits: tuple[str, ...] | None
    baseline_train: Path | None = None
    baseline_slot_words: tuple[str, ...] = ()


@dataclass(frozen=True)
class Suite:
    path: Path
    tasks: tuple[TaskSpec, ...]


def is_safe_name(name: str) -> bool:
    """Whether `name` can be used as one folder name (letters, digits, `._+-`, no leading dot)."""
    return _SAFE_NAME.fullmatch(name) is not None


def _resolve(value: Any, base: Path, where: str, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise SuiteError(f"{where}: '{key}' must be a non-empty path string, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def parse_task(raw: Mapping[str, Any], base: Path, where: str) -> TaskSpec:
    """One task mapping (defaults already merged) → `TaskSpec`; `where` names it in errors."""
    unknown = sorted(set(raw) - _TASK_KEYS)
    if unknown:
        raise SuiteError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_TASK_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not is_safe_name(name):
        raise SuiteError(f"{where}: 'name' must be a folder-safe string (letters, digits, ._+-), "
                         f"got {name!r}")
    where = f"task {name!r}"
    task_type = raw.get("type")
    if task_type not in TASK_TYPES:
        raise SuiteError(f"{where}: 'type' must be one of {sorted(TASK_TYPES)}, got {task_type!r}")
    if "question_file" not in raw:
        raise SuiteError(f"{where}: 'question_file' is required")
    annotation = raw.get("annotation_file")
    if TASK_TYPES[task_type] is not None and annotation is None:
        raise SuiteError(f"{where}: type {task_type!r} needs 'annotation_file' ({TASK_TYPES[task_type]})")
    if task_type == "rec" and annotation is not None:
        raise SuiteError(f"{where}: type 'rec' takes its ground truth from the question file; "
                         "remove 'annotation_file'")
    conv_mode = raw.get("conv_mode", DEFAULT_CONV_MODE)
    if not isinstance(conv_mode, str):
        raise SuiteError(f"{where}: 'conv_mode' must be a string, got {conv_mode!r}")
    max_new_tokens = raw.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise SuiteError(f"{where}: 'max_new_tokens' must be an integer >= 1, got {max_new_tokens!r}")
    splits = raw.get("splits")
    if splits is not None:
        if not isinstance(splits, list) or not splits or not all(isinstance(s, str) for s in splits):
            raise SuiteError(f"{where}: 'splits' must be a non-empty list of strings, got {splits!r}")
        splits = tuple(splits)
    slot_words = raw.get("baseline_slot_words", [])
    if not isinstance(slot_words, list) or not all(isinstance(w, str) and w for w in slot_words):
        raise SuiteError(f"{where}: 'baseline_slot_words' must be a list of words, got {slot_words!r}")
    if slot_words and "baseline_train" not in raw:
        raise SuiteError(f"{where}: 'baseline_slot_words' needs 'baseline_train' (the data it is fit on)")
    baseline_train = raw.get("baseline_train")
    if baseline_train is not None:
        baseline_train = _resolve(baseline_train, base, where, "baseline_train")
    image_folder = raw.get("image_folder")
    return TaskSpec(
        name=name,
        type=task_type,
        question_file=_resolve(raw["question_file"], base, where, "question_file"),
        annotation_file=None if annotation is None else _resolve(annotation, base, where, "annotation_file"),
        image_folder=None if image_folder is None else _resolve(image_folder, base, where, "image_folder"),
        conv_mode=conv_mode,
        max_new_tokens=max_new_tokens,
        splits=splits,
        baseline_train=baseline_train,
        baseline_slot_words=tuple(slot_words),
    )


def _read_suite_data(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as error:
        raise SuiteError(f"suite file {path}: cannot be read ({error.strerror or error})") from error
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        kind = path.suffix.lstrip(".").upper()
        raise SuiteError(f"suite file {path}: not valid {kind} ({error})") from error


def load_suite(path: str | Path) -> Suite:
    """Read and check a `.yaml`/`.yml`/`.json` suite file (tasks in file order, names unique)."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml", ".json"):
        raise SuiteError(f"suite file {path}: expected a .yaml, .yml or .json file")
    data = _read_suite_data(path)
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list) or not data["tasks"]:
        raise SuiteError(f"suite file {path}: expected a mapping with a non-empty 'tasks' list")
    unknown = sorted(set(data) - {"tasks", "defaults"})
    if unknown:
        raise SuiteError(f"suite file {path}: unknown top-level key(s) {unknown}; allowed: defaults, tasks")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise SuiteError(f"suite file {path}: 'defaults' must be a mapping")
    tasks, names = [], set()
    for index, raw in enumerate(data["tasks"]):
        where = f"suite file {path}: task #{index + 1}"
        if not isinstance(raw, dict):
            raise SuiteError(f"{where}: expected a mapping, got {type(raw).__name__}")
        task = parse_task({**defaults, **raw}, path.absolute().parent, where)
        if task.name in names:
            raise SuiteError(f"suite file {path}: task name {task.name!r} is used twice")
        names.add(task.name)
        tasks.append(task)
    return Suite(path=path, tasks=tuple(tasks))


def missing_files(task: TaskSpec) -> list[str]:
    """One line per file or folder of `task` that does not exist, naming the task, the key and the path."""
    problems = []
    for key, path, want_dir in (("question_file", task.question_file, False),
                                ("annotation_file", task.annotation_file, False),
                                ("image_folder", task.image_folder, True),
                                ("baseline_train", task.baseline_train, False)):
        if path is None:
            continue
        exists = path.is_dir() if want_dir else path.is_file()
        if not exists:
            kind = "folder" if want_dir else "file"
            problems.append(f"task {task.name!r}: {key} {kind} not found: {path}")
    return problems


def check_suite_files(suite: Suite) -> None:
    """Raise one `SuiteError` listing every missing file of every task (nothing raised when all exist)."""
    problems = [line for task in suite.tasks for line in missing_files(task)]
    if problems:
        raise SuiteError(f"suite {suite.path}: {len(problems)} missing file(s):\n  " + "\n  ".join(problems))
