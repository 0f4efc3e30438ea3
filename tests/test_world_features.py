"""The world's downstream features: the grid-snapped REC ceiling, binding questions, held-out
colour-shape pairs and the analysis views of words that are never PAD labels."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from llava.eval.eval_vqa import read_jsonl
from patch_align.pad import load_pad_index
from patch_align.world.generator import WORLD_FILES, WorldSpec, make_world, spec_from_json, spec_to_json
from patch_align.world.oracle import grid_snapped_box, oracle_rec_ceiling
from patch_align.world.scene import VisibleObject
from patch_align.world.text import binding_candidates

# ---------------------------------------------------------------- oracle ceiling


def test_a_box_on_the_grid_is_found_exactly():
    box, score = grid_snapped_box([10, 10, 30, 30], 60, 60, 6)
    assert box == [1 / 6, 1 / 6, 3 / 6, 3 / 6] and score == 1.0


def test_a_box_between_grid_lines_gets_the_best_neighbouring_lines():
    # 16 px box inside a 20 px block of 10 px cells: the block is best, IoU 16²/20²
    box, score = grid_snapped_box([12, 12, 28, 28], 60, 60, 6)
    assert box == [1 / 6, 1 / 6, 3 / 6, 3 / 6] and score == pytest.approx(0.64)


def test_a_box_smaller_than_a_patch_is_capped_by_the_patch():
    _, score = grid_snapped_box([12, 12, 14, 14], 60, 60, 6)
    assert score == pytest.approx(4 / 100)


def test_the_padding_is_clipped_away_as_the_scorer_does():
    # 60×30 pads to 60×60 with 15 px above: the whole image spans rows 1.5..4.5 of the grid, and the
    # snapped box's overhang into the padding is clipped, so the oracle is exact
    _, score = grid_snapped_box([0, 0, 60, 30], 60, 30, 6)
    assert score == 1.0


def test_the_ceiling_is_the_share_of_boxes_the_oracle_gets_at_iou_half():
    questions = [{"bbox": [10, 10, 30, 30], "width": 60, "height": 60},
                 {"bbox": [12, 12, 14, 14], "width": 60, "height": 60}]
    ceiling = oracle_rec_ceiling(questions, grid=6)
    assert ceiling["accuracy"] == 0.5 and ceiling["questions"] == 2
    assert ceiling["mean_iou"] == pytest.approx((1 + 0.04) / 2)
    assert oracle_rec_ceiling(questions, grid=30)["accuracy"] == 1.0  # 2 px cells: both exact


def test_bad_oracle_input_is_refused():
    with pytest.raises(ValueError, match="no area"):
        grid_snapped_box([5, 5, 5, 9], 60, 60, 6)
    with pytest.raises(ValueError, match="grid"):
        grid_snapped_box([5, 5, 9, 9], 60, 60, 0)
    with pytest.raises(ValueError, match="no REC questions"):
        oracle_rec_ceiling([], grid=6)


# ---------------------------------------------------------------- binding questions


def _at(x: float, y: float, colour: str, shape: str) -> VisibleObject:
    return VisibleObject(0, shape, colour, "small", (0, 0, 1, 1), (x, y), 1, 1)


def test_binding_questions_ask_what_stands_in_a_unique_relation_to_an_anchor():
    red_circle, blue_square, green_triangle = _at(10, 50, "red", "circle"), _at(50, 50, "blue", "square"), \
        _at(50, 90, "green", "triangle")
    questions = set(binding_candidates([red_circle, blue_square, green_triangle]))
    assert ("bind_colour", "What colour is the object to the left of the blue square?", "red") in questions
    assert ("bind_shape", "What shape is below the blue one?", "triangle") in questions
    assert ("bind_colour", "What colour is the object above the green triangle?", "blue") in questions
    # two objects are to the right of the red circle: no question about "right of the red circle"
    assert not any("to the right of the red" in q for _, q, _ in questions)


def test_a_shape_binding_question_needs_a_unique_anchor_colour():
    questions = binding_candidates([_at(10, 10, "red", "circle"), _at(10, 50, "red", "square")])
    assert {q for kind, q, _ in questions if kind == "bind_shape"} == set()
    assert ("bind_colour", "What colour is the object below the red circle?", "red") in questions


# ---------------------------------------------------------------- a world with the features

FEATURE_SPEC = WorldSpec(seed=5, n_train=40, n_eval=8, binding_per_image=2,
                         held_out_pairs=("red circle", "blue square"))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("features")
    make_world(out, FEATURE_SPEC)
    return out


def _labels(path: Path) -> list[str]:
    return [r.label for record in load_pad_index(path).values() for r in record.regions]


def test_held_out_pairs_are_missing_from_training_pad_labels_only(world):
    train_labels = _labels(world / WORLD_FILES["pad_train"])
    assert not {"red circle", "blue square"} & set(train_labels)
    scenes = [json.loads(line) for line in (world / WORLD_FILES["scenes_train"]).read_text().splitlines()]
    held = sum((o["colour"], o["shape"]) in {("red", "circle"), ("blue", "square")}
               for s in scenes for o in s["objects"])
    assert held > 0 and len(train_labels) == sum(len(s["objects"]) for s in scenes) - held
    manifest = json.loads((world / "world.json").read_text())
    assert manifest["counts"]["train"]["pad_regions_held_out"] == held
    # the objects stay in the captions
    pretrain = json.loads((world / "pretrain.json").read_text())
    captions = " ".join(r["conversations"][1]["value"] for r in pretrain)
    assert "red circle" in captions or "blue square" in captions


def test_the_held_out_view_holds_exactly_the_eval_regions_of_held_out_pairs(world):
    full = _labels(world / WORLD_FILES["pad_eval"])
    view = _labels(world / WORLD_FILES["pad_eval_held_out_pairs"])
    assert sorted(view) == sorted(label for label in full if label in FEATURE_SPEC.held_out_pairs)


def test_the_size_view_labels_every_eval_object_with_its_size_word(world):
    scenes = [json.loads(line) for line in (world / WORLD_FILES["scenes_eval"]).read_text().splitlines()]
    index = load_pad_index(world / WORLD_FILES["pad_eval_size_words"])
    for scene in scenes:
        assert [r.label for r in index[scene["id"]].regions] == [o["size"] for o in scene["objects"]]


def test_the_relation_view_labels_the_object_its_first_caption_places(world):
    references = json.loads((world / WORLD_FILES["caption_references"]).read_text())
    scenes = {json.loads(line)["id"]: json.loads(line)
              for line in (world / WORLD_FILES["scenes_eval"]).read_text().splitlines()}
    index = load_pad_index(world / WORLD_FILES["pad_eval_relation_words"])
    words = {"above": "above", "below": "below", "left": "to the left of", "right": "to the right of"}
    for image_id, captions in references.items():
        (region,) = index[image_id].regions
        x, y, w, h = region.bbox
        (obj,) = [o for o in scenes[image_id]["objects"] if o["bbox_xyxy"] == [x, y, x + w, y + h]]
        # "a small red circle above a ...": the labelled object is the caption's first noun phrase
        phrase = f"a {obj['size']} {obj['colour']} {obj['shape']}"
        assert captions[0].startswith(f"{phrase} {words[region.label]} a ")


def test_binding_questions_are_trained_and_asked_per_category(world):
    answers = read_jsonl(world / WORLD_FILES["vqa_answers"])
    categories = {a["category"] for a in answers}
    assert {"bind_colour", "bind_shape"} & categories
    instruct = json.loads((world / WORLD_FILES["instruct"]).read_text())
    turns = [t["value"] for r in instruct if r["id"].endswith("-vqa") for t in r["conversations"]]
    assert any(t.startswith("What colour is the object ") for t in turns)


def test_the_featured_spec_round_trips_and_writes_identical_files(world, tmp_path):
    assert spec_from_json(spec_to_json(FEATURE_SPEC)) == FEATURE_SPEC
    make_world(tmp_path / "again", FEATURE_SPEC)
    for name in ("pad/train.jsonl", "pad/eval_relation_words.jsonl", "eval/vqa_questions.jsonl",
                 "instruct.json"):
        assert (tmp_path / "again" / name).read_bytes() == (world / name).read_bytes(), name


@pytest.mark.parametrize("pairs, message", [(("red blob",), "held_out_pairs"),
                                            (("red circle", "red circle"), "held_out_pairs")])
def test_bad_held_out_pairs_are_refused_naming_the_property(pairs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        make_world(tmp_path, WorldSpec(n_train=1, n_eval=1, held_out_pairs=pairs))


def test_a_layout_grid_centres_each_object_in_its_own_cell():
    from patch_align.world.generator import render_world_image
    from patch_align.world.scene import SceneSpec

    spec = WorldSpec(seed=1, scene=SceneSpec(min_size=96, max_size=128, objects_min=1, objects_max=3,
                                             layout_grid=3))
    for index in range(6):
        item = render_world_image(spec, "train", index)
        cells = []
        for obj in item.scene.objects:
            cx, cy = obj.left + obj.side / 2, obj.top + obj.side / 2
            col, row = int(cx * 3 // item.scene.width), int(cy * 3 // item.scene.height)
            cells.append((row, col))
            # centred in the cell unless the image edge pushed it inside
            expected = ((col + 0.5) * item.scene.width / 3, (row + 0.5) * item.scene.height / 3)
            pushed = obj.left == 0 or obj.top == 0 or obj.left + obj.side == item.scene.width \
                or obj.top + obj.side == item.scene.height
            assert pushed or (abs(cx - expected[0]) <= 1 and abs(cy - expected[1]) <= 1)
        assert len(set(cells)) == len(cells)


@pytest.mark.parametrize("grid", [1, -2])
def test_a_bad_layout_grid_is_refused(grid, tmp_path):
    from patch_align.world.scene import SceneSpec

    with pytest.raises(ValueError, match="layout_grid"):
        make_world(tmp_path, WorldSpec(n_train=1, n_eval=1, scene=SceneSpec(layout_grid=grid)))
    with pytest.raises(ValueError, match="layout_grid"):
        make_world(tmp_path, WorldSpec(n_train=1, n_eval=1, scene=SceneSpec(layout_grid=2, objects_max=5)))


# ---------------------------------------------------------------- grid-snapped REC training answers


def _rec_answers(world: Path) -> list[str]:
    records = json.loads((world / WORLD_FILES["instruct"]).read_text())
    return [turn["value"] for r in records if r["id"].endswith("-rec")
            for turn in r["conversations"] if turn["from"] == "gpt"]


def test_a_rec_answer_grid_snaps_every_training_answer_to_the_grid_lines(tmp_path):
    make_world(tmp_path / "g6", WorldSpec(n_train=12, n_eval=3, rec_answer_grid=6))
    answers = _rec_answers(tmp_path / "g6")
    lines = {f"{k / 6:.2f}" for k in range(7)}  # 0.00, 0.17, 0.33, 0.50, 0.67, 0.83, 1.00
    values = [v.strip() for a in answers for v in a.strip("[]").split(",")]
    assert answers and set(values) <= lines


def test_the_rec_answer_grid_changes_only_the_training_answers_not_the_scored_truth(tmp_path):
    make_world(tmp_path / "exact", WorldSpec(n_train=12, n_eval=3))
    make_world(tmp_path / "g6", WorldSpec(n_train=12, n_eval=3, rec_answer_grid=6))
    assert _rec_answers(tmp_path / "exact") != _rec_answers(tmp_path / "g6")
    for name in ("rec_questions", "vqa_questions", "pad_train", "pretrain"):
        assert (tmp_path / "exact" / WORLD_FILES[name]).read_bytes() == \
               (tmp_path / "g6" / WORLD_FILES[name]).read_bytes()
    # an exact answer snaps to the same grid box the oracle gives for that object
    scenes = read_jsonl(tmp_path / "exact" / "scenes" / "train.jsonl")
    obj, scene = scenes[0]["objects"][0], scenes[0]
    snapped, _ = grid_snapped_box(obj["bbox_xyxy"], scene["width"], scene["height"], 6)
    assert f"[{', '.join(f'{v:.2f}' for v in snapped)}]" in _rec_answers(tmp_path / "g6")


def test_a_negative_rec_answer_grid_is_refused(tmp_path):
    with pytest.raises(ValueError, match="rec_answer_grid"):
        make_world(tmp_path, WorldSpec(n_train=1, n_eval=1, rec_answer_grid=-1))


def _question_answer_pairs(record: dict) -> list[tuple[str, str]]:
    turns = record["conversations"]
    return [(q["value"].replace("<image>", "").strip(), a["value"])
            for q, a in zip(turns[::2], turns[1::2], strict=True)]


def test_more_rec_records_per_image_add_reordered_rec_conversations_and_change_nothing_else(tmp_path):
    make_world(tmp_path / "one", WorldSpec(n_train=6, n_eval=2))
    make_world(tmp_path / "three", WorldSpec(n_train=6, n_eval=2, rec_records_per_image=3))
    one = json.loads((tmp_path / "one" / WORLD_FILES["instruct"]).read_text())
    three = json.loads((tmp_path / "three" / WORLD_FILES["instruct"]).read_text())
    extra = [r for r in three if r["id"].endswith(("-rec2", "-rec3"))]
    assert [r for r in three if r not in extra] == one  # the first REC record and all else unchanged
    assert len(extra) == 2 * 6
    by_id = {r["id"]: r for r in three}
    for record in extra:
        first = by_id[record["id"].rsplit("-", 1)[0] + "-rec"]
        # the same objects and boxes (the image tag is on whichever turn comes first)
        assert sorted(_question_answer_pairs(record)) == sorted(_question_answer_pairs(first))
    for name in ("instruct_eval", "rec_questions", "vqa_questions", "pad_train"):
        assert (tmp_path / "one" / WORLD_FILES[name]).read_bytes() == \
               (tmp_path / "three" / WORLD_FILES[name]).read_bytes()
    with pytest.raises(ValueError, match="rec_records_per_image"):
        make_world(tmp_path / "zero", WorldSpec(n_train=1, n_eval=1, rec_records_per_image=0))
