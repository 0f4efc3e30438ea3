"""PNG overlays of PAD records: each region's mask tinted, its box outlined, its label written."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from patch_align.pad.masks import decode_region_mask
from patch_align.pad.reader import iter_pad_records
from patch_align.pad.schema import PadRecord

# Distinct, saturated colours, cycled over regions.
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
    (170, 110, 40),
)
MASK_OPACITY = 0.5


def render_overlay(image: Image.Image, record: PadRecord) -> Image.Image:
    """The RGB `image` with the record's masks blended in at `MASK_OPACITY`, boxes and labels drawn on top.

    Raises ValueError when the image size differs from the record's (width, height).
    """
    if image.size != (record.width, record.height):
        raise ValueError(
            f"record {record.id}: image is {image.size[0]}x{image.size[1]}, record says "
            f"{record.width}x{record.height}"
        )
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    for i, region in enumerate(record.regions):
        mask = decode_region_mask(region, record.height, record.width)
        colour = np.array(PALETTE[i % len(PALETTE)], dtype=np.float32)
        pixels[mask] = (1 - MASK_OPACITY) * pixels[mask] + MASK_OPACITY * colour
    overlay = Image.fromarray(np.round(pixels).astype(np.uint8))
    draw = ImageDraw.Draw(overlay)
    for i, region in enumerate(record.regions):
        x, y, w, h = region.bbox
        colour = PALETTE[i % len(PALETTE)]
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=colour)
        score = "" if region.score is None else f" {region.score:.2f}"
        draw.text((x + 1, y + 1), region.label + score, fill=colour)
    return overlay


def show_records(
    pad_path: str | os.PathLike, image_folder: str | os.PathLike, ids: list[str], out_dir: str | os.PathLike
) -> list[Path]:
    """Write `<out_dir>/<id>.png` for each id, in the order given; returns the paths.

    Raises KeyError naming the ids that are not in the PAD file.
    """
    wanted = set(ids)
    found: dict[str, PadRecord] = {}
    for record in iter_pad_records(pad_path):
        if record.id in wanted and record.id not in found:
            found[record.id] = record
            if len(found) == len(wanted):
                break
    missing = [i for i in ids if i not in found]
    if missing:
        raise KeyError(f"ids not in {pad_path}: {', '.join(missing)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for record_id in ids:
        record = found[record_id]
        with Image.open(Path(image_folder) / record.image) as image:
            overlay = render_overlay(image, record)
        path = out_dir / f"{record_id.replace('/', '_')}.png"
        overlay.save(path)
        written.append(path)
    return written
