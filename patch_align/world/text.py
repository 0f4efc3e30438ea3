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
# Binding questions: the answer is an attribute of the object found by a place relation to another
# one, so a model must bind attributes to locations (WorldSpec.binding_per_image).
BINDING_KINDS = ("bind_colour", "bind_shape")
RELATIONS = ("above", "below", "to the left of", "to the right of")
# the one word of each relation that names it (used as a region label for matching-pursuit recall)
RELATION_WORDS = {"above": "above", "below": "below", "to the left of": "left", "to the right of": "right"}


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


def caption_relation(objects: list[VisibleObject], order: list[int]) -> tuple[int, str] | None:
    """The object index and relation `caption(objects, order)` states ("a ... above a ..."), or None
    for a one-object caption."""
    if len(order) < 2:
        return None
    return order[0], relation(objects[order[0]], objects[order[1]])


def caption(objects: list[VisibleObject], order: list[int]) -> str:
    """"a small red circle above a large blue square and a small green triangle" for `order`."""
    first = objects[order[0]]
    if len(order) == 1:
        return noun_phrase(first)
    second = objects[order[1]]
    text = f"{noun_phrase(first)} {relation(first, second)} {noun_phrase(second)}"
    return " and ".join([text, *(noun_phrase(objects[i]) for i in order[2:])])


def caption_variants(objects: list[VisibleObject], rng: np.random.Generator,
                     count: int) -> list[tuple[str, list[int]]]:
    """Up to `count` distinct true captions (different object orders) with the object order each
    describes, in the order drawn."""
    variants: list[tuple[str, list[int]]] = []
    for _ in range(8 * count):
        order = [int(i) for i in rng.permutation(len(objects))]
        text = caption(objects, order)
        if all(text != seen for seen, _ in variants):
            variants.append((text, order))
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


def binding_candidates(objects: list[VisibleObject]) -> list[tuple[str, str, str]]:
    """Every unambiguous binding question about the scene as (kind, question, answer).

    bind_colour: "What colour is the object to the left of the red circle?" when exactly one other
    object stands in that relation to the red circle (colour-shape pairs are unique, so the anchor
    is one object); bind_shape: "What shape is below the blue one?" when blue occurs once and
    exactly one other object is below it. Relations are `relation`'s, as in the captions.
    """
    colour_counts = Counter(o.colour for o in objects)
    questions = []
    for anchor in objects:
        for rel in RELATIONS:
            related = [o for o in objects if o is not anchor and relation(o, anchor) == rel]
            if len(related) != 1:
                continue
            target = related[0]
            questions.append(("bind_colour", f"What colour is the object {rel} the {anchor.colour} "
                              f"{anchor.shape}?", target.colour))
            if colour_counts[anchor.colour] == 1:
                questions.append(("bind_shape", f"What shape is {rel} the {anchor.colour} one?",
                                  target.shape))
    return questions
