"""Answer a prepared task with an already loaded checkpoint, through llava.eval.model_vqa_loader's machinery.

Same prompts, batching, greedy decoding and answer records as `python -m llava.eval.model_vqa_loader`,
but the model is loaded once per checkpoint for all tasks. The answers file is appended to and
flushed per answer, so an interrupted suite resumes where it stopped.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from llava.eval.generation import GenerationSettings, decode_answers, generate_token_ids
from llava.eval.model_vqa_loader import QuestionDataset, answer_record, repair_answers_file
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
    tokenizer, model, image_processor = loaded
    settings = GenerationSettings(
        temperature=0.0,
        max_new_tokens=max_new_tokens,
        stop_strings=(stop_string(new_chat(task.spec.conv_mode)),),
    )
    dataset = QuestionDataset(
        questions, task.spec.image_folder, tokenizer, image_processor, model.config, task.spec.conv_mode
    )
    # The dataset yields rows of different lengths; generation pads them, so batches stay lists.
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=list
    )
    answers_file = Path(answers_file)
    answers_file.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    bar = tqdm(total=len(questions), desc=label or task.spec.name, unit="q", disable=not progress)
    with answers_file.open("a") as out, torch.no_grad(), bar:
        for batch in loader:
            token_ids = generate_token_ids(
                model,
                tokenizer,
                [item["input_ids"] for item in batch],
                [item["pixel_values"] for item in batch],
                [item["image_sizes"] for item in batch],
                settings,
            )
            for item, answer in zip(batch, decode_answers(tokenizer, token_ids, settings.stop_strings),
                                    strict=True):
                out.write(json.dumps(answer_record(item["question"], answer, model_id)) + "\n")
                out.flush()
                written += 1
            bar.update(len(batch))
    return written
