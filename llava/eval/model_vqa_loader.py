"""Answer a question file with a LLaVA checkpoint, upstream's `python -m llava.eval.model_vqa_loader`.

    python -m llava.eval.model_vqa_loader --model-path CKPT --question-file Q.jsonl \
        --image-folder IMAGES --answers-file A.jsonl [--num-chunks N --chunk-idx K] [--batch-size B]

Questions: JSONL records with `question_id`, `text` and optionally `image` (a path under
`--image-folder`; without it the question is text-only). Answers: JSONL records
`{question_id, prompt, text, answer_id, model_id, metadata}` in question order.

Chunk K of N is the K-th slice of a ceil split, so the chunk files concatenated in chunk
order hold the questions in the order of a single run. The answers file is appended to and
flushed line by line: a re-run skips questions already answered there, and a last line cut
off by an interrupted run is removed first. Before the model loads, the conversation mode,
the question file and every image file of the chunk are checked; a problem exits with
status 2 and a message naming it (missing images are counted, the first five named).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from llava.eval.eval_vqa import iter_jsonl
from llava.eval.generation import GenerationSettings, decode_answers, encode_images, generate_token_ids
from llava.eval.run_llava import (
    check_model_paths,
    image_query,
    new_chat,
    resolve_device,
    single_turn_prompt,
    stop_string,
)
from llava.mm_utils import get_model_name_from_path, tokenizer_image_token
from llava.model.builder import load_pretrained_model

logger = logging.getLogger(__name__)


def split_list(items: Sequence[Any], n: int) -> list[list[Any]]:
    """Consecutive slices of ceil(len / n) items (fewer than n slices when items run out)."""
    if n < 1:
        raise ValueError(f"--num-chunks must be >= 1, got {n}")
    size = max(1, math.ceil(len(items) / n))
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def get_chunk(items: Sequence[Any], n: int, k: int) -> list[Any]:
    """Slice `k` of `split_list(items, n)`; empty when the split has fewer than k + 1 slices."""
    if not 0 <= k < n:
        raise ValueError(f"--chunk-idx must be in [0, {n}), got {k}")
    chunks = split_list(items, n)
    return chunks[k] if k < len(chunks) else []


def read_questions(path: str | Path) -> list[dict[str, Any]]:
    """Question records of a JSONL file; a malformed or incomplete record is an error naming its line."""
    questions, seen = [], set()
    for line_number, record in iter_jsonl(path):
        missing = [key for key in ("question_id", "text") if key not in record]
        if missing:
            raise ValueError(f"{path}:{line_number}: question record lacks {missing}")
        if record["question_id"] in seen:
            raise ValueError(f"{path}:{line_number}: duplicate question_id {record['question_id']!r}")
        seen.add(record["question_id"])
        questions.append(record)
    return questions


MAX_LISTED = 5  # problems listed in one error message; the count covers them all


def question_image_path(question: dict[str, Any], image_folder: str | Path | None) -> Path:
    """Where an image question's `image` lies under `image_folder`; ValueError naming the question."""
    image, name = question["image"], f"question {question['question_id']!r}"
    if not isinstance(image, str):
        raise ValueError(f"{name}: 'image' must be a path string, got {image!r}")
    if not image_folder:
        raise ValueError(f"{name} has an image but no image folder was given")
    return Path(image_folder) / image


def check_question_images(questions: Sequence[dict[str, Any]], image_folder: str | Path | None) -> None:
    """Every image question's file must exist: one ValueError counting and listing those that do not.

    Cheap (one stat per image), so it runs before a model loads instead of failing in a DataLoader worker.
    """
    problems = []
    for question in questions:
        if not question.get("image"):
            continue
        try:
            path = question_image_path(question, image_folder)
        except ValueError as error:
            problems.append(str(error))
            continue
        if not path.is_file():
            problems.append(f"question {question['question_id']!r}: image not found: {path}")
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED]) + ("\n  ..." if len(problems) > MAX_LISTED else "")
        raise ValueError(
            f"{len(problems)} of {len(questions)} questions have no readable image file:\n  {listed}"
        )


def repair_answers_file(path: str | Path) -> set[Any]:
    """Question ids already answered in `path` (empty when it does not exist).

    A last line without its newline was cut off by an interrupted run: it is removed from
    the file (or, if it is a whole record, given its newline). Any other unreadable line
    is an error naming it.
    """
    path = Path(path)
    if not path.exists():
        return set()
    data = path.read_bytes()
    complete, newline, tail = data.rpartition(b"\n")
    body = complete + newline
    answered = set()
    for line_number, line in enumerate(body.decode().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            answered.add(json.loads(line)["question_id"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{line_number}: not an answer record ({error})") from error
    if tail:
        try:
            answered.add(json.loads(tail)["question_id"])
            body += tail + b"\n"
        except (json.JSONDecodeError, KeyError, TypeError):
            logger.warning("%s: removed a torn last line (%d bytes) of an interrupted run", path, len(tail))
        path.write_bytes(body)
    return answered


class QuestionDataset(Dataset):
    """Turns question records into model inputs in DataLoader workers (image decoding included).

    Item: dict with `question` (the record), `input_ids` (L,), `pixel_values` (1, 3, H, W) or
    None for a text-only question, and `image_sizes` ([(width, height)] px, or []).
    """

    def __init__(
        self,
        questions: Sequence[dict[str, Any]],
        image_folder: str | Path | None,
        tokenizer,
        image_processor,
        model_config,
        conv_mode: str,
    ) -> None:
        self.questions = list(questions)
        self.image_folder = Path(image_folder) if image_folder else None
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        # Only what the workers need from the config, so it pickles cheaply.
        self.image_aspect_ratio = getattr(model_config, "image_aspect_ratio", None)
        self.use_start_end = getattr(model_config, "mm_use_im_start_end", False)
        self.conv_mode = conv_mode

    def __len__(self) -> int:
        return len(self.questions)

    def _load_image(self, question: dict[str, Any]) -> Image.Image:
        if self.image_processor is None:
            raise ValueError(f"question {question['question_id']!r} has an image but the model is text-only")
        path = question_image_path(question, self.image_folder)
        if not path.is_file():
            raise FileNotFoundError(f"question {question['question_id']!r}: image not found: {path}")
        with Image.open(path) as image:
            return image.convert("RGB")

    def __getitem__(self, index: int) -> dict[str, Any]:
        question = self.questions[index]
        has_image = bool(question.get("image"))
        user_text = image_query(question["text"], int(has_image), self.use_start_end)
        prompt = single_turn_prompt(self.conv_mode, user_text)
        item = {
            "question": question,
            "input_ids": tokenizer_image_token(prompt, self.tokenizer, return_tensors="pt"),
            "pixel_values": None,
            "image_sizes": [],
        }
        if has_image:
            image = self._load_image(question)
            item["pixel_values"] = encode_images([image], self.image_processor, self.image_aspect_ratio)
            item["image_sizes"] = [image.size]
        return item


def _keep_as_list(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows differ in length and in having an image; generation pads them, so no stacking here."""
    return items


def answer_record(question: dict[str, Any], answer: str, model_id: str) -> dict[str, Any]:
    """Upstream's answer record; `prompt` is the question text as asked."""
    return {
        "question_id": question["question_id"],
        "prompt": question["text"],
        "text": answer,
        "answer_id": uuid.uuid4().hex,
        "model_id": model_id,
        "metadata": {},
    }


def write_answers(
    loaded: tuple[Any, Any, Any],
    questions: list[dict[str, Any]],
    answers_file: str | Path,
    *,
    image_folder: str | None,
    conv_mode: str,
    settings: GenerationSettings,
    model_id: str,
    batch_size: int,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "questions",
) -> int:
    """Answer `questions` in order with `loaded = (tokenizer, model, image_processor)`.

    Appends one upstream answer record per line to `answers_file`, flushed per answer so an
    interrupted run resumes where it stopped; returns how many were written.
    """
    tokenizer, model, image_processor = loaded
    dataset = QuestionDataset(questions, image_folder, tokenizer, image_processor, model.config, conv_mode)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_keep_as_list
    )
    answers_file = Path(answers_file)
    answers_file.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    bar = tqdm(total=len(questions), desc=desc, unit="q", disable=not progress)
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
            answers = decode_answers(tokenizer, token_ids, settings.stop_strings)
            for item, answer in zip(batch, answers, strict=True):
                out.write(json.dumps(answer_record(item["question"], answer, model_id)) + "\n")
                out.flush()
                written += 1
            bar.update(len(batch))
    return written


def pending_chunk(args: argparse.Namespace) -> list[dict[str, Any]]:
    """This chunk's questions not yet in `--answers-file`, checked without a model.

    Raises ValueError/OSError for an unknown `--conv-mode`, a bad question file or a missing image.
    """
    new_chat(args.conv_mode)
    questions = get_chunk(read_questions(args.question_file), args.num_chunks, args.chunk_idx)
    answers_file = Path(args.answers_file)
    answers_file.parent.mkdir(parents=True, exist_ok=True)
    answered = repair_answers_file(answers_file)
    todo = [q for q in questions if q["question_id"] not in answered]
    logger.info(
        "chunk %d of %d: %d questions, %d already answered in %s",
        args.chunk_idx, args.num_chunks, len(questions), len(questions) - len(todo), answers_file,
    )
    check_question_images(todo, args.image_folder)
    check_model_paths(args)
    return todo


def eval_model(args: argparse.Namespace, todo: list[dict[str, Any]] | None = None) -> int:
    """Answer `todo` (default: `pending_chunk(args)`), appending to `--answers-file`; returns how many."""
    if todo is None:
        todo = pending_chunk(args)
    answers_file = Path(args.answers_file)
    if not todo:
        answers_file.touch()
        return 0

    model_name = get_model_name_from_path(args.model_path)
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path, args.model_base, model_name, device=resolve_device(args.device)
    )
    model.eval()
    settings = GenerationSettings(
        temperature=args.temperature,
        top_p=args.top_p,
        num_beams=args.num_beams,
        max_new_tokens=args.max_new_tokens,
        stop_strings=(stop_string(new_chat(args.conv_mode)),),
    )
    return write_answers(
        (tokenizer, model, image_processor),
        todo,
        answers_file,
        image_folder=args.image_folder,
        conv_mode=args.conv_mode,
        settings=settings,
        model_id=model_name,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", type=str, default="facebook/opt-350m")
    parser.add_argument("--model-base", type=str, default=None)
    parser.add_argument("--image-folder", type=str, default="")
    parser.add_argument("--question-file", type=str, default="tables/question.jsonl")
    parser.add_argument("--answers-file", type=str, default="answer.jsonl")
    parser.add_argument("--conv-mode", type=str, default="llava_v1")
    parser.add_argument("--num-chunks", type=int, default=1)
    parser.add_argument("--chunk-idx", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=1, help="questions per generate call")
    parser.add_argument("--num-workers", type=int, default=4, help="DataLoader workers decoding images")
    parser.add_argument("--device", type=str, default="auto", help="auto, cpu or cuda[:N]")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, check the inputs (exit 2 naming the problem) and only then load the model."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        todo = pending_chunk(args)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    return eval_model(args, todo)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main()
