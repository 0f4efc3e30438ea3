"""Patch-level alignment between projected vision tokens and label word embeddings.

For one image: patch tokens ``V`` (N, D) on a G×G grid (row-major, N = G·G), R region labels
with word embeddings ``W`` (R, D) and true patch masks ``M`` (R, N). The cosine maps
``C = cos(W, V)`` (R, N) are turned into predicted masks and scored against ``M`` by IoU,
pointing and mean cosine inside/outside. Exact definitions: docs/metrics.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "AlignmentAccumulator",
    "ImageAlignment",
    "chance_region_scores",
    "cosine_maps",
    "image_alignment",
    "mask_iou",
    "predict_region_masks",
]

AssignRule = Literal["argmax", "threshold"]


def _unit_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    norms = x.norm(dim=-1, keepdim=True)
    zero = (norms == 0).squeeze(-1).nonzero()
    if zero.numel():
        raise ValueError(f"{name} row at index {tuple(zero[0].tolist())} has zero norm; cosine is undefined")
    return x / norms


def cosine_maps(patch_tokens: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every label embedding with every patch token.

    Args:
        patch_tokens: (..., N, D) projected vision tokens.
        word_embeddings: (..., R, D) label embeddings (same leading dims, or none).

    Returns:
        (..., R, N) cosines, computed in at least float32.
    """
    if patch_tokens.shape[-1] != word_embeddings.shape[-1]:
        raise ValueError(
            f"patch tokens have D={patch_tokens.shape[-1]} but word embeddings D={word_embeddings.shape[-1]}"
        )
    words = _unit_rows(word_embeddings, "word_embeddings")
    return words @ _unit_rows(patch_tokens, "patch_tokens").transpose(-1, -2)


def predict_region_masks(
    cosines: torch.Tensor,
    *,
    assign: AssignRule = "argmax",
    background_threshold: float | None = None,
    threshold_k: float = 1.0,
    fixed_threshold: float | None = None,
) -> torch.Tensor:
    """Predicted patch masks from cosine maps.

    Args:
        cosines: (..., R, N) cosine maps of one image's R labels.
        assign: ``"argmax"``: each patch goes to its most similar label (first on ties);
            ``"threshold"``: patch n is in region r when ``C[r, n] >= t_r``, regions may overlap.
        background_threshold: argmax only; a patch whose best cosine is below it belongs to no label.
        threshold_k: threshold only; ``t_r = mean(C[r]) + k · std(C[r])`` (population std over N).
        fixed_threshold: threshold only; when given, ``t_r`` is this value for every map.

    Returns:
        (..., R, N) boolean predicted masks.
    """
    if assign == "argmax":
        if fixed_threshold is not None:
            raise ValueError("fixed_threshold applies only to assign='threshold'")
        best_cos, best_label = cosines.max(dim=-2)
        labels = torch.arange(cosines.shape[-2], device=cosines.device).unsqueeze(-1)
        masks = best_label.unsqueeze(-2) == labels
        if background_threshold is not None:
            masks &= (best_cos >= background_threshold).unsqueeze(-2)
        return masks
    if assign == "threshold":
        if background_threshold is not None:
            raise ValueError("background_threshold applies only to assign='argmax'")
        if fixed_threshold is not None:
            return cosines >= fixed_threshold
        mean = cosines.mean(dim=-1, keepdim=True)
        std = cosines.std(dim=-1, keepdim=True, correction=0)
        return cosines >= mean + threshold_k * std
    raise ValueError(f"assign must be 'argmax' or 'threshold', got {assign!r}")


def mask_iou(predicted: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """IoU of boolean masks (..., N) → (...) float32; every true mask must be non-empty."""
    if (true.sum(dim=-1) == 0).any():
        raise ValueError("mask_iou needs non-empty true masks (skip empty regions before scoring)")
    intersection = (predicted & true).sum(dim=-1)
    union = (predicted | true).sum(dim=-1)
    return intersection.float() / union.float()


def chance_region_scores(
    true_masks: torch.Tensor, n_labels: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected IoU and pointing hit rate of each region when the cosine maps carry no information.

    The chance model (ours, exact, no sampling): under ``assign="argmax"`` without background,
    every patch takes one of the image's ``R`` labels uniformly at random and independently, so a
    region with ``t`` true patches out of ``N`` gets ``X ~ Bin(t, 1/R)`` of them and
    ``Y ~ Bin(N - t, 1/R)`` others; ``E[IoU] = E[X] · E[1 / (t + Y)]`` (X and Y independent)
    ``= (t/R) · Σ_y Bin(y; N - t, 1/R) / (t + y)``. The argmax patch of an uninformative map is a
    uniform patch, so ``E[pointing] = t / N``.

    Args:
        true_masks: (R_scored, N) bool true patch masks, each non-empty.
        n_labels: R, the number of labels competing in the argmax (the image's labels, including
            those with empty masks); default ``R_scored``.

    Returns:
        (R_scored,) float64 expected IoU and (R_scored,) float64 expected pointing hit rate.
    """
    if true_masks.dim() != 2:
        raise ValueError(f"true_masks must have shape (R, N), got {tuple(true_masks.shape)}")
    labels = true_masks.shape[0] if n_labels is None else n_labels
    if labels < max(true_masks.shape[0], 1):
        raise ValueError(f"n_labels must be >= 1 and >= the {true_masks.shape[0]} masks given, got {labels}")
    n = true_masks.shape[1]
    inside = true_masks.sum(dim=-1).to(torch.float64).cpu()
    if (inside == 0).any():
        raise ValueError("chance_region_scores needs non-empty true masks (skip empty regions first)")
    pointing = inside / n
    if labels == 1:  # every patch goes to the one label: IoU = t / N exactly
        return pointing.clone(), pointing
    p = 1.0 / labels
    expected = []
    for t in inside.tolist():
        others = n - int(t)
        y = torch.arange(others + 1, dtype=torch.float64)
        log_pmf = (
            math.lgamma(others + 1) - torch.lgamma(y + 1) - torch.lgamma(others - y + 1)
            + y * math.log(p) + (others - y) * math.log1p(-p)
        )
        expected.append(float(t * p * (log_pmf.exp() / (t + y)).sum()))
    return torch.tensor(expected, dtype=torch.float64), pointing


@dataclass(frozen=True)
class ImageAlignment:
    """Scores of the scored (non-empty) regions of one image; all tensors are (R_scored,)."""

    region_index: torch.Tensor  # long: index of the region among the image's R labels
    iou: torch.Tensor  # float32
    pointing_hit: torch.Tensor  # bool: argmax patch of C[r] lies inside M[r]
    cos_inside: torch.Tensor  # float32: mean of C[r] over M[r]
    cos_outside: torch.Tensor  # float32: mean of C[r] outside M[r]; 0.0 where has_outside is False
    has_outside: torch.Tensor  # bool: M[r] leaves at least one patch outside
    skipped_empty: int  # regions whose true mask was empty


def image_alignment(
    patch_tokens: torch.Tensor,
    word_embeddings: torch.Tensor,
    true_masks: torch.Tensor,
    *,
    assign: AssignRule = "argmax",
    background_threshold: float | None = None,
    threshold_k: float = 1.0,
    fixed_threshold: float | None = None,
) -> ImageAlignment:
    """Score the alignment of one image.

    Args:
        patch_tokens: (N, D) projected patch tokens, row-major over the G×G grid.
        word_embeddings: (R, D) one embedding per region label.
        true_masks: (R, N) boolean true patch masks. Empty ones are skipped and counted, but
            their labels still compete in the argmax assignment (they are labels of the image).
        assign, background_threshold, threshold_k, fixed_threshold: see ``predict_region_masks``.
    """
    if patch_tokens.dim() != 2 or word_embeddings.dim() != 2:
        raise ValueError(
            f"expected patch_tokens (N, D) and word_embeddings (R, D), got "
            f"{tuple(patch_tokens.shape)} and {tuple(word_embeddings.shape)}"
        )
    expected = (word_embeddings.shape[0], patch_tokens.shape[0])
    if tuple(true_masks.shape) != expected:
        raise ValueError(f"true_masks must have shape (R, N) = {expected}, got {tuple(true_masks.shape)}")
    true_masks = true_masks.to(device=patch_tokens.device, dtype=torch.bool)
    cos = cosine_maps(patch_tokens, word_embeddings)
    predicted = predict_region_masks(
        cos,
        assign=assign,
        background_threshold=background_threshold,
        threshold_k=threshold_k,
        fixed_threshold=fixed_threshold,
    )
    scored = true_masks.any(dim=-1)
    index = scored.nonzero().squeeze(-1)
    cos, predicted, true = cos[index], predicted[index], true_masks[index]
    pointing = true.gather(-1, cos.argmax(dim=-1, keepdim=True)).squeeze(-1)
    inside_count = true.sum(dim=-1)
    outside_count = (~true).sum(dim=-1)
    inside_sum = torch.where(true, cos, torch.zeros_like(cos)).sum(dim=-1)
    outside_sum = torch.where(true, torch.zeros_like(cos), cos).sum(dim=-1)
    return ImageAlignment(
        region_index=index,
        iou=mask_iou(predicted, true),
        pointing_hit=pointing,
        cos_inside=(inside_sum / inside_count).float(),
        cos_outside=(outside_sum / outside_count.clamp(min=1)).float(),
        has_outside=outside_count > 0,
        skipped_empty=int((~scored).sum()),
    )


class AlignmentAccumulator:
    """Aggregates ``image_alignment`` over many images (macro average over regions).

    ``update`` takes the same arguments as ``image_alignment`` for one image; the scoring
    options are fixed at construction so every image is scored the same way.
    """

    def __init__(
        self,
        *,
        assign: AssignRule = "argmax",
        background_threshold: float | None = None,
        threshold_k: float = 1.0,
        fixed_threshold: float | None = None,
    ) -> None:
        self._options = {
            "assign": assign,
            "background_threshold": background_threshold,
            "threshold_k": threshold_k,
            "fixed_threshold": fixed_threshold,
        }
        # Validate the option combination once, on a dummy map.
        predict_region_masks(torch.zeros(1, 1), **self._options)
        self.images = 0
        self.regions_scored = 0
        self.regions_skipped_empty_mask = 0
        self.regions_without_outside = 0
        self._iou_sum = 0.0
        self._pointing_hits = 0
        self._inside_sum = 0.0
        self._outside_sum = 0.0
        self._chance_iou_sum = 0.0
        self._chance_pointing_sum = 0.0

    def update(
        self, patch_tokens: torch.Tensor, word_embeddings: torch.Tensor, true_masks: torch.Tensor
    ) -> None:
        """Score one image: patch_tokens (N, D), word_embeddings (R, D), true_masks (R, N)."""
        result = image_alignment(patch_tokens, word_embeddings, true_masks, **self._options)
        has_outside = result.has_outside
        self.images += 1
        self.regions_scored += int(result.region_index.numel())
        self.regions_skipped_empty_mask += result.skipped_empty
        self.regions_without_outside += int((~has_outside).sum())
        self._iou_sum += float(result.iou.double().sum())
        self._pointing_hits += int(result.pointing_hit.sum())
        self._inside_sum += float(result.cos_inside.double().sum())
        self._outside_sum += float(result.cos_outside[has_outside].double().sum())
        if result.region_index.numel():
            scored = true_masks.to(torch.bool)[result.region_index.to(true_masks.device)]
            chance_iou, chance_pointing = chance_region_scores(scored, n_labels=true_masks.shape[0])
            self._chance_iou_sum += float(chance_iou.sum())
            self._chance_pointing_sum += float(chance_pointing.sum())

    def result(self) -> dict[str, float | int | None]:
        """mIoU, pointing accuracy, mean inside/outside cosine, their chance lines and the counts behind them.

        ``mean_cos_outside`` is None when no scored region had any patch outside its mask.
        ``chance_miou`` (the argmax chance model of ``chance_region_scores``) is None under
        ``assign="threshold"``, whose predicted sizes have no such model; ``chance_pointing_accuracy``
        holds for every rule.
        """
        if self.regions_scored == 0:
            raise ValueError(
                f"no region was scored over {self.images} images "
                f"({self.regions_skipped_empty_mask} skipped for empty masks)"
            )
        with_outside = self.regions_scored - self.regions_without_outside
        return {
            "miou": self._iou_sum / self.regions_scored,
            "pointing_accuracy": self._pointing_hits / self.regions_scored,
            "mean_cos_inside": self._inside_sum / self.regions_scored,
            "mean_cos_outside": self._outside_sum / with_outside if with_outside else None,
            "chance_miou": (
                self._chance_iou_sum / self.regions_scored if self._options["assign"] == "argmax" else None
            ),
            "chance_pointing_accuracy": self._chance_pointing_sum / self.regions_scored,
            "images": self.images,
            "regions_scored": self.regions_scored,
            "regions_skipped_empty_mask": self.regions_skipped_empty_mask,
            "regions_without_outside": self.regions_without_outside,
        }
