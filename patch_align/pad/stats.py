"""Summary statistics of a PAD file: images, regions, labels, and how large the masks are."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as coco_mask

from patch_align.pad.masks import decode_region_mask
from patch_align.pad.reader import iter_pad_records
from patch_align.pad.schema import PadRegion

# Upper edges of the mask-area bins, as fractions of the image area; the last bin ends at 1.
AREA_BIN_EDGES = (0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass
class PadStats:
    """Counts over a PAD file; `area_histogram[i]` counts masks whose area fraction is in bin i."""

    images: int = 0
    regions: int = 0
    images_without_regions: int = 0
    regions_per_image: list[int] = field(default_factory=list)
    label_counts: Counter = field(default_factory=Counter)
    area_histogram: list[int] = field(default_factory=lambda: [0] * (len(AREA_BIN_EDGES) - 1))

    @property
    def unique_labels(self) -> int:
        return len(self.label_counts)

    def label_head(self, k: int) -> list[tuple[str, int]]:
        """The `k` most frequent labels, ties in alphabetical order."""
        return sorted(self.label_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]

    def label_tail(self, k: int) -> list[tuple[str, int]]:
        """The `k` least frequent labels, ties in alphabetical order."""
        return sorted(self.label_counts.items(), key=lambda kv: (kv[1], kv[0]))[:k]


def region_area(region: PadRegion, height: int, width: int) -> int:
    """Mask area in pixels; compressed RLE is measured without decoding the mask."""
    segmentation = region.segmentation
    if isinstance(segmentation, dict) and isinstance(segmentation["counts"], str):
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
        return int(coco_mask.area(rle))
    return int(decode_region_mask(region, height, width).sum())


def area_bin(fraction: float) -> int:
    """Index of the `AREA_BIN_EDGES` bin holding `fraction` (bins closed on the right; 0 goes in bin 0)."""
    return max(int(np.searchsorted(AREA_BIN_EDGES, fraction, side="left")) - 1, 0)


def pad_stats(path: str | os.PathLike) -> PadStats:
    """Statistics of the PAD file at `path` (streamed; raises `PadFormatError` on a bad record)."""
    stats = PadStats()
    for record in iter_pad_records(path):
        stats.images += 1
        stats.regions += len(record.regions)
        stats.regions_per_image.append(len(record.regions))
        stats.images_without_regions += not record.regions
        for region in record.regions:
            stats.label_counts[region.label] += 1
            fraction = region_area(region, record.height, record.width) / (record.width * record.height)
            stats.area_histogram[area_bin(fraction)] += 1
    return stats


def format_stats(stats: PadStats, k: int) -> str:
    """A plain-text report of `stats` with the `k` most and least frequent labels."""
    per_image = np.array(stats.regions_per_image or [0])
    lines = [
        f"images: {stats.images}",
        f"regions: {stats.regions}",
        f"images without regions: {stats.images_without_regions}",
        f"regions per image: mean {per_image.mean():.2f}, median {np.median(per_image):g}, "
        f"max {per_image.max()}",
        f"unique labels: {stats.unique_labels}",
        f"most frequent labels: {', '.join(f'{label} ({n})' for label, n in stats.label_head(k))}",
        f"least frequent labels: {', '.join(f'{label} ({n})' for label, n in stats.label_tail(k))}",
        "mask area / image area:",
    ]
    for i, count in enumerate(stats.area_histogram):
        lines.append(f"  ({AREA_BIN_EDGES[i]:g}, {AREA_BIN_EDGES[i + 1]:g}]: {count}")
    return "\n".join(lines)
