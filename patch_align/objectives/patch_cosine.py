"""The patch-aligned loss: L_patch = mean over regions of (1 − cos(region's vision tokens, label)).

Pooling (`--patch_pooling`; the paper does not say which, both are ours to offer):
- `mean` (default): average the region's projected tokens, then one cosine with the label.
- `per_patch`: one cosine per token of the region, averaged.

Everything is computed in float32 with a norm floor `eps`, so bf16 features cannot produce
NaN or inf. The function is vectorised over regions of the whole batch: the per-region
weights form an (R, B·N) matrix multiplied with the flattened features (B·N, D).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

PATCH_POOLINGS = ("mean", "per_patch")
COSINE_EPS = 1e-6


@dataclass
class PatchCosineResult:
    """`loss_sum` = Σ_r (1 − cos_r), with graph; `cosines` (R,) detached float32.

    The caller divides `loss_sum` by the number of regions it normalises over (the regions
    of one micro-batch, or of a whole accumulated batch; see `patch_align.trainer`).
    """

    loss_sum: torch.Tensor
    cosines: torch.Tensor

    @property
    def num_regions(self) -> int:
        return int(self.cosines.shape[0])

    def mean_loss(self) -> torch.Tensor:
        """L_patch of these regions alone: mean of (1 − cos), an exact graph-connected 0 for no region."""
        return self.loss_sum / max(self.num_regions, 1)


def _region_weights(
    region_masks: torch.Tensor, region_sample_index: torch.Tensor, num_images: int
) -> torch.Tensor:
    """(R, B·N) float32: row r is region r's patch mask placed in its image's block of the flat token axis."""
    regions, tokens = region_masks.shape
    weights = region_masks.new_zeros((regions, num_images, tokens), dtype=torch.float32)
    weights[torch.arange(regions, device=region_masks.device), region_sample_index] = region_masks.float()
    return weights.reshape(regions, num_images * tokens)


def patch_cosine_loss(
    image_features: torch.Tensor,
    region_masks: torch.Tensor,
    region_sample_index: torch.Tensor,
    label_embeddings: torch.Tensor,
    pooling: str = "mean",
    eps: float = COSINE_EPS,
) -> PatchCosineResult:
    """Σ over regions of (1 − cosine) between mask-selected vision tokens and label embeddings.

    Shapes: `image_features` (B, N, D) projector outputs of this forward (any float dtype);
    `region_masks` (R, N) bool, each row with at least one True; `region_sample_index` (R,)
    long in [0, B): the image each region belongs to; `label_embeddings` (R, D). With R = 0
    the sum is `0 * image_features.sum()`: exactly 0, with a valid (all-zero) backward.
    """
    if pooling not in PATCH_POOLINGS:
        raise ValueError(f"--patch_pooling must be one of {PATCH_POOLINGS}, got {pooling!r}")
    if image_features.ndim != 3:
        raise ValueError(f"image_features must be (B, N, D), got shape {tuple(image_features.shape)}")
    num_images, tokens, dim = image_features.shape
    regions = region_masks.shape[0]
    if region_masks.shape != (regions, tokens):
        raise ValueError(
            f"region_masks must be (R, {tokens}) for {tokens} vision tokens, got {tuple(region_masks.shape)}"
        )
    if label_embeddings.shape != (regions, dim) or region_sample_index.shape != (regions,):
        raise ValueError(
            f"label_embeddings {tuple(label_embeddings.shape)} / region_sample_index "
            f"{tuple(region_sample_index.shape)} do not match {regions} regions of width {dim}"
        )
    if regions == 0:
        zero = image_features.float().sum() * 0.0
        return PatchCosineResult(zero, image_features.new_zeros((0,), dtype=torch.float32))
    counts = region_masks.sum(dim=1)
    if int(counts.min()) == 0:
        raise ValueError(
            "every region needs at least one patch (regions without patches are dropped upstream)"
        )
    if int(region_sample_index.min()) < 0 or int(region_sample_index.max()) >= num_images:
        raise ValueError(
            f"region_sample_index must lie in [0, {num_images}), got "
            f"[{int(region_sample_index.min())}, {int(region_sample_index.max())}]"
        )

    flat = image_features.float().reshape(num_images * tokens, dim)
    weights = _region_weights(region_masks, region_sample_index, num_images)  # (R, B·N)
    label_unit = F.normalize(label_embeddings.float(), dim=-1, eps=eps)  # (R, D)
    if pooling == "mean":
        pooled = (weights @ flat) / counts.unsqueeze(1).float()  # (R, D)
        cosines = (F.normalize(pooled, dim=-1, eps=eps) * label_unit).sum(dim=-1)
    else:
        token_unit = F.normalize(flat, dim=-1, eps=eps)  # (B·N, D)
        token_cosines = label_unit @ token_unit.T  # (R, B·N): every region against every token
        cosines = (token_cosines * weights).sum(dim=1) / counts.float()
    return PatchCosineResult((1.0 - cosines).sum(), cosines.detach())
