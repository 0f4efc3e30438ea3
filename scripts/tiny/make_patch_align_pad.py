"""Write a PAD file for the tiny LLaVA data set: one region per coloured box, found from the pixels.

The tiny images (`llava.tiny.make_tiny_dataset`) are grey with boxes in the exact colours of
`llava.tiny.BOX_COLOURS`, so each box's mask is the set of pixels of its colour.
Usage: python scripts/tiny/make_patch_align_pad.py PRETRAIN_JSON IMAGE_FOLDER OUT_PAD_JSON
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from llava.tiny import BOX_COLOURS  # noqa: E402
from patch_align.pad import PAD_VERSION, encode_mask  # noqa: E402


def box_regions(image: np.ndarray) -> list[dict]:
    """(H, W, 3) uint8 → one PAD region per box colour present (compressed COCO RLE)."""
    regions = []
    for name, colour in sorted(BOX_COLOURS.items()):
        mask = np.all(image == np.array(colour, dtype=np.uint8), axis=-1)
        if not mask.any():
            continue
        segmentation, bbox, _ = encode_mask(mask)
        regions.append(
            {
                "label": f"{name} box",
                "bbox": [int(v) for v in bbox],  # whole pixels, as this file has always written them
                "segmentation": segmentation,
                "score": 1.0,
                "source": "tiny-colour-mask",
            }
        )
    return regions


def main(pretrain_json: str, image_folder: str, out_path: str) -> None:
    records = [{"pad_version": PAD_VERSION}]
    for sample in json.loads(pathlib.Path(pretrain_json).read_text()):
        if "image" not in sample:
            continue
        image = np.asarray(Image.open(pathlib.Path(image_folder) / sample["image"]).convert("RGB"))
        records.append(
            {
                "id": str(sample["id"]),
                "image": sample["image"],
                "width": image.shape[1],
                "height": image.shape[0],
                "regions": box_regions(image),
            }
        )
    pathlib.Path(out_path).write_text(json.dumps(records))
    print(f"wrote {len(records) - 1} PAD records to {out_path}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
