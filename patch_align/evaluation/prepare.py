"""Turn official benchmark files into the question / ground-truth files the eval scripts and suites read.

    python -m patch_align.evaluation.prepare vizwiz --annotations val.json --out-dir DIR
    python -m patch_align.evaluation.prepare sqa --questions llava_test_CQM-A.json --problems problems.json \
        --out-dir DIR
    python -m patch_align.evaluation.prepare okvqa --questions OpenEnded_mscoco_val2014_questions.json \
        --image-prefix COCO_val2014_ --out-dir DIR
    python -m patch_align.evaluation.prepare coco-captions --karpathy dataset_coco.json --split test \
        --out-dir DIR
    python -m patch_align.evaluation.prepare score-captions --references REFS.json --result-file ANSWERS.jsonl

Prompt suffixes are LLaVA-1.5's evaluation prompts. Outputs and their layouts: docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SHORT_ANSWER = "Answer the question using a single word or phrase."
UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."
SHORT_CAPTION = "Provide a one-sentence caption for the provided image."
IMAGE_TOKEN = "<image>"


def _read_json(path: str | Path) -> Any:
    with Path(path).open() as f:
        return json.load(f)


def _write_jsonl(path: Path, records: Iterable[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
            count += 1
    return count


def _require(record: dict, keys: Iterable[str], where: str) -> None:
    missing = [key for key in keys if key not in record]
    if missing:
        raise ValueError(f"{where}: record lacks {missing}")


def vizwiz_files(annotations: list[dict], source: str) -> tuple[list[dict], list[dict]]:
    """VizWiz `val.json` records → (questions, answers); the question id is the image file name."""
    questions, answers = [], []
    for index, record in enumerate(annotations):
        _require(record, ("image", "question", "answers"), f"{source}: record {index}")
        questions.append({"question_id": record["image"], "image": record["image"],
                          "text": f"{record['question']}\n{UNANSWERABLE}\n{SHORT_ANSWER}"})
        answers.append({"question_id": record["image"], "answers": [a["answer"] for a in record["answers"]]})
    return questions, answers


def sqa_image_files(conversations: list[dict], problems: dict[str, dict], source: str) -> tuple[list, list]:
    """ScienceQA LLaVA test conversations + `problems.json` → (questions, answers) of the IMG subset.

    Text-only problems are left out; the answer is the correct option's index.
    """
    questions, answers = [], []
    for index, record in enumerate(conversations):
        _require(record, ("id", "conversations"), f"{source}: record {index}")
        if not record.get("image"):
            continue
        if record["id"] not in problems:
            raise ValueError(f"{source}: question {record['id']!r} is not in problems.json")
        prompt = record["conversations"][0]["value"].replace(IMAGE_TOKEN, "").strip()
        questions.append({"question_id": record["id"], "image": record["image"],
                          "text": f"{prompt}\n{OPTION_LETTER}"})
        answers.append({"question_id": record["id"], "answer": problems[record["id"]]["answer"]})
    return questions, answers


def okvqa_questions(questions: dict, image_prefix: str, source: str) -> list[dict]:
    """OK-VQA / VQAv2 `OpenEnded_*_questions.json` → questions; images are `<prefix><image_id:012d>.jpg`."""
    _require(questions, ("questions",), source)
    records = []
    for index, record in enumerate(questions["questions"]):
        _require(record, ("question_id", "image_id", "question"), f"{source}: question {index}")
        records.append({"question_id": record["question_id"],
                        "image": f"{image_prefix}{record['image_id']:012d}.jpg",
                        "text": f"{record['question']}\n{SHORT_ANSWER}"})
    return records


def coco_caption_files(karpathy: dict, split: str, source: str) -> tuple[list[dict], dict[str, list[str]]]:
    """Karpathy `dataset_coco.json` → (caption questions, references by COCO image id) of one split.

    Image paths are `<filepath>/<filename>` (e.g. `val2014/COCO_val2014_….jpg`).
    """
    _require(karpathy, ("images",), source)
    questions, references = [], {}
    for index, image in enumerate(karpathy["images"]):
        _require(image, ("split", "filepath", "filename", "cocoid", "sentences"), f"{source}: image {index}")
        if image["split"] != split:
            continue
        questions.append({"question_id": image["cocoid"], "image": f"{image['filepath']}/{image['filename']}",
                          "text": SHORT_CAPTION})
        references[str(image["cocoid"])] = [sentence["raw"].strip() for sentence in image["sentences"]]
    if not questions:
        raise ValueError(f"{source}: no image of split {split!r}")
    return questions, references


def _report(path: Path, count: int) -> None:
    print(f"wrote {count} records to {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    vizwiz = commands.add_parser("vizwiz", help="VizWiz val.json → llava_val.jsonl + val_answers.jsonl")
    vizwiz.add_argument("--annotations", required=True)
    sqa = commands.add_parser("sqa", help="ScienceQA → llava_test_img.jsonl + test_img_answers.jsonl")
    sqa.add_argument("--questions", required=True, help="llava_test_CQM-A.json")
    sqa.add_argument("--problems", required=True, help="problems.json")
    okvqa = commands.add_parser("okvqa", help="OpenEnded questions JSON → llava_okvqa_val.jsonl")
    okvqa.add_argument("--questions", required=True)
    okvqa.add_argument("--image-prefix", default="COCO_val2014_")
    captions = commands.add_parser("coco-captions", help="Karpathy split → questions + references")
    captions.add_argument("--karpathy", required=True, help="dataset_coco.json")
    captions.add_argument("--split", default="test")
    for command in (vizwiz, sqa, okvqa, captions):
        command.add_argument("--out-dir", required=True)
    score = commands.add_parser("score-captions", help="BLEU/METEOR/ROUGE-L/CIDEr of an answers file")
    score.add_argument("--references", required=True, help="JSON: question id → reference captions")
    score.add_argument("--result-file", required=True, help="LLaVA answers JSONL")
    score.add_argument("--out", default=None, help="write the scores as JSON here too")
    args = parser.parse_args(argv)

    if args.command == "score-captions":
        from llava.eval.caption_metrics import read_references, score_captions
        from llava.eval.eval_vqa import load_answer_texts

        scores = score_captions(read_references(args.references), load_answer_texts(args.result_file))
        print(json.dumps(scores, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(scores, indent=2) + "\n")
        return 0
    out_dir = Path(args.out_dir)
    if args.command == "vizwiz":
        questions, answers = vizwiz_files(_read_json(args.annotations), args.annotations)
        _report(out_dir / "llava_val.jsonl", _write_jsonl(out_dir / "llava_val.jsonl", questions))
        _report(out_dir / "val_answers.jsonl", _write_jsonl(out_dir / "val_answers.jsonl", answers))
    elif args.command == "sqa":
        problems = _read_json(args.problems)
        questions, answers = sqa_image_files(_read_json(args.questions), problems, args.questions)
        _report(out_dir / "llava_test_img.jsonl", _write_jsonl(out_dir / "llava_test_img.jsonl", questions))
        _report(out_dir / "test_img_answers.jsonl", _write_jsonl(out_dir / "test_img_answers.jsonl", answers))
    elif args.command == "okvqa":
        questions = okvqa_questions(_read_json(args.questions), args.image_prefix, args.questions)
        _report(out_dir / "llava_okvqa_val.jsonl", _write_jsonl(out_dir / "llava_okvqa_val.jsonl", questions))
    else:
        questions, references = coco_caption_files(_read_json(args.karpathy), args.split, args.karpathy)
        path = out_dir / f"llava_coco_caption_{args.split}.jsonl"
        _report(path, _write_jsonl(path, questions))
        ref_path = out_dir / f"coco_caption_{args.split}_references.json"
        ref_path.write_text(json.dumps(references) + "\n")
        _report(ref_path, len(references))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
