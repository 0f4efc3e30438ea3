"""Answer a prepared task with an already loaded checkpoint, through llava.eval.model_vqa_loader's machinery.

Same prompts, batching, greedy decoding and answer records as `python -m llava.eval.model_vqa_loader`,
but the model is loaded once per checkpoint for all tasks. The answers file is appended to and
flushed per answer, so an interrupted suite resumes where it stopped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from llava.eval.generation import GenerationSettings
from llava.eval.model_vqa_loader import repair_answers_file, write_answers
from llava.eval.run_llava import new_chat, stop_string
from patch_align.evaluation.scoring import PreparedTask


def pending_questions(task: PreparedTask, answers_file: str | Path) -> list[dict[str, Any]]:
    """The task's questions not yet answered in `answers_file` (a torn last line is repaired first)."""
    answered = repair_answers_file(answers_file)
    return [q for q in task.questions if q["question_id"] not in answered]


def answer_questions(
    loaded: tuple[Any, Any, Any],
    model_id: str,
    task: PreparedTask,
    questions: list[dict[str, Any]],
    answers_file: str | Path,
    *,
    batch_size: int,
    max_new_tokens: int,
    num_workers: int = 0,
    progress: bool = True,
    label: str = "",
) -> int:
    """Greedy-answer `questions` with `loaded = (tokenizer, model, image_processor)`; returns how many.

    Answers are appended to `answers_file` in question order, one upstream answer record per line.
    """
    settings = GenerationSettings(
        temperature=0.0,
        max_new_tokens=max_new_tokens,
        stop_strings=(stop_string(new_chat(task.spec.conv_mode)),),
    )
    return write_answers(
        loaded,
        questions,
        answers_file,
        image_folder=task.spec.image_folder,
        conv_mode=task.spec.conv_mode,
        settings=settings,
        model_id=model_id,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
        desc=label or task.spec.name,
    )
