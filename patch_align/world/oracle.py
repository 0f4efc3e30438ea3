"""The REC ceiling a patch grid allows: the best box whose edges lie on patch boundaries.

A model that reads the image only through a G×G grid of patch tokens (of LLaVA's padded square,
stage 2's `pad` geometry) can locate an edge only to the patch it falls in. The grid-snapped
oracle answers, for each true box, the box with every edge on the grid line just below or just
above the true edge (2⁴ candidates), whichever has the highest IoU with the truth. Its Acc@0.5 is
the ceiling of REC on that grid: a world where it is low cannot show a downstream REC difference.
IoU is measured exactly as the scorer does (`llava.eval.rec`: padded fractions back to clipped
pixels, then IoU), so the ceiling and the models' scores are on one scale.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from llava.eval.rec import box_to_padded_normalized, iou, padded_normalized_to_pixels


def _unrounded_padded(box_xyxy: Sequence[float], width: int, height: int) -> list[float]:
    """Pixel box → fractions of the padded side, without the 2-decimal rounding of answers."""
    side = max(width, height)
    left, top = (side - width) / 2, (side - height) / 2
    # box_to_padded_normalized checks the box and the size; its rounded values are not used
    box_to_padded_normalized(box_xyxy, width, height, box_format="xyxy")
    x1, y1, x2, y2 = box_xyxy
    return [(x1 + left) / side, (y1 + top) / side, (x2 + left) / side, (y2 + top) / side]


def grid_snapped_box(box_xyxy: Sequence[float], width: int, height: int,
                     grid: int) -> tuple[list[float], float]:
    """The best grid-aligned answer for one true box and its IoU.

    Args:
        box_xyxy: the true box, xyxy pixels of the `width`×`height` image.
        grid: patches per side of the padded square (G).

    Returns:
        (box as fractions of the padded side, every value a multiple of 1/G; its IoU with the truth
        in pixels). Ties keep the first candidate in (floor, ceil) order per edge.
    """
    if grid < 1:
        raise ValueError(f"grid must be >= 1 patch per side, got {grid}")
    padded = _unrounded_padded(box_xyxy, width, height)
    if padded[2] <= padded[0] or padded[3] <= padded[1]:
        # with a positive width and height, floor(x1) < ceil(x2): some candidate is a real box
        raise ValueError(f"box {list(box_xyxy)} has no area; the oracle needs a visible object")
    choices = [sorted({math.floor(v * grid + 1e-9), math.ceil(v * grid - 1e-9)}) for v in padded]
    best_box, best_iou = [0.0, 0.0, 1.0, 1.0], -1.0
    for lines in itertools.product(*choices):
        candidate = [line / grid for line in lines]
        if candidate[2] <= candidate[0] or candidate[3] <= candidate[1]:
            continue
        score = iou(padded_normalized_to_pixels(candidate, width, height), box_xyxy)
        if score > best_iou:
            best_box, best_iou = candidate, score
    return best_box, best_iou


def oracle_rec_ceiling(questions: Iterable[Mapping[str, Any]], grid: int,
                       threshold: float = 0.5) -> dict[str, float]:
    """Acc@`threshold` and mean IoU of the grid-snapped oracle over REC question records.

    `questions`: records with `bbox` (xyxy pixels), `width` and `height`, as in eval/rec.jsonl.
    Returns {"accuracy", "mean_iou", "questions", "grid", "threshold"}; raises ValueError for none.
    """
    scores = [grid_snapped_box(q["bbox"], int(q["width"]), int(q["height"]), grid)[1] for q in questions]
    if not scores:
        raise ValueError("oracle_rec_ceiling of no REC questions")
    return {"accuracy": sum(s >= threshold for s in scores) / len(scores),
            "mean_iou": sum(scores) / len(scores), "questions": len(scores), "grid": grid,
            "threshold": threshold}
