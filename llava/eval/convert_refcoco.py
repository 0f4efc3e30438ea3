"""Turn RefCOCO / RefCOCO+ / RefCOCOg annotations into REC question files and LLaVA training data.

Inputs are the standard refer-toolkit files: the refs list (`refs(unc).p`, `refs(umd).p`,
or the same list saved as JSON, which is preferred) and COCO's `instances.json` (images
with `id, file_name, width, height`; annotations with `id, image_id, bbox` in xywh pixels).

Pickles can run code when loaded. They are read with an unpickler that refuses every
global (the refs files hold only lists, dicts, strings and numbers), and only when the
caller opts in, with a logged warning.

    python -m llava.eval.convert_refcoco --refs refs.json --instances instances.json \
        --dataset refcoco --out-dir DIR [--train-conversations train.json] [--allow-pickle]
"""
from __future__ import annotations

import argparse
import json
import logging
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.eval.rec import (
    ReferringRegion,
    box_to_padded_normalized,
    build_rec_questions,
    format_box,
    xywh_to_xyxy,
)

logger = logging.getLogger(__name__)


class _PlainDataUnpickler(pickle.Unpickler):
    """Loads only builtin containers and scalars; any class or function reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: refs pickles hold plain data only")


def load_refs(path: str | Path, *, allow_pickle: bool = False) -> list[dict[str, Any]]:
    """The refer-toolkit refs list from JSON, or from a pickle when `allow_pickle` is set."""
    path = Path(path)
    if path.suffix in (".p", ".pkl", ".pickle"):
        if not allow_pickle:
            raise ValueError(f"{path} is a pickle; pass allow_pickle=True (--allow-pickle) to read it "
                             "or convert it to JSON first")
        logger.warning("reading pickle %s: pickles are untrusted data; only globals-free content is accepted",
                       path)
        with path.open("rb") as f:
            # The refer toolkit wrote these files with Python 2; latin1 keeps byte strings readable.
            refs = _PlainDataUnpickler(f, encoding="latin1").load()
    else:
        with path.open() as f:
            refs = json.load(f)
    if not isinstance(refs, list):
        raise TypeError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    return refs


def load_instances(path: str | Path) -> tuple[dict[int, dict], dict[int, dict]]:
    """COCO instances file → (images by id, annotations by id)."""
    with Path(path).open() as f:
        instances = json.load(f)
    for key in ("images", "annotations"):
        if key not in instances:
            raise ValueError(f"{path}: instances file lacks {key!r}")
    return ({img["id"]: img for img in instances["images"]},
            {ann["id"]: ann for ann in instances["annotations"]})


def join_refs(
    refs: Iterable[Mapping[str, Any]],
    images: Mapping[int, dict],
    annotations: Mapping[int, dict],
    source: str,
) -> list[ReferringRegion]:
    """Attach each ref's image and box; `source` names the refs file in errors."""
    regions = []
    for ref in refs:
        ref_id = ref.get("ref_id")
        for key in ("ref_id", "ann_id", "image_id", "split", "sentences"):
            if key not in ref:
                raise ValueError(f"{source}: ref {ref_id!r} lacks {key!r}")
        if ref["ann_id"] not in annotations:
            raise ValueError(f"{source}: ref {ref_id} names annotation {ref['ann_id']}, not in instances")
        if ref["image_id"] not in images:
            raise ValueError(f"{source}: ref {ref_id} names image {ref['image_id']}, absent from instances")
        image = images[ref["image_id"]]
        expressions = tuple((s["sent_id"], s["sent"]) for s in ref["sentences"])
        regions.append(ReferringRegion(
            ref_id=ref_id,
            image=image["file_name"],
            width=image["width"],
            height=image["height"],
            bbox_xyxy=tuple(xywh_to_xyxy(annotations[ref["ann_id"]]["bbox"])),
            split=ref["split"],
            expressions=expressions,
        ))
    return regions


def write_question_files(
    regions: list[ReferringRegion], out_dir: str | Path, dataset: str
) -> dict[str, Path]:
    """Write `{dataset}_{split}.jsonl` question files; returns split → path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in sorted({r.split for r in regions}):
        path = out_dir / f"{dataset}_{split}.jsonl"
        with path.open("w") as f:
            for question in build_rec_questions(regions, splits=[split]):
                f.write(json.dumps(question) + "\n")
        paths[split] = path
    return paths


def build_training_conversations(regions: Iterable[ReferringRegion], split: str = "train") -> list[dict]:
    """LLaVA training records, one single-turn conversation per expression of `split`.

    The human turn is `<image>\\n` + the grounding prompt; the gpt turn is the padded-square
    normalised box, e.g. `[0.12, 0.30, 0.50, 0.90]`.
    """
    records = []
    for question in build_rec_questions(regions, splits=[split]):
        box = box_to_padded_normalized(
            question["bbox"], question["width"], question["height"], box_format="xyxy"
        )
        records.append({
            "id": f"rec-{question['question_id']}",
            "image": question["image"],
            "conversations": [
                {"from": "human", "value": f"{DEFAULT_IMAGE_TOKEN}\n{question['text']}"},
                {"from": "gpt", "value": format_box(box)},
            ],
        })
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--refs", required=True, help="refs list (.json preferred; .p needs --allow-pickle)")
    parser.add_argument("--instances", required=True, help="COCO instances.json of the same dataset")
    parser.add_argument("--dataset", required=True, help="name used in output file names, e.g. refcoco+")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--train-conversations", default=None, help="also write LLaVA training JSON here")
    parser.add_argument("--allow-pickle", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    refs = load_refs(args.refs, allow_pickle=args.allow_pickle)
    images, annotations = load_instances(args.instances)
    regions = join_refs(refs, images, annotations, source=args.refs)
    for split, path in write_question_files(regions, args.out_dir, args.dataset).items():
        logger.info("wrote %s questions to %s", split, path)
    if args.train_conversations:
        records = build_training_conversations(regions)
        with open(args.train_conversations, "w") as f:
            json.dump(records, f)
        logger.info("wrote %d training conversations to %s", len(records), args.train_conversations)


if __name__ == "__main__":
    main()
