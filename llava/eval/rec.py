"""Referring-expression comprehension (REC): box conventions, answer parsing and scoring.

LLaVA-1.5 states a grounding box as `[x1, y1, x2, y2]` normalised to [0, 1] relative to
the *padded square* image (the image pasted centred on a square of its longer edge, see
`llava.mm_utils.pad_to_square_geometry`), with two decimals. Ground truth here is kept in
pixels of the original image (xyxy) and scoring happens there.

Answer parsing rules (`parse_box`):
- A box is four numbers. A bracketed group `[a, b, c, d]` or `(a, b, c, d)` is preferred;
  otherwise a run of exactly four numbers separated by commas and/or spaces. When the text
  holds several candidates, the first one wins.
- All four values must lie in [0, 1]. Values above 1 (pixel or per-mille boxes) are
  rejected, not rescaled: LLaVA-1.5 never emits them, and every rescaling rule is a guess
  (original pixels? padded pixels? thousandths?) that would turn into a silent wrong score.
- Corners given in the wrong order (x1 > x2 or y1 > y2) are swapped: the two corners still
  name the same rectangle.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from llava.mm_utils import pad_to_square_geometry

REC_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: {expression}"

_NUMBER_PATTERN = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_NUMBER = re.compile(_NUMBER_PATTERN)
_SEPARATOR = re.compile(r"\s*[,;]?\s*")
_BRACKETED_BOX = re.compile(
    r"[\[(]\s*" + r"\s*[,;]?\s*".join([f"({_NUMBER_PATTERN})"] * 4) + r"\s*[\])]"
)


@dataclass(frozen=True)
class ReferringRegion:
    """One annotated region and the expressions that refer to it.

    `bbox_xyxy` is in pixels of the original `width`×`height` image.
    `expressions` pairs each sentence id with its text.
    """

    ref_id: int
    image: str
    width: int
    height: int
    bbox_xyxy: tuple[float, float, float, float]
    split: str
    expressions: tuple[tuple[int, str], ...]


def _check_image_size(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got width={width}, height={height}")


def _check_four(box: Sequence[float], what: str) -> None:
    if len(box) != 4:
        raise ValueError(f"{what} must have 4 values, got {len(box)}: {list(box)}")


def xywh_to_xyxy(box: Sequence[float]) -> list[float]:
    """`[x, y, w, h]` → `[x1, y1, x2, y2]` (same units)."""
    _check_four(box, "xywh box")
    x, y, w, h = box
    if w < 0 or h < 0:
        raise ValueError(f"xywh box has negative size: {list(box)}")
    return [x, y, x + w, y + h]


def box_to_padded_normalized(
    box: Sequence[float], width: int, height: int, *, box_format: Literal["xyxy", "xywh"]
) -> list[float]:
    """Pixel box on a `width`×`height` image → LLaVA's padded-square box `[x1, y1, x2, y2]`.

    Coordinates are fractions of the padded side, rounded to 2 decimals as in LLaVA-1.5's
    training data. The pixel box is first clipped to the image, because COCO boxes can
    overhang the border by a fraction of a pixel.
    """
    _check_image_size(width, height)
    if box_format == "xywh":
        x1, y1, x2, y2 = xywh_to_xyxy(box)
    elif box_format == "xyxy":
        _check_four(box, "xyxy box")
        x1, y1, x2, y2 = box
    else:
        raise ValueError(f"box_format must be 'xyxy' or 'xywh', got {box_format!r}")
    if x2 < x1 or y2 < y1:
        raise ValueError(f"xyxy box has x2 < x1 or y2 < y1: {[x1, y1, x2, y2]}")
    side, left, top = pad_to_square_geometry(width, height)
    x1, x2 = (min(max(v, 0.0), width) for v in (x1, x2))
    y1, y2 = (min(max(v, 0.0), height) for v in (y1, y2))
    return [round((x1 + left) / side, 2), round((y1 + top) / side, 2),
            round((x2 + left) / side, 2), round((y2 + top) / side, 2)]


def padded_normalized_to_pixels(box: Sequence[float], width: int, height: int) -> list[float]:
    """LLaVA's padded-square box (fractions of the padded side) → xyxy pixels of the original image.

    The result is clipped to the image: the padding is not part of it.
    """
    _check_image_size(width, height)
    _check_four(box, "normalised box")
    side, left, top = pad_to_square_geometry(width, height)
    x1, y1, x2, y2 = box
    return [min(max(x1 * side - left, 0.0), width), min(max(y1 * side - top, 0.0), height),
            min(max(x2 * side - left, 0.0), width), min(max(y2 * side - top, 0.0), height)]


def format_box(box: Sequence[float]) -> str:
    """A normalised box as the answer text LLaVA-1.5 is trained on, e.g. `[0.12, 0.30, 0.50, 0.90]`."""
    _check_four(box, "normalised box")
    return "[" + ", ".join(f"{v:.2f}" for v in box) + "]"


def _first_bare_run_of_four(text: str) -> list[float] | None:
    """The first run of exactly four numbers joined only by commas/semicolons/spaces."""
    numbers = list(_NUMBER.finditer(text))
    run: list[re.Match[str]] = []
    for number in numbers + [None]:
        joined = (number is not None and run
                  and _SEPARATOR.fullmatch(text, run[-1].end(), number.start()) is not None)
        if number is not None and (joined or not run):
            run.append(number)
            continue
        if len(run) == 4:
            return [float(m.group()) for m in run]
        run = [number] if number is not None else []
    return None


def parse_box_with_reason(text: str) -> tuple[list[float] | None, str]:
    """`parse_box`, also saying why a text was rejected ("ok", "no box", "out of range")."""
    bracketed = _BRACKETED_BOX.search(text)
    values = [float(g) for g in bracketed.groups()] if bracketed else _first_bare_run_of_four(text)
    if values is None:
        return None, "no box"
    x1, y1, x2, y2 = values
    if not all(0.0 <= v <= 1.0 for v in (x1, y1, x2, y2)):
        return None, "out of range"
    return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], "ok"


def parse_box(text: str) -> list[float] | None:
    """A model answer → normalised xyxy box, or None when it holds none (rules in the module doc)."""
    return parse_box_with_reason(text)[0]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two xyxy boxes (any common unit); 0.0 when both are empty."""
    _check_four(a, "box a")
    _check_four(b, "box b")
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def build_rec_questions(
    regions: Iterable[ReferringRegion], splits: Iterable[str] | None = None
) -> list[dict]:
    """One question record per referring expression, in LLaVA's question-file layout.

    Each record: `question_id` (the sentence id), `image`, `text` (the grounding prompt,
    without `<image>`), `category` ("rec"), `split`, `ref_id`, `bbox` (ground-truth xyxy
    pixels), `width`, `height`. `splits` keeps only those splits when given.
    """
    wanted = None if splits is None else set(splits)
    questions = []
    for region in regions:
        if wanted is not None and region.split not in wanted:
            continue
        for sent_id, expression in region.expressions:
            questions.append({
                "question_id": sent_id,
                "image": region.image,
                "text": REC_PROMPT.format(expression=expression),
                "category": "rec",
                "split": region.split,
                "ref_id": region.ref_id,
                "bbox": list(region.bbox_xyxy),
                "width": region.width,
                "height": region.height,
            })
    return questions


REC_TRUTH_FIELDS = ("split", "bbox", "width", "height")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_rec_question(question: Mapping[str, Any]) -> None:
    """Raise ValueError naming the question and the field when its ground truth cannot be scored.

    Needed: `question_id`; `split` a string; `width`, `height` positive numbers; `bbox` four
    finite numbers `[x1, y1, x2, y2]` with x1 <= x2 and y1 <= y2 (pixels of the original image).
    """
    if "question_id" not in question:
        raise ValueError(f"REC question lacks 'question_id': {dict(question)}")
    name = f"REC question {question['question_id']!r}"
    lacking = [key for key in REC_TRUTH_FIELDS if key not in question]
    if lacking:
        raise ValueError(f"{name} lacks {lacking}")
    if not isinstance(question["split"], str):
        raise ValueError(f"{name}: 'split' must be a string, got {question['split']!r}")
    for key in ("width", "height"):
        if not _is_number(question[key]) or question[key] <= 0:
            raise ValueError(f"{name}: '{key}' must be a positive number, got {question[key]!r}")
    box = question["bbox"]
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_number(v) for v in box):
        raise ValueError(f"{name}: 'bbox' must be four numbers [x1, y1, x2, y2], got {box!r}")
    if box[2] < box[0] or box[3] < box[1]:
        raise ValueError(f"{name}: 'bbox' has x2 < x1 or y2 < y1 (it must be xyxy pixels): {list(box)}")


def _empty_tally() -> dict[str, Any]:
    return {"total": 0, "correct": 0, "parse_failures": 0, "missing": 0}


def score_rec(
    questions: Iterable[Mapping[str, Any]], answers: Mapping[Any, str], iou_threshold: float = 0.5
) -> dict[str, Any]:
    """Acc@IoU≥`iou_threshold` per split and overall.

    `questions` are records from `build_rec_questions`; `answers` maps question id (compared
    as a string) → the model's answer text. IoU is computed in pixels of the original image
    after mapping the parsed box through the pad geometry. A parse failure or a missing
    answer counts as wrong and is also counted and listed on its own.

    Returns `{"iou_threshold", "splits": {split: tally}, "overall": tally, "parse_failures": [...],
    "missing": [...]}`, a tally being `total, correct, accuracy, parse_failures, missing`.
    """
    answer_by_id = {str(k): v for k, v in answers.items()}
    tallies: dict[str, dict[str, Any]] = {}
    overall = _empty_tally()
    failures: list[dict[str, Any]] = []
    missing: list[Any] = []
    seen: set[str] = set()
    for question in questions:
        check_rec_question(question)
        qid = str(question["question_id"])
        if qid in seen:
            raise ValueError(f"duplicate REC question_id {qid!r}")
        seen.add(qid)
        tally = tallies.setdefault(question["split"], _empty_tally())
        for t in (tally, overall):
            t["total"] += 1
        if qid not in answer_by_id:
            missing.append(question["question_id"])
            for t in (tally, overall):
                t["missing"] += 1
            continue
        box, reason = parse_box_with_reason(answer_by_id[qid])
        if box is None:
            failures.append(
                {"question_id": question["question_id"], "text": answer_by_id[qid], "reason": reason}
            )
            for t in (tally, overall):
                t["parse_failures"] += 1
            continue
        predicted = padded_normalized_to_pixels(box, question["width"], question["height"])
        if iou(predicted, question["bbox"]) >= iou_threshold:
            for t in (tally, overall):
                t["correct"] += 1
    if not seen:
        raise ValueError("no REC questions to score")
    unknown = sorted(set(answer_by_id) - seen)
    if unknown:
        raise ValueError(f"{len(unknown)} answers have no REC question, e.g. question_id {unknown[0]!r}")
    for t in (*tallies.values(), overall):
        t["accuracy"] = t["correct"] / t["total"]
    return {"iou_threshold": iou_threshold, "splits": dict(sorted(tallies.items())), "overall": overall,
            "parse_failures": failures, "missing": missing}
