"""Checking a PAD file against its images: every bad record is named, nothing stops the scan."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from patch_align.pad.masks import MaskDecodeError, MaskSizeError, decode_region_mask
from patch_align.pad.reader import MALFORMED_JSON, MALFORMED_RECORD, iter_pad_entries
from patch_align.pad.schema import PadRecord, PadRegion

DUPLICATE_ID = "duplicate_id"
MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
IMAGE_SIZE_MISMATCH = "image_size_mismatch"
MASK_SIZE_MISMATCH = "mask_size_mismatch"
INVALID_MASK = "invalid_mask"
EMPTY_MASK = "empty_mask"
EMPTY_BBOX = "empty_bbox"
BBOX_OUTSIDE = "bbox_outside"
EMPTY_LABEL = "empty_label"
LABEL_WITHOUT_TOKENS = "label_without_tokens"

PROBLEM_KINDS = (MALFORMED_JSON, MALFORMED_RECORD, DUPLICATE_ID, MISSING_IMAGE, UNREADABLE_IMAGE,
                 IMAGE_SIZE_MISMATCH, MASK_SIZE_MISMATCH, INVALID_MASK, EMPTY_MASK, EMPTY_BBOX,
                 BBOX_OUTSIDE, EMPTY_LABEL, LABEL_WITHOUT_TOKENS)

# Detector boxes are floats clipped to the image; allow float noise, not real overshoot.
_BBOX_TOLERANCE_PX = 1e-3
# Below this size a progress bar would only flicker.
_PROGRESS_MIN_BYTES = 8 << 20


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one record; `record_id` is the id, or `#N` when the id is unreadable."""

    record_id: str
    kind: str
    detail: str


@dataclass
class ValidationReport:
    """What `validate_pad` found: records and regions scanned, and every problem in file order."""

    path: str
    records: int = 0
    regions: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Number of problems per kind, kinds in `PROBLEM_KINDS` order."""
        found = Counter(p.kind for p in self.problems)
        return {kind: found[kind] for kind in PROBLEM_KINDS if found[kind]}

    @property
    def bad_records(self) -> int:
        return len({p.record_id for p in self.problems})

    @property
    def ok(self) -> bool:
        return not self.problems


def _region_problems(region: PadRegion, index: int, record: PadRecord, tokenizer: Any,
                     label_tokens: dict[str, int]) -> list[tuple[str, str]]:
    where = f"region {index} ({region.label!r})"
    found: list[tuple[str, str]] = []
    label = region.label.strip()
    if not label:
        found.append((EMPTY_LABEL, f"{where}: label is empty"))
    elif tokenizer is not None:
        if label not in label_tokens:
            label_tokens[label] = len(tokenizer.encode(label, add_special_tokens=False))
        if label_tokens[label] == 0:
            found.append((LABEL_WITHOUT_TOKENS, f"{where}: label tokenises to no tokens"))
    x, y, w, h = region.bbox
    if w <= 0 or h <= 0:
        found.append((EMPTY_BBOX, f"{where}: bbox {list(region.bbox)} has no area"))
    elif (x < -_BBOX_TOLERANCE_PX or y < -_BBOX_TOLERANCE_PX or x + w > record.width + _BBOX_TOLERANCE_PX
          or y + h > record.height + _BBOX_TOLERANCE_PX):
        found.append((BBOX_OUTSIDE, f"{where}: bbox {list(region.bbox)} (x, y, w, h) extends outside the "
                                    f"{record.width}x{record.height} image"))
    try:
        if not decode_region_mask(region, record.height, record.width).any():
            found.append((EMPTY_MASK, f"{where}: mask has no pixels"))
    except MaskSizeError as err:
        found.append((MASK_SIZE_MISMATCH, f"{where}: {err}"))
    except MaskDecodeError as err:
        found.append((INVALID_MASK, f"{where}: {err}"))
    return found


def _image_problems(record: PadRecord, image_folder: Path) -> list[tuple[str, str]]:
    path = image_folder / record.image
    if not path.is_file():
        return [(MISSING_IMAGE, f"image file {path} does not exist")]
    try:
        with Image.open(path) as image:
            size = image.size
    except (UnidentifiedImageError, OSError) as err:
        return [(UNREADABLE_IMAGE, f"image file {path} cannot be read: {err}")]
    if size != (record.width, record.height):
        return [(IMAGE_SIZE_MISMATCH, f"image {path} is {size[0]}x{size[1]} (width x height), record says "
                                      f"{record.width}x{record.height}")]
    return []


def validate_pad(path: str | os.PathLike, image_folder: str | os.PathLike, tokenizer: Any = None,
                 show_progress: bool = False) -> ValidationReport:
    """Check every record of the PAD file at `path` against the images in `image_folder`.

    `tokenizer` (optional, a transformers tokenizer) adds the check that each label
    tokenises to at least one token without special tokens. `show_progress` draws a tqdm
    bar on stderr for files of 8 MiB and more. Raises `FileNotFoundError` /
    `NotADirectoryError` for missing inputs and `PadFormatError` when the file as a whole
    is not PAD; every record-level problem goes into the report instead.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"PAD file {path} does not exist")
    image_folder = Path(image_folder)
    if not image_folder.is_dir():
        raise NotADirectoryError(f"image folder {image_folder} is not a directory")
    report = ValidationReport(path=str(path))
    first_number: dict[str, int] = {}
    label_tokens: dict[str, int] = {}
    size = os.path.getsize(path)
    with tqdm(total=size, unit="B", unit_scale=True, desc="validating PAD",
              disable=not show_progress or size < _PROGRESS_MIN_BYTES) as bar:
        for entry in iter_pad_entries(path):
            bar.update(entry.bytes_read - bar.n)
            report.records += 1
            record = entry.record
            if record is None:
                record_id = entry.raw_id or f"#{entry.number}"
                report.problems.append(Problem(record_id, entry.problem,
                                               f"record {entry.number} (line {entry.line}): {entry.detail}"))
                continue
            found: list[tuple[str, str]] = []
            if record.id in first_number:
                found.append((DUPLICATE_ID, f"duplicate id {record.id} (records {first_number[record.id]} "
                                            f"and {entry.number})"))
            else:
                first_number[record.id] = entry.number
            found += _image_problems(record, image_folder)
            for index, region in enumerate(record.regions):
                found += _region_problems(region, index, record, tokenizer, label_tokens)
            report.regions += len(record.regions)
            report.problems += [Problem(record.id, kind, detail) for kind, detail in found]
    return report
