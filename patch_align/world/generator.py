"""Write a miniature world to disk in the project's real formats (layout in docs/demo.md).

    OUT/world.json                      manifest: spec, conventions, files, counts
    OUT/images/{train,eval}/*.png       the images (non-square, sizes vary)
    OUT/pretrain.json                   LLaVA pretraining JSON (one caption per train image)
    OUT/instruct.json                   LLaVA instruction JSON: caption, REC and VQA conversations
    OUT/pretrain_eval.json, OUT/instruct_eval.json   the same for the held-out images
    OUT/pad/{train,eval}.jsonl          PAD: one region per object, label "red circle", COCO RLE
    OUT/eval/rec.jsonl                  REC questions with ground-truth boxes (llava.eval.eval_rec)
    OUT/eval/vqa_questions.jsonl, vqa_answers.jsonl   VQA questions; one answer each (exact match)
    OUT/eval/caption_questions.jsonl, caption_references.json   caption prompts and references
    OUT/scenes/{train,eval}.jsonl       every object's properties, visible box, centroid, area

Image `i` of a split is drawn from its own generator seeded by (seed, split, i): the whole
world is a function of the spec, and changing `n_train` leaves the eval images unchanged.
"""
from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.eval.rec import (
    REC_PROMPT,
    ReferringRegion,
    box_to_padded_normalized,
    build_rec_questions,
    format_box,
)
from patch_align.pad.masks import encode_mask
from patch_align.world.oracle import grid_snapped_box
from patch_align.world.scene import (
    Scene,
    SceneSpec,
    VisibleObject,
    measure_objects,
    render_scene,
    sample_scene,
)
from patch_align.world.text import (
    CAPTION_PROMPT,
    PRETRAIN_PROMPTS,
    RELATION_WORDS,
    VQA_SUFFIX,
    binding_candidates,
    caption_relation,
    caption_variants,
    label,
    referring_expression,
    vqa_candidates,
)

logger = logging.getLogger(__name__)

# Bump when the same spec would produce different files.
GENERATOR_VERSION = 2
SPLITS = ("train", "eval")
_SPLIT_CODES = {"train": 0, "eval": 1}
WORLD_FILES = {
    "pretrain": "pretrain.json", "instruct": "instruct.json",
    "pretrain_eval": "pretrain_eval.json", "instruct_eval": "instruct_eval.json",
    "pad_train": "pad/train.jsonl", "pad_eval": "pad/eval.jsonl",
    # held-out analysis views of pad/eval.jsonl (docs/demo.md): the regions of the held-out pairs
    # only, and every object's size word / its caption's relation word as the label
    "pad_eval_held_out_pairs": "pad/eval_held_out_pairs.jsonl",
    "pad_eval_size_words": "pad/eval_size_words.jsonl",
    "pad_eval_relation_words": "pad/eval_relation_words.jsonl",
    "rec_questions": "eval/rec.jsonl",
    "vqa_questions": "eval/vqa_questions.jsonl", "vqa_answers": "eval/vqa_answers.jsonl",
    "caption_questions": "eval/caption_questions.jsonl", "caption_references": "eval/caption_references.json",
    "scenes_train": "scenes/train.jsonl", "scenes_eval": "scenes/eval.jsonl",
    "image_folder": "images",
}
MANIFEST_NAME = "world.json"


class WorldError(ValueError):
    """A folder that is not a complete world (no or unreadable manifest, missing files); names it."""


@dataclass(frozen=True)
class WorldSpec:
    """Every property of a world. `caption_references` captions are kept per eval image;
    `vqa_per_image` questions are asked per image (fewer when fewer are unambiguous), and
    `binding_per_image` binding questions on top (`text.binding_candidates`; fewer when fewer exist).
    `held_out_pairs`: "<colour> <shape>" labels left out of the training PAD file (their objects stay
    in the images, captions and questions), to test whether alignment generalises to unseen pairs.
    `rec_answer_grid`: 0: REC answers are the exact visible box (2 decimals, as LLaVA-1.5); G >= 1:
    the grid-snapped box of a G×G grid of the padded square (`oracle.grid_snapped_box`), so answers
    take G + 1 values per edge. Evaluation always scores against the exact box.
    `rec_records_per_image`: REC conversations per training image (each asks every object, in its
    own random order; ids `-rec`, `-rec2`, ...), to give box answers more of stage 2's samples.
    """

    seed: int = 0
    n_train: int = 2000
    n_eval: int = 200
    scene: SceneSpec = field(default_factory=SceneSpec)
    caption_references: int = 5
    vqa_per_image: int = 3
    binding_per_image: int = 0
    held_out_pairs: tuple[str, ...] = ()
    rec_answer_grid: int = 0
    rec_records_per_image: int = 1

    def check(self) -> None:
        """Raise ValueError naming the bad property."""
        self.scene.check()
        if self.n_train < 1 or self.n_eval < 1:
            raise ValueError(f"n_train and n_eval must be >= 1, got {self.n_train}, {self.n_eval}")
        if self.caption_references < 1 or self.vqa_per_image < 1:
            raise ValueError("caption_references and vqa_per_image must be >= 1, got "
                             f"{self.caption_references}, {self.vqa_per_image}")
        if self.rec_answer_grid < 0:
            raise ValueError(f"rec_answer_grid must be 0 (exact boxes) or G >= 1, got {self.rec_answer_grid}")
        if self.rec_records_per_image < 1:
            raise ValueError(f"rec_records_per_image must be >= 1, got {self.rec_records_per_image}")
        if self.binding_per_image < 0:
            raise ValueError(f"binding_per_image must be >= 0, got {self.binding_per_image}")
        pairs = {f"{c} {s}" for c in self.scene.colours for s in self.scene.shapes}
        unknown = [p for p in self.held_out_pairs if p not in pairs]
        if unknown or len(set(self.held_out_pairs)) != len(self.held_out_pairs):
            raise ValueError("held_out_pairs must be distinct '<colour> <shape>' pairs of the scene's "
                             f"colours and shapes, got {list(self.held_out_pairs)}")
        if len(self.held_out_pairs) >= len(pairs):
            raise ValueError(f"held_out_pairs leaves no pair to train on ({len(pairs)} pairs in the scene)")


@dataclass(frozen=True)
class RenderedImage:
    """One generated image with its ground truth: pixels (H, W, 3) uint8, id map (H, W) int16."""

    image_id: str
    image: str
    scene: Scene
    pixels: np.ndarray
    id_map: np.ndarray
    objects: list[VisibleObject]
    rng: np.random.Generator


def spec_to_json(spec: WorldSpec) -> dict[str, Any]:
    """The spec as plain JSON values (tuples become lists)."""
    return json.loads(json.dumps(asdict(spec)))


def spec_from_json(values: dict[str, Any]) -> WorldSpec:
    """Inverse of `spec_to_json`."""
    scene = {key: tuple(v) if isinstance(v, list) else v for key, v in values["scene"].items()}
    return WorldSpec(**{**values, "scene": SceneSpec(**scene),
                        "held_out_pairs": tuple(values.get("held_out_pairs", ()))})


def render_world_image(spec: WorldSpec, split: str, index: int) -> RenderedImage:
    """Image `index` of `split`, exactly as `make_world` writes it; `rng` is left ready for its text."""
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng([spec.seed, _SPLIT_CODES[split], index])
    scene = sample_scene(spec.scene, rng)
    pixels, id_map = render_scene(scene, rng)
    image_id = f"{split}-{index:06d}"
    return RenderedImage(image_id, f"{split}/{image_id}.png", scene, pixels, id_map,
                         measure_objects(scene, id_map), rng)


def pad_record(item: RenderedImage, labels: dict[int, str] | None = None) -> dict[str, Any]:
    """The PAD record of an image: one region per object, labelled `label(obj)`; with `labels`
    (object index → label), only those objects, with those labels."""
    regions = []
    for obj in item.objects:
        if labels is not None and obj.index not in labels:
            continue
        x1, y1, x2, y2 = obj.bbox_xyxy
        regions.append({"label": label(obj) if labels is None else labels[obj.index],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "segmentation": encode_mask(item.id_map == obj.index + 1)[0], "source": "world"})
    return {"id": item.image_id, "image": item.image, "width": item.scene.width,
            "height": item.scene.height, "regions": regions}


def rec_answer(obj: VisibleObject, width: int, height: int, grid: int = 0) -> str:
    """The box string a model is trained to answer, e.g. "[0.12, 0.30, 0.50, 0.90]": the exact box
    (`grid` 0, as LLaVA-1.5), or the grid-snapped box of a `grid`×`grid` padded square."""
    if grid:
        return format_box(grid_snapped_box(obj.bbox_xyxy, width, height, grid)[0])
    return format_box(box_to_padded_normalized(obj.bbox_xyxy, width, height, box_format="xyxy"))


def _with_image(prompt: str, rng: np.random.Generator) -> str:
    return f"{DEFAULT_IMAGE_TOKEN}\n{prompt}" if rng.random() < 0.5 else f"{prompt}\n{DEFAULT_IMAGE_TOKEN}"


def _conversation(item: RenderedImage, kind: str, turns: list[tuple[str, str]]) -> dict[str, Any]:
    conversations = []
    for number, (question, answer) in enumerate(turns):
        human = _with_image(question, item.rng) if number == 0 else question
        conversations += [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]
    return {"id": f"{item.image_id}-{kind}", "image": item.image, "conversations": conversations}


@dataclass
class _SplitWriter:
    """Accumulates the records of one split, drawing each image's text from its own generator."""

    spec: WorldSpec
    split: str
    pretrain: list[dict] = field(default_factory=list)
    instruct: list[dict] = field(default_factory=list)
    pad: list[dict] = field(default_factory=list)
    # analysis views (eval split): held-out pairs only, size words, relation words
    pad_views: dict[str, list[dict]] = field(default_factory=lambda: {
        "held_out_pairs": [], "size_words": [], "relation_words": []})
    scenes: list[dict] = field(default_factory=list)
    rec_regions: list[ReferringRegion] = field(default_factory=list)
    vqa_questions: list[dict] = field(default_factory=list)
    vqa_answers: list[dict] = field(default_factory=list)
    caption_questions: list[dict] = field(default_factory=list)
    caption_references: dict[str, list[str]] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)

    def add(self, item: RenderedImage) -> None:
        spec, rng, objects = self.spec, item.rng, item.objects
        width, height = item.scene.width, item.scene.height
        variants = caption_variants(objects, rng, spec.caption_references)
        captions = [text for text, _ in variants]
        prompt = PRETRAIN_PROMPTS[int(rng.integers(len(PRETRAIN_PROMPTS)))]
        self.pretrain.append({"id": item.image_id, "image": item.image, "conversations": [
            {"from": "human", "value": _with_image(prompt, rng)}, {"from": "gpt", "value": captions[0]}]})
        if self.split == "train" and spec.held_out_pairs:
            kept = {o.index: label(o) for o in objects if label(o) not in spec.held_out_pairs}
            self.counts["pad_regions_held_out"] += len(objects) - len(kept)
            self.pad.append(pad_record(item, kept))
        else:
            self.pad.append(pad_record(item))
        if self.split == "eval":
            self._add_views(item, variants[0][1])
        self.scenes.append({"id": item.image_id, "image": item.image, "width": width, "height": height,
                            "background": asdict(item.scene.background),
                            "objects": [{**asdict(o), **asdict(d)}
                                        for o, d in zip(objects, item.scene.objects, strict=True)]})
        rec_order = [objects[int(i)] for i in rng.permutation(len(objects))]
        candidates = vqa_candidates(objects, spec.scene.colours, spec.scene.shapes, rng)
        picked = sorted(rng.choice(len(candidates), size=min(spec.vqa_per_image, len(candidates)),
                                   replace=False).tolist())
        vqa = [candidates[i] for i in picked]
        if spec.binding_per_image:
            binding = binding_candidates(objects)
            chosen = rng.choice(len(binding), size=min(spec.binding_per_image, len(binding)), replace=False)
            vqa += [binding[i] for i in sorted(chosen.tolist())]
        self.instruct += [
            _conversation(item, "caption", [(CAPTION_PROMPT, captions[0])]),
            self._rec_conversation(item, "rec", rec_order),
            _conversation(item, "vqa", [(f"{q}\n{VQA_SUFFIX}", a) for _, q, a in vqa]),
        ]
        for obj in rec_order:
            number = len(self.rec_regions)
            self.rec_regions.append(ReferringRegion(
                ref_id=number, image=item.image, width=width, height=height,
                bbox_xyxy=tuple(float(v) for v in obj.bbox_xyxy), split=self.split,
                expressions=((number, referring_expression(obj)),)))
        for kind, question, answer in vqa:
            number = len(self.vqa_questions)
            self.vqa_questions.append({"question_id": number, "image": item.image,
                                       "text": f"{question}\n{VQA_SUFFIX}", "category": kind})
            self.vqa_answers.append({"question_id": number, "answer": answer, "category": kind})
            self.counts[f"vqa_{kind}"] += 1
        self.caption_questions.append({"question_id": item.image_id, "image": item.image,
                                       "text": CAPTION_PROMPT, "category": "caption"})
        self.caption_references[item.image_id] = captions
        self.counts["images"] += 1
        self.counts["objects"] += len(objects)
        self.counts["caption_references"] += len(captions)
        for obj in objects:
            self.counts[f"shape_{obj.shape}"] += 1
            self.counts[f"colour_{obj.colour}"] += 1
            self.counts[f"size_{obj.size}"] += 1
        self.counts[f"objects_per_image_{len(objects)}"] += 1
        # drawn last, so the rest of the world is the same whatever the count
        if self.split == "train":
            for number in range(2, spec.rec_records_per_image + 1):
                order = [objects[int(i)] for i in rng.permutation(len(objects))]
                self.instruct.append(self._rec_conversation(item, f"rec{number}", order))

    def _rec_conversation(self, item: RenderedImage, kind: str, order: list[VisibleObject]) -> dict[str, Any]:
        width, height, grid = item.scene.width, item.scene.height, self.spec.rec_answer_grid
        return _conversation(item, kind, [(REC_PROMPT.format(expression=referring_expression(o)),
                                           rec_answer(o, width, height, grid)) for o in order])

    def _add_views(self, item: RenderedImage, first_order: list[int]) -> None:
        """The held-out analysis views of one eval image (records without a region are left out)."""
        held_out = self.spec.held_out_pairs
        views = {"held_out_pairs": {o.index: label(o) for o in item.objects if label(o) in held_out},
                 "size_words": {o.index: o.size for o in item.objects}, "relation_words": {}}
        stated = caption_relation(item.objects, first_order)
        if stated is not None:
            views["relation_words"] = {stated[0]: RELATION_WORDS[stated[1]]}
        for name, labels in views.items():
            if labels:
                self.pad_views[name].append(pad_record(item, labels))


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1) + "\n")


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def load_manifest(world_dir: str | Path) -> dict[str, Any]:
    """The `world.json` of a complete world folder.

    Raises `WorldError` naming the folder when the manifest is missing or unreadable, or when a
    file or folder of `WORLD_FILES` is missing (checked here, before a caller spends time on it).
    """
    world_dir = Path(world_dir)
    path = world_dir / MANIFEST_NAME
    if not path.is_file():
        raise WorldError(f"{world_dir} is not a world folder: {MANIFEST_NAME} is missing "
                         "(make one with `patch-align world make --out DIR`)")
    regenerate = "regenerate it with `patch-align world make --force`"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WorldError(f"{path}: unreadable world manifest ({err}); {regenerate}") from err
    if not isinstance(manifest, dict):
        raise WorldError(f"{path}: a world manifest is a JSON object; {regenerate}")
    missing = sorted(name for name in WORLD_FILES.values() if not (world_dir / name).exists())
    if missing:
        raise WorldError(f"{world_dir} is an incomplete world: missing {', '.join(missing)}; {regenerate}")
    return manifest


def make_world(out_dir: str | Path, spec: WorldSpec, *, reuse: bool = True) -> dict[str, Any]:
    """Generate the world described by `spec` into `out_dir` and return its manifest.

    With `reuse`, a complete folder whose manifest already has this spec and `GENERATOR_VERSION`
    is left as it is; otherwise its image folder is emptied and every file rewritten. The manifest is
    written last, so an interrupted run is redone, not reused.
    """
    spec.check()
    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST_NAME
    if reuse and manifest_path.is_file():
        try:
            existing = load_manifest(out_dir)
        except WorldError as err:  # a damaged world is made again, never reused
            logger.warning("regenerating the world: %s", err)
        else:
            same_version = existing.get("generator_version") == GENERATOR_VERSION
            if same_version and existing.get("spec") == spec_to_json(spec):
                return existing
    manifest_path.unlink(missing_ok=True)
    # images of an earlier, larger world would otherwise linger next to the new ones
    shutil.rmtree(out_dir / WORLD_FILES["image_folder"], ignore_errors=True)
    writers = {}
    for split, count in (("train", spec.n_train), ("eval", spec.n_eval)):
        writer = _SplitWriter(spec, split)
        (out_dir / WORLD_FILES["image_folder"] / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            item = render_world_image(spec, split, index)
            Image.fromarray(item.pixels).save(out_dir / WORLD_FILES["image_folder"] / item.image)
            writer.add(item)
        writers[split] = writer
    train, held_out = writers["train"], writers["eval"]
    _write_json(out_dir / WORLD_FILES["pretrain"], train.pretrain)
    _write_json(out_dir / WORLD_FILES["instruct"], train.instruct)
    _write_json(out_dir / WORLD_FILES["pretrain_eval"], held_out.pretrain)
    _write_json(out_dir / WORLD_FILES["instruct_eval"], held_out.instruct)
    for split, writer in writers.items():
        _write_jsonl(out_dir / WORLD_FILES[f"pad_{split}"], [{"pad_version": 1}, *writer.pad])
        _write_jsonl(out_dir / WORLD_FILES[f"scenes_{split}"], writer.scenes)
    for view, records in held_out.pad_views.items():
        _write_jsonl(out_dir / WORLD_FILES[f"pad_eval_{view}"], [{"pad_version": 1}, *records])
    _write_jsonl(out_dir / WORLD_FILES["rec_questions"], build_rec_questions(held_out.rec_regions))
    _write_jsonl(out_dir / WORLD_FILES["vqa_questions"], held_out.vqa_questions)
    _write_jsonl(out_dir / WORLD_FILES["vqa_answers"], held_out.vqa_answers)
    _write_jsonl(out_dir / WORLD_FILES["caption_questions"], held_out.caption_questions)
    _write_json(out_dir / WORLD_FILES["caption_references"], held_out.caption_references)
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "spec": spec_to_json(spec),
        "files": WORLD_FILES,
        "conventions": {
            "image_ids": "'<split>-<index:06d>', image path '<split>/<id>.png' under the image folder",
            "rec_box": "[x1, y1, x2, y2] as fractions of the padded square (llava.eval.rec), 2 decimals "
                       "(snapped to spec.rec_answer_grid lines when it is > 0); "
                       "ground truth 'bbox' in eval/rec.jsonl is xyxy pixels of the visible object",
            "vqa_metric": "exact (one answer per question; score with llava.eval.eval_vqa --metric exact)",
            "pad_labels": "'<colour> <shape>', one region per visible object, mask after occlusion; "
                          "the training file leaves out the regions of spec.held_out_pairs",
            "pad_views": "pad/eval_held_out_pairs.jsonl: only the held-out pairs' regions; "
                         "pad/eval_size_words.jsonl: every object labelled with its size word; "
                         "pad/eval_relation_words.jsonl: the first object of the first reference "
                         "caption labelled with the relation word the caption states of it "
                         "(above, below, left, right)",
            "instruct_ids": "'<image id>-caption', '-rec' (and '-rec2', ... with "
                            "spec.rec_records_per_image > 1), '-vqa'; pretrain ids are the image ids, "
                            "so PAD joins them",
        },
        "counts": {split: dict(sorted(w.counts.items())) | {
            "pretrain_samples": len(w.pretrain), "instruct_samples": len(w.instruct),
            "pad_regions": sum(len(r["regions"]) for r in w.pad), "rec_questions": len(w.rec_regions),
            **({f"pad_view_{v}_regions": sum(len(r["regions"]) for r in records)
                for v, records in w.pad_views.items()} if split == "eval" else {}),
            "vqa_questions": len(w.vqa_questions)} for split, w in writers.items()},
    }
    _write_json(manifest_path, manifest)
    return manifest
