"""The world's language: captions, labels, referring expressions and questions about a scene.

All functions read the measured ground truth (`VisibleObject`, from the final pixels), so a
sentence is true of the image a model sees. Spatial words compare visible centroids: "above"
/ "below" when the vertical offset is the larger one, "to the left of" / "to the right of"
otherwise.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from patch_align.world.scene import VisibleObject

VQA_SUFFIX = "Answer the question using a single word or phrase."
CAPTION_PROMPT = "Describe the image briefly."
PRETRAIN_PROMPTS = (
    "Describe the image briefly.",
    "Write a short caption for this picture.",
    "What does the image show? Answer in a few words.",
    "Give a brief description of the scene.",
)
VQA_KINDS = ("colour", "shape", "size", "count", "exists")


def label(obj: VisibleObject) -> str:
    """The PAD label of an object: colour and shape, e.g. "red circle"."""
    return f"{obj.colour} {obj.shape}"


def referring_expression(obj: VisibleObject) -> str:
    """The phrase that names exactly one object of its image (colour-shape pairs are unique)."""
    return f"the {obj.colour} {obj.shape}"


def noun_phrase(obj: VisibleObject) -> str:
    return f"a {obj.size} {obj.colour} {obj.shape}"


def relation(a: VisibleObject, b: VisibleObject) -> str:
    """Where `a` is relative to `b` ("above", "below", "to the left of", "to the right of")."""
    dx, dy = a.centroid[0] - b.centroid[0], a.centroid[1] - b.centroid[1]
    if abs(dy) > abs(dx):
        return "above" if dy < 0 else "below"
    return "to the left of" if dx < 0 else "to the right of"


def caption(objects: list[VisibleObject], order: list[int]) -> str:
    """"a small red circle above a large blue square and a small green triangle" for `order`."""
    first = objects[order[0]]
    if len(order) == 1:
        return noun_phrase(first)
    second = objects[order[1]]
    text = f"{noun_phrase(first)} {relation(first, second)} {noun_phrase(second)}"
    return " and ".join([text, *(noun_phrase(objects[i]) for i in order[2:])])


def caption_variants(objects: list[VisibleObject], rng: np.random.Generator, count: int) -> list[str]:
    """Up to `count` distinct true captions (different object orders), in the order drawn."""
    variants: list[str] = []
    for _ in range(8 * count):
        text = caption(objects, [int(i) for i in rng.permutation(len(objects))])
        if text not in variants:
            variants.append(text)
        if len(variants) == count:
            break
    return variants


def vqa_candidates(objects: list[VisibleObject], colours: tuple[str, ...],
                   shapes: tuple[str, ...], rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """Every unambiguous question about the scene as (kind, question, answer).

    colour: "What colour is the circle?" only for a shape that occurs once; shape: "What shape
    is the red object?" only for a colour that occurs once; "What size is the red circle?" for
    each object; the object
    count (answered with digits); and one yes/no "Is there a ...?" (yes or no drawn evenly).
    """
    shape_counts = Counter(o.shape for o in objects)
    colour_counts = Counter(o.colour for o in objects)
    questions = []
    for obj in objects:
        if shape_counts[obj.shape] == 1:
            questions.append(("colour", f"What colour is the {obj.shape}?", obj.colour))
        if colour_counts[obj.colour] == 1:
            questions.append(("shape", f"What shape is the {obj.colour} object?", obj.shape))
        questions.append(("size", f"What size is the {obj.colour} {obj.shape}?", obj.size))
    questions.append(("count", "How many objects are there?", str(len(objects))))
    present = {(o.colour, o.shape) for o in objects}
    absent = [(c, s) for c in colours for s in shapes if (c, s) not in present]
    if absent and rng.random() < 0.5:
        colour, shape = absent[int(rng.integers(len(absent)))]
        questions.append(("exists", f"Is there a {colour} {shape}?", "no"))
    else:
        obj = objects[int(rng.integers(len(objects)))]
        questions.append(("exists", f"Is there a {obj.colour} {obj.shape}?", "yes"))
    return questions
