"""Auxiliary stage-1 objectives: one module per objective, plus the shared label-embedding helper."""

from patch_align.objectives.label_embedding import LabelEmbeddingCache, mean_label_embeddings
from patch_align.objectives.patch_cosine import PATCH_POOLINGS, PatchCosineResult, patch_cosine_loss

__all__ = [
    "PATCH_POOLINGS",
    "LabelEmbeddingCache",
    "PatchCosineResult",
    "mean_label_embeddings",
    "patch_cosine_loss",
]
