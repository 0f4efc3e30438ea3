"""SEA (supervised embedding alignment): vocabulary, offline CLIP token labels, pair sampling, loss.

Choices and flags: docs/sea.md. The CLIP labelling (`patch_align.sea.labeling`) and the CLI
are not imported here, so training code does not load them.
"""

from patch_align.sea.loss import INITIAL_TEMPERATURE, SeaLossOutput, SeaTemperature, sea_info_nce
from patch_align.sea.sampling import SeaPairs, deduplicate, draw_patch_labels, localise, sample_sea_pairs
from patch_align.sea.store import SeaLabels
from patch_align.sea.targets import VocabularyTargets

__all__ = [
    "INITIAL_TEMPERATURE",
    "SeaLabels",
    "SeaLossOutput",
    "SeaPairs",
    "SeaTemperature",
    "VocabularyTargets",
    "deduplicate",
    "draw_patch_labels",
    "localise",
    "sample_sea_pairs",
    "sea_info_nce",
]
