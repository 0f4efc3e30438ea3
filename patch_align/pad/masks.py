"""Decoding a PAD region's segmentation into a boolean mask, and encoding a mask as one, via pycocotools.

pycocotools trusts its input: RLE counts that do not add up to height × width decode
to garbage (or read past the buffer) without an error, so the counts are checked here
first, and every failure raises with a message that says what is wrong.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from patch_align.pad.schema import PadRegion, Segmentation


class MaskDecodeError(ValueError):
    """A segmentation that does not describe a valid mask."""


class MaskSizeError(MaskDecodeError):
    """An RLE whose `size` differs from the record's (height, width)."""


def compressed_rle_counts(counts: str) -> list[int]:
    """Run lengths of a COCO compressed RLE string.

    COCO packs each count in 5-bit groups (character value − 48, bit 0x20 = more groups
    follow, bit 0x10 of the last group = negative), and stores counts from the fourth on
    as differences to the count two places earlier.
    """
    runs: list[int] = []
    value, shift = 0, 0
    for char in counts:
        group = ord(char) - 48
        if not 0 <= group < 64:
            raise MaskDecodeError(f"RLE string has an invalid character {char!r}")
        value |= (group & 0x1F) << shift
        shift += 5
        if group & 0x20:
            continue
        if group & 0x10:
            value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise MaskDecodeError(f"RLE string decodes to a negative run length at run {len(runs)}")
        runs.append(value)
        value, shift = 0, 0
    if shift:
        raise MaskDecodeError("RLE string ends inside a run length")
    return runs


def encode_mask(mask: np.ndarray) -> tuple[dict[str, Any], list[float], int]:
    """A (H, W) bool mask as (COCO compressed RLE with ASCII counts, tight [x, y, w, h] box, area px).

    The RLE is JSON-ready (`size` ints, `counts` a str); the box is COCO's `toBbox` (floats, all
    zeros for an empty mask).
    """
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    bbox = [float(v) for v in coco_mask.toBbox(rle)]
    return (
        {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
        bbox,
        int(coco_mask.area(rle)),
    )


def _check_polygons(polygons: list[list[float]]) -> None:
    for i, polygon in enumerate(polygons):
        # pycocotools reads a 4-number list as a box, not a polygon, so demand at least 3 points
        if len(polygon) < 6 or len(polygon) % 2:
            raise MaskDecodeError(f"polygon {i} must list at least 3 (x, y) points as a flat even-length "
                                  f"list, got {len(polygon)} numbers")


def decode_segmentation(segmentation: Segmentation, height: int, width: int) -> np.ndarray:
    """The mask of a COCO RLE (compressed or uncompressed) or polygon list: `(height, width)` bool.

    Raises `MaskSizeError` when an RLE's `size` is not `[height, width]`, and
    `MaskDecodeError` when its run lengths do not cover exactly height × width pixels or a
    polygon has fewer than 3 points.
    """
    if isinstance(segmentation, dict):
        size = list(segmentation["size"])
        if size != [height, width]:
            raise MaskSizeError(f"RLE size {size} differs from the record's [height, width] = "
                                f"[{height}, {width}]")
        counts = segmentation["counts"]
        runs = compressed_rle_counts(counts) if isinstance(counts, str) else counts
        if sum(runs) != height * width:
            raise MaskDecodeError(f"RLE run lengths add up to {sum(runs)} pixels, not height*width = "
                                  f"{height * width}")
        if isinstance(counts, str):
            rle = {"size": size, "counts": counts.encode("ascii")}
        else:
            rle = coco_mask.frPyObjects(segmentation, height, width)
    else:
        _check_polygons(segmentation)
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    return coco_mask.decode(rle).astype(bool)


def decode_region_mask(region: PadRegion, height: int, width: int) -> np.ndarray:
    """The region's mask on its image, `(height, width)` bool; see `decode_segmentation` for errors."""
    return decode_segmentation(region.segmentation, height, width)
