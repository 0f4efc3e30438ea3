"""Detector stage: boxes for an image's tags from a transformers zero-shot detector.

The model is loaded with `AutoModelForZeroShotObjectDetection` and `AutoProcessor`.
Two prompt styles are understood, chosen by the model's `model_type`:

- phrase grounding (Grounding DINO): one prompt `"tag one. tag two."` per image; the
  logits are (B, Q, T) over text tokens. A query's score for a tag is the mean token
  probability over the tag's tokens; the query keeps the best tag when that tag's score
  reaches `text_threshold` and its best token probability reaches `box_threshold`.
  Boxes are normalised to the image itself.
- per-query text (OWL-ViT, OWLv2): one text query per tag; the logits are (B, Q, K)
  with one column per tag, and the box threshold alone applies. OWLv2 pads the image
  to a square before predicting, so its boxes are normalised to the padded square.

After thresholding: boxes clipped to the image, per-tag NMS, cross-tag de-duplication
(a box of one tag that nearly repeats a better box of another tag is dropped), and at
most `max_regions` boxes per image, best first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

PHRASE_GROUNDING_TYPES = ("grounding-dino", "mm-grounding-dino")
PER_QUERY_TEXT_TYPES = ("owlvit", "owlv2")
# OWLv2 predicts boxes relative to the image padded (bottom/right) to a square.
PADDED_SQUARE_TYPES = ("owlv2",)

IMAGE_FRAME = "image"
PADDED_SQUARE_FRAME = "padded_square"


@dataclass(frozen=True)
class Detection:
    """One detected box: `box` is (x0, y0, x1, y1) in original-image pixels, `score` in [0, 1]."""

    label: str
    box: tuple[float, float, float, float]
    score: float


def normalized_boxes_to_pixels(boxes: torch.Tensor, width: int, height: int, frame: str) -> torch.Tensor:
    """(K, 4) normalised (cx, cy, w, h) boxes -> (K, 4) pixel (x0, y0, x1, y1), clipped to the image.

    `frame` says what the normalisation is relative to: `"image"` (the image itself) or
    `"padded_square"` (the image pasted at the top-left of a square of side max(w, h)).
    """
    if frame == IMAGE_FRAME:
        scale_x, scale_y = float(width), float(height)
    elif frame == PADDED_SQUARE_FRAME:
        scale_x = scale_y = float(max(width, height))
    else:
        raise ValueError(f"unknown box frame {frame!r} (expected {IMAGE_FRAME!r} or {PADDED_SQUARE_FRAME!r})")
    cx, cy, w, h = boxes.float().unbind(-1)
    corners = torch.stack(
        [(cx - w / 2) * scale_x, (cy - h / 2) * scale_y, (cx + w / 2) * scale_x, (cy + h / 2) * scale_y],
        dim=-1,
    )
    limits = torch.tensor([width, height, width, height], dtype=corners.dtype)
    return torch.minimum(corners.clamp(min=0), limits)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(K, 4) x (M, 4) xyxy boxes -> (K, M) intersection over union (0 where both are empty)."""
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def nms_keep(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> list[int]:
    """Indices kept by greedy NMS, best score first (ties keep the earlier index)."""
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    iou = box_iou(boxes, boxes)
    kept: list[int] = []
    for i in order:
        if all(iou[i, j] <= iou_threshold for j in kept):
            kept.append(i)
    return kept


def select_detections(
    candidates: list[Detection], nms_iou: float, dedup_iou: float, max_regions: int
) -> list[Detection]:
    """NMS within each label, then drop boxes overlapping a better box of another label by > `dedup_iou`.

    Returns at most `max_regions` detections, best score first.
    """
    survivors: list[Detection] = []
    for label in dict.fromkeys(d.label for d in candidates):
        group = [d for d in candidates if d.label == label]
        keep = nms_keep(torch.tensor([d.box for d in group]), torch.tensor([d.score for d in group]), nms_iou)
        survivors += [group[i] for i in keep]
    if not survivors:
        return []
    keep = nms_keep(
        torch.tensor([d.box for d in survivors]), torch.tensor([d.score for d in survivors]), dedup_iou
    )
    return [survivors[i] for i in keep][:max_regions]


def tag_token_spans(
    prompt_offsets: list[tuple[int, int]], tag_spans: list[tuple[int, int]]
) -> list[list[int]]:
    """For each tag's character span in the prompt, the token positions whose characters lie in it.

    `prompt_offsets` are the tokenizer's (start, end) character offsets per token
    ((0, 0) for special tokens). A tag cut off by truncation gets an empty list.
    """
    spans: list[list[int]] = []
    for start, end in tag_spans:
        spans.append([i for i, (s, e) in enumerate(prompt_offsets) if e > s and s >= start and e <= end])
    return spans


def grounding_prompt(tags: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """The phrase-grounding prompt "a. b." for `tags` and each tag's (start, end) character span."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    position = 0
    for tag in tags:
        spans.append((position, position + len(tag)))
        parts.append(tag + ".")
        position += len(tag) + 2  # the "." and the joining space
    return " ".join(parts), spans


def grounded_candidates(
    probs: torch.Tensor,
    boxes: torch.Tensor,
    tags: list[str],
    token_spans: list[list[int]],
    box_threshold: float,
    text_threshold: float,
) -> list[tuple[int, int, float]]:
    """(query, tag, score) for the queries of one image that pass both thresholds.

    `probs` is (Q, T) token probabilities, `boxes` (Q, 4); a tag's score is the mean of
    its tokens' probabilities, and a query's box score is its best token of any tag.
    """
    found: list[tuple[int, int, float]] = []
    usable = [(j, span) for j, span in enumerate(token_spans) if span]
    if not usable:
        return found
    tag_scores = torch.stack([probs[:, span].mean(-1) for _, span in usable], dim=1)  # (Q, tags)
    box_scores = torch.stack([probs[:, span].max(-1).values for _, span in usable], dim=1).max(-1).values
    best_score, best = tag_scores.max(-1)
    for q in range(probs.shape[0]):
        if box_scores[q] >= box_threshold and best_score[q] >= text_threshold:
            found.append((q, usable[int(best[q])][0], float(best_score[q])))
    return found


class ZeroShotDetector:
    """A transformers zero-shot detector (Grounding DINO, OWL-ViT, OWLv2) with PAD post-processing."""

    def __init__(
        self,
        model_path: str,
        box_threshold: float,
        text_threshold: float,
        nms_iou: float,
        dedup_iou: float,
        max_regions: int,
        min_box_side: float,
        device: torch.device,
        dtype: torch.dtype | None,
    ):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.model_path = model_path
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.nms_iou = nms_iou
        self.dedup_iou = dedup_iou
        self.max_regions = max_regions
        self.min_box_side = min_box_side
        self.device = device
        self.dtype = dtype
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(model_path).to(device).eval()
        self.model_type = self.model.config.model_type
        if self.model_type not in PHRASE_GROUNDING_TYPES + PER_QUERY_TEXT_TYPES:
            raise ValueError(
                f"--detector {model_path}: model type {self.model_type!r} is not supported "
                f"(supported: {PHRASE_GROUNDING_TYPES + PER_QUERY_TEXT_TYPES})"
            )
        self.frame = PADDED_SQUARE_FRAME if self.model_type in PADDED_SQUARE_TYPES else IMAGE_FRAME

    def settings(self) -> dict[str, Any]:
        return {
            "detector": self.model_path,
            "detector_type": self.model_type,
            "detector_revision": getattr(self.model.config, "_commit_hash", None),
            "box_threshold": self.box_threshold,
            "text_threshold": self.text_threshold,
            "nms_iou": self.nms_iou,
            "dedup_iou": self.dedup_iou,
            "max_regions": self.max_regions,
            "min_box_side": self.min_box_side,
        }

    @property
    def image_processor(self) -> Any:
        """The model's image processor; the pipeline runs it in DataLoader workers."""
        return self.processor.image_processor

    def detect(
        self, prepared: dict[str, torch.Tensor], tags: list[list[str]], sizes: list[tuple[int, int]]
    ) -> list[list[Detection]]:
        """Detections per image for that image's `tags`; `sizes` are (width, height) of the originals."""
        if not any(tags):
            return [[] for _ in tags]
        if self.model_type in PHRASE_GROUNDING_TYPES:
            candidates = self._grounding_candidates(prepared, tags)
        else:
            candidates = self._per_query_candidates(prepared, tags)
        results: list[list[Detection]] = []
        for (width, height), (image_tags, found, boxes) in zip(sizes, candidates, strict=True):
            pixel_boxes = normalized_boxes_to_pixels(boxes, width, height, self.frame)
            detections = []
            for q, j, score in found:
                x0, y0, x1, y1 = (float(v) for v in pixel_boxes[q])
                if x1 - x0 >= self.min_box_side and y1 - y0 >= self.min_box_side:
                    detections.append(Detection(image_tags[j], (x0, y0, x1, y1), score))
            results.append(select_detections(detections, self.nms_iou, self.dedup_iou, self.max_regions))
        return results

    def _forward(self, inputs: dict[str, torch.Tensor]) -> Any:
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with (
            torch.no_grad(),
            torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None),
        ):
            return self.model(**inputs)

    def _grounding_candidates(self, prepared: dict[str, torch.Tensor], tags: list[list[str]]) -> list[Any]:
        prompts = [grounding_prompt([t.lower() for t in image_tags]) for image_tags in tags]
        text = self.processor.tokenizer(
            [p for p, _ in prompts],
            padding="longest",
            truncation=True,
            max_length=self.model.config.max_text_len,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        offsets = text.pop("offset_mapping").tolist()
        outputs = self._forward({**prepared, **text})
        probs = outputs.logits.float().sigmoid().cpu()
        boxes = outputs.pred_boxes.float().cpu()
        result = []
        for i, image_tags in enumerate(tags):
            spans = tag_token_spans(offsets[i], prompts[i][1])
            found = grounded_candidates(
                probs[i], boxes[i], image_tags, spans, self.box_threshold, self.text_threshold
            )
            result.append((image_tags, found, boxes[i]))
        return result

    def _per_query_candidates(self, prepared: dict[str, torch.Tensor], tags: list[list[str]]) -> list[Any]:
        # OWL models take the same number of queries per image: pad with a blank query, ignored below.
        width = max(len(t) for t in tags)
        queries = [list(t) + [" "] * (width - len(t)) for t in tags]
        # Pad every query to the text tower's positions (16 for OWL): the tokenizer's own
        # model_max_length may be unset, and a longer query must not overflow them.
        text = self.processor.tokenizer(
            [q for row in queries for q in row],
            padding="max_length",
            truncation=True,
            max_length=self.model.config.text_config.max_position_embeddings,
            return_tensors="pt",
        )
        outputs = self._forward(
            {**prepared, "input_ids": text["input_ids"], "attention_mask": text["attention_mask"]}
        )
        probs = outputs.logits.float().sigmoid().cpu()
        boxes = outputs.pred_boxes.float().cpu()
        result = []
        for i, image_tags in enumerate(tags):
            found = []
            if image_tags:
                score, best = probs[i, :, : len(image_tags)].max(-1)
                found = [
                    (q, int(best[q]), float(score[q]))
                    for q in range(probs.shape[1])
                    if score[q] >= self.box_threshold
                ]
            result.append((image_tags, found, boxes[i]))
        return result
