"""Segmenter stage: one mask per detected box from transformers' SAM, back at the original size.

SAM's image processor resizes an image so its longer side is `longest_edge` and pads
it bottom/right to a fixed square; the mask decoder predicts
low-resolution mask logits for that padded square. A box prompt is therefore scaled
into the resized frame, and a mask goes back by: upsample to the padded input
size, cut away the padding, resize to the original size, threshold logits at 0.
Of SAM's three candidate masks per box, the one with the best predicted IoU is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SegmentedBox:
    """A box's mask on the original image: `mask` is (H, W) bool, `score` SAM's predicted IoU in [0, 1]."""

    mask: np.ndarray
    score: float


def boxes_to_sam_frame(
    boxes: torch.Tensor, original_hw: tuple[int, int], resized_hw: tuple[int, int]
) -> torch.Tensor:
    """(K, 4) xyxy boxes in original pixels -> the same boxes in SAM's resized-image pixels."""
    (h, w), (rh, rw) = original_hw, resized_hw
    scale = torch.tensor([rw / w, rh / h, rw / w, rh / h], dtype=torch.float32)
    return boxes.float() * scale


def sam_masks_to_original(
    low_res_logits: torch.Tensor,
    padded_hw: tuple[int, int],
    resized_hw: tuple[int, int],
    original_hw: tuple[int, int],
) -> torch.Tensor:
    """(K, h, w) low-resolution mask logits over SAM's padded input -> (K, H, W) bool masks.

    `padded_hw` is SAM's input size (pixel_values' spatial size), `resized_hw` the image
    inside it (top-left), `original_hw` the original image size.
    """
    logits = F.interpolate(
        low_res_logits[:, None].float(), size=padded_hw, mode="bilinear", align_corners=False
    )
    logits = logits[..., : resized_hw[0], : resized_hw[1]]
    logits = F.interpolate(logits, size=original_hw, mode="bilinear", align_corners=False)
    return logits[:, 0] > 0


class SamSegmenter:
    """transformers' SAM (`SamModel` + `SamProcessor`) prompted with boxes."""

    def __init__(self, model_path: str, device: torch.device, dtype: torch.dtype | None):
        from transformers import SamModel, SamProcessor

        self.model_path = model_path
        self.device = device
        self.dtype = dtype
        self.processor = SamProcessor.from_pretrained(model_path)
        self.model = SamModel.from_pretrained(model_path).to(device).eval()

    def settings(self) -> dict[str, Any]:
        return {
            "segmenter": self.model_path,
            "segmenter_revision": getattr(self.model.config, "_commit_hash", None),
        }

    @property
    def image_processor(self) -> Any:
        """SAM's image processor; the pipeline runs it in DataLoader workers."""
        return self.processor.image_processor

    def segment(
        self, prepared: dict[str, torch.Tensor], boxes: list[torch.Tensor]
    ) -> list[list[SegmentedBox]]:
        """Masks for each image's (K, 4) xyxy original-pixel `boxes`; images without boxes skip SAM."""
        wanted = [i for i, b in enumerate(boxes) if len(b)]
        results: list[list[SegmentedBox]] = [[] for _ in boxes]
        if not wanted:
            return results
        pixel_values = prepared["pixel_values"][wanted].to(self.device)
        padded_hw = tuple(pixel_values.shape[-2:])
        with (
            torch.no_grad(),
            torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None),
        ):
            embeddings = self.model.get_image_embeddings(pixel_values)
            for row, i in enumerate(wanted):
                original_hw = tuple(int(v) for v in prepared["original_sizes"][i])
                resized_hw = tuple(int(v) for v in prepared["reshaped_input_sizes"][i])
                prompt = boxes_to_sam_frame(boxes[i], original_hw, resized_hw)[None].to(self.device)
                out = self.model(
                    image_embeddings=embeddings[row : row + 1], input_boxes=prompt, multimask_output=True
                )
                # SAM's IoU head is a regression and can leave [0, 1]; a region score is a probability
                iou = out.iou_scores[0].float().clamp(0.0, 1.0)  # (K, 3)
                best = iou.argmax(-1)
                low_res = out.pred_masks[0, torch.arange(len(best)), best].float().cpu()  # (K, h, w)
                masks = sam_masks_to_original(low_res, padded_hw, resized_hw, original_hw).numpy()
                results[i] = [SegmentedBox(m, float(iou[k, best[k]])) for k, m in enumerate(masks)]
        return results
