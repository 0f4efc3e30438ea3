"""Analysis tools: compression entropy, patch-level alignment, multi-semantic decomposition, SEA probes.

Definitions of every number: docs/metrics.md.
"""

from patch_align.analysis.alignment import (
    AlignmentAccumulator,
    ImageAlignment,
    chance_region_scores,
    cosine_maps,
    image_alignment,
    mask_iou,
    predict_region_masks,
)
from patch_align.analysis.decomposition import (
    PursuitResult,
    SignedAtoms,
    atoms_by_sign,
    matching_pursuit,
    orthogonal_matching_pursuit,
    precision_recall_of_words,
    word_match_counts,
    word_scores,
    word_token_ids,
)
from patch_align.analysis.entropy import (
    SecondMomentAccumulator,
    TokenSetEntropy,
    compression_report,
    density_matrix,
    entropy_ceiling,
    matrix_entropy,
    pooled_entropies,
    set_entropies,
    spectrum_entropy,
)
from patch_align.analysis.probes import embedding_gap, nearest_word_distances, nearest_words

__all__ = [
    "AlignmentAccumulator",
    "ImageAlignment",
    "PursuitResult",
    "SecondMomentAccumulator",
    "SignedAtoms",
    "TokenSetEntropy",
    "atoms_by_sign",
    "chance_region_scores",
    "compression_report",
    "cosine_maps",
    "density_matrix",
    "embedding_gap",
    "entropy_ceiling",
    "image_alignment",
    "mask_iou",
    "matching_pursuit",
    "matrix_entropy",
    "nearest_word_distances",
    "nearest_words",
    "orthogonal_matching_pursuit",
    "pooled_entropies",
    "precision_recall_of_words",
    "predict_region_masks",
    "set_entropies",
    "spectrum_entropy",
    "word_match_counts",
    "word_scores",
    "word_token_ids",
]
