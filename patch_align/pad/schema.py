"""The PAD record schema (version 1): typed records and their parsing from JSON values.

Parsing checks JSON types and shapes only. Whether a record agrees with its image and
whether its masks decode is the validator's job (`patch_align.pad.validate`), so a
record with, say, an empty label still parses and can be reported by id.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

PAD_VERSION = 1
SUPPORTED_PAD_VERSIONS = (1,)

# COCO RLE: {"size": [h, w], "counts": str (compressed) | list[int] (uncompressed)};
# polygons: a list of flat [x0, y0, x1, y1, ...] lists in pixel coordinates.
Segmentation = dict[str, Any] | list[list[float]]


class PadFormatError(ValueError):
    """A PAD file or record that cannot be read as PAD; the message names the file or record."""


@dataclass(frozen=True, slots=True)
class PadRegion:
    """One labelled region of an image.

    `bbox` is (x, y, w, h) in original-image pixels; `segmentation` is a COCO RLE dict
    or a polygon list (see `Segmentation`); `score` and `source` are optional provenance.
    """

    label: str
    bbox: tuple[float, float, float, float]
    segmentation: Segmentation
    score: float | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True)
class PadRecord:
    """All regions of one image; `image` is relative to the image folder, as in LLaVA's JSON."""

    id: str
    image: str
    width: int
    height: int
    regions: tuple[PadRegion, ...]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_segmentation(seg: Any, where: str) -> Segmentation:
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_positive_int(v) for v in size)):
            raise PadFormatError(f"{where}: segmentation 'size' must be [height, width] positive ints, "
                                 f"got {size!r}")
        if isinstance(counts, str):
            return seg
        if isinstance(counts, list) and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                            for c in counts):
            return seg
        raise PadFormatError(f"{where}: segmentation 'counts' must be an RLE string or a list of "
                             f"non-negative ints, got {type(counts).__name__}")
    if isinstance(seg, list) and seg and all(isinstance(p, list) and all(map(_is_number, p)) for p in seg):
        return seg
    raise PadFormatError(f"{where}: segmentation must be an RLE object or a non-empty list of "
                         "polygons (lists of numbers)")


def parse_pad_region(obj: Any, where: str) -> PadRegion:
    """Build a `PadRegion` from a decoded JSON value; `where` names it in error messages."""
    if not isinstance(obj, dict):
        raise PadFormatError(f"{where}: region must be a JSON object, got {type(obj).__name__}")
    label = obj.get("label")
    if not isinstance(label, str):
        raise PadFormatError(f"{where}: 'label' must be a string, got {type(label).__name__}")
    bbox = obj.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        raise PadFormatError(f"{where}: 'bbox' must be [x, y, w, h] numbers, got {bbox!r}")
    if "segmentation" not in obj:
        raise PadFormatError(f"{where}: missing 'segmentation'")
    segmentation = _check_segmentation(obj["segmentation"], where)
    score = obj.get("score")
    if score is not None and not _is_number(score):
        raise PadFormatError(f"{where}: 'score' must be a number, got {score!r}")
    source = obj.get("source")
    if source is not None and not isinstance(source, str):
        raise PadFormatError(f"{where}: 'source' must be a string, got {source!r}")
    return PadRegion(label=label, bbox=(bbox[0], bbox[1], bbox[2], bbox[3]), segmentation=segmentation,
                     score=None if score is None else float(score), source=source)


def parse_pad_record(obj: Any) -> PadRecord:
    """Build a `PadRecord` from a decoded JSON value; raises `PadFormatError` naming the bad field.

    Keys outside the schema are ignored so that later versions may add optional fields.
    """
    if not isinstance(obj, dict):
        raise PadFormatError(f"record must be a JSON object, got {type(obj).__name__}")
    record_id = obj.get("id")
    if not isinstance(record_id, str) or not record_id:
        raise PadFormatError(f"'id' must be a non-empty string, got {record_id!r}")
    image = obj.get("image")
    if not isinstance(image, str) or not image:
        raise PadFormatError(f"'image' must be a non-empty string, got {image!r}")
    for key in ("width", "height"):
        if not _is_positive_int(obj.get(key)):
            raise PadFormatError(f"'{key}' must be a positive integer, got {obj.get(key)!r}")
    regions = obj.get("regions")
    if not isinstance(regions, list):
        raise PadFormatError(f"'regions' must be a list, got {type(regions).__name__}")
    parsed = tuple(parse_pad_region(r, f"region {i}") for i, r in enumerate(regions))
    return PadRecord(id=record_id, image=image, width=obj["width"], height=obj["height"], regions=parsed)


def parse_pad_header(obj: Any) -> int | None:
    """The format version if `obj` is a header object (`{"pad_version": N}`, no `id`), else None.

    Raises `PadFormatError` for a version this code cannot read.
    """
    if not (isinstance(obj, dict) and "pad_version" in obj and "id" not in obj):
        return None
    version = obj["pad_version"]
    if version not in SUPPORTED_PAD_VERSIONS or isinstance(version, bool):
        raise PadFormatError(f"pad_version {version!r} is not supported "
                             f"(supported: {SUPPORTED_PAD_VERSIONS})")
    return version
