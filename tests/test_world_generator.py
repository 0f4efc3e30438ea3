"""The miniature world generator: determinism, exact masks, valid files, REC boxes in LLaVA's convention."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llava.eval.eval_vqa import read_jsonl
from llava.eval.rec import padded_normalized_to_pixels, parse_box
from llava.train.data import load_llava_json
from patch_align.cli import main as cli_main
from patch_align.pad import decode_region_mask, load_pad_index
from patch_align.pad.validate import validate_pad
from patch_align.world.generator import WORLD_FILES, WorldSpec, make_world, render_world_image
from patch_align.world.scene import PALETTE, SceneSpec

TINY_SPEC = WorldSpec(seed=3, n_train=12, n_eval=5)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    make_world(out, TINY_SPEC)
    return out


def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_writes_byte_identical_files(world, tmp_path):
    make_world(tmp_path / "again", TINY_SPEC)
    assert _file_bytes(tmp_path / "again") == _file_bytes(world)


def test_another_seed_writes_other_images(world, tmp_path):
    make_world(tmp_path / "other", WorldSpec(seed=4, n_train=12, n_eval=5))
    first = world / "images" / "train" / "train-000000.png"
    assert first.read_bytes() != (tmp_path / "other" / "images" / "train" / "train-000000.png").read_bytes()


def test_eval_images_do_not_depend_on_the_number_of_training_images(world, tmp_path):
    make_world(tmp_path / "bigger", WorldSpec(seed=3, n_train=13, n_eval=5))
    for index in range(5):
        name = f"images/eval/eval-{index:06d}.png"
        assert (tmp_path / "bigger" / name).read_bytes() == (world / name).read_bytes()


def test_images_are_non_square_and_within_the_size_range(world):
    sizes = [Image.open(p).size for p in sorted((world / "images").rglob("*.png"))]
    assert len(sizes) == 17
    assert all(w != h and 64 <= w <= 160 and 64 <= h <= 160 for w, h in sizes)
    assert len(set(sizes)) > 5


def test_every_pad_mask_is_exactly_its_objects_pixels(world):
    for split, count in (("train", 12), ("eval", 5)):
        index = load_pad_index(world / WORLD_FILES[f"pad_{split}"])
        for number in range(count):
            item = render_world_image(TINY_SPEC, split, number)
            record = index[item.image_id]
            assert len(record.regions) == len(item.scene.objects) >= 2
            pixels = np.asarray(Image.open(world / "images" / record.image))
            assert np.array_equal(pixels, item.pixels)
            for k, region in enumerate(record.regions):
                mask = decode_region_mask(region, record.height, record.width)
                assert np.array_equal(mask, item.id_map == k + 1)
                obj = item.scene.objects[k]
                assert region.label == f"{obj.colour} {obj.shape}"
                # the object's pixels carry its colour (shade ±15, noise std 6); the background is grey
                colour_distance = np.abs(pixels.astype(int) - PALETTE[obj.colour]).max(axis=-1)
                assert np.median(colour_distance[mask]) <= 35
                ys, xs = np.nonzero(mask)
                assert region.bbox == (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min())


def test_occluded_objects_keep_at_least_min_visible_of_their_area(world):
    for line in (world / WORLD_FILES["scenes_train"]).read_text().splitlines():
        for obj in json.loads(line)["objects"]:
            assert obj["area"] >= 0.6 * obj["full_area"]


def test_pad_files_pass_the_project_validator(world):
    for split in ("train", "eval"):
        report = validate_pad(world / WORLD_FILES[f"pad_{split}"], world / "images")
        assert report.ok, report.problems[:3]
        assert report.records == (12 if split == "train" else 5)


def test_llava_files_load_and_hold_images_that_exist(world):
    pretrain = load_llava_json(world / WORLD_FILES["pretrain"])
    instruct = load_llava_json(world / WORLD_FILES["instruct"])
    assert len(pretrain) == 12 and len(instruct) == 36
    assert {r["id"].rsplit("-", 1)[1] for r in instruct} == {"caption", "rec", "vqa"}
    for record in pretrain + instruct + load_llava_json(world / WORLD_FILES["instruct_eval"]):
        assert (world / "images" / record["image"]).is_file()
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert sum(t["value"].count("<image>") for t in turns) == 1
        assert "<image>" in turns[0]["value"]


def test_pretraining_ids_join_the_pad_records(world):
    index = load_pad_index(world / WORLD_FILES["pad_train"])
    pretrain = load_llava_json(world / WORLD_FILES["pretrain"])
    assert [r["id"] for r in pretrain] == list(index)
    assert all(index[r["id"]].image == r["image"] for r in pretrain)


def test_training_rec_answers_map_back_to_the_object_boxes(world):
    index = load_pad_index(world / WORLD_FILES["pad_train"])
    for record in load_llava_json(world / WORLD_FILES["instruct"]):
        if not record["id"].endswith("-rec"):
            continue
        pad = index[record["id"].removesuffix("-rec")]
        boxes = {f"the {r.label}": r.bbox for r in pad.regions}
        turns = record["conversations"]
        side = max(pad.width, pad.height)
        for human, gpt in zip(turns[::2], turns[1::2], strict=True):
            expression = human["value"].replace("<image>", "").strip().rsplit(": ", 1)[1]
            x, y, w, h = boxes[expression]
            back = padded_normalized_to_pixels(parse_box(gpt["value"]), pad.width, pad.height)
            # two-decimal rounding of a fraction of the padded side: at most side/200 px per coordinate
            assert np.allclose(back, [x, y, x + w, y + h], atol=side / 200 + 1e-9)


def test_eval_rec_questions_carry_pixel_ground_truth_of_visible_objects(world):
    questions = read_jsonl(world / WORLD_FILES["rec_questions"])
    pad = load_pad_index(world / WORLD_FILES["pad_eval"])
    assert len(questions) == sum(len(r.regions) for r in pad.values())
    assert [q["question_id"] for q in questions] == list(range(len(questions)))
    for q in questions:
        record = pad[Path(q["image"]).stem]
        label = q["text"].rsplit("describes: the ", 1)[1]
        region = next(r for r in record.regions if r.label == label)
        x, y, w, h = region.bbox
        assert q["bbox"] == [x, y, x + w, y + h]
        assert (q["width"], q["height"]) == (record.width, record.height)


def test_vqa_answers_are_true_of_the_scene(world):
    scenes = {json.loads(line)["image"]: json.loads(line) for line in
              (world / WORLD_FILES["scenes_eval"]).read_text().splitlines()}
    questions = read_jsonl(world / WORLD_FILES["vqa_questions"])
    answers = {a["question_id"]: a for a in read_jsonl(world / WORLD_FILES["vqa_answers"])}
    assert len(questions) == len(answers) == 15  # 3 per image
    for q in questions:
        objects = scenes[q["image"]]["objects"]
        answer = answers[q["question_id"]]["answer"]
        text = q["text"].split("\n")[0]
        if q["category"] == "count":
            assert answer == str(len(objects))
        elif q["category"] == "colour":
            shape = text.removeprefix("What colour is the ").removesuffix("?")
            assert [o["colour"] for o in objects if o["shape"] == shape] == [answer]
        elif q["category"] == "shape":
            colour = text.removeprefix("What shape is the ").removesuffix(" object?")
            assert [o["shape"] for o in objects if o["colour"] == colour] == [answer]
        elif q["category"] == "size":
            colour, shape = text.removeprefix("What size is the ").removesuffix("?").split()
            assert [o["size"] for o in objects if (o["colour"], o["shape"]) == (colour, shape)] == [answer]
        else:
            colour, shape = text.removeprefix("Is there a ").removesuffix("?").split()
            present = any((o["colour"], o["shape"]) == (colour, shape) for o in objects)
            assert answer == ("yes" if present else "no")


def test_caption_references_are_distinct_and_name_every_object(world):
    references = json.loads((world / WORLD_FILES["caption_references"]).read_text())
    questions = read_jsonl(world / WORLD_FILES["caption_questions"])
    assert [q["question_id"] for q in questions] == sorted(references) == [f"eval-{i:06d}" for i in range(5)]
    scenes = [json.loads(line) for line in (world / WORLD_FILES["scenes_eval"]).read_text().splitlines()]
    for scene in scenes:
        captions = references[scene["id"]]
        assert len(set(captions)) == len(captions) >= 1
        for caption in captions:
            for obj in scene["objects"]:
                assert f"a {obj['size']} {obj['colour']} {obj['shape']}" in caption


def test_manifest_records_the_spec_and_counts(world):
    manifest = json.loads((world / "world.json").read_text())
    assert manifest["spec"]["seed"] == 3 and manifest["spec"]["scene"]["shapes"] == list(SceneSpec().shapes)
    train = manifest["counts"]["train"]
    assert train["images"] == 12 and train["pretrain_samples"] == 12 and train["instruct_samples"] == 36
    assert train["pad_regions"] == train["objects"] == train["rec_questions"]
    assert sum(train[f"shape_{s}"] for s in SceneSpec().shapes) == train["objects"]
    assert manifest["conventions"]["vqa_metric"].startswith("exact")


def test_a_caption_describes_the_relation_of_its_first_two_objects():
    from patch_align.world.scene import VisibleObject
    from patch_align.world.text import caption

    def at(x, y, colour, shape, size="small"):
        return VisibleObject(0, shape, colour, size, (0, 0, 1, 1), (x, y), 1, 1)

    objects = [at(10, 5, "red", "circle"), at(12, 40, "blue", "square", "large"),
               at(60, 20, "green", "triangle")]
    assert caption(objects, [0, 1, 2]) == ("a small red circle above a large blue square "
                                           "and a small green triangle")
    assert caption(objects, [1, 2]) == "a large blue square to the left of a small green triangle"
    assert caption(objects, [2]) == "a small green triangle"


@pytest.mark.parametrize("bad, message", [
    (SceneSpec(shapes=("circle", "blob")), "shapes must be distinct names"),
    (SceneSpec(min_size=80, max_size=80), "min_size < max_size"),
    (SceneSpec(objects_min=3, objects_max=2), "objects_min <= objects_max"),
    (SceneSpec(shapes=("circle",), colours=("red",), objects_min=1, objects_max=2), "distinct colour-shape"),
])
def test_bad_specs_are_refused_naming_the_property(bad, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        make_world(tmp_path, WorldSpec(n_train=1, n_eval=1, scene=bad))


def test_cli_make_writes_a_world_with_the_flags(tmp_path, capsys):
    out = tmp_path / "w"
    code = cli_main(["world", "make", "--out", str(out), "--seed", "5", "--n-train", "3", "--n-eval", "2",
                     "--min-size", "70", "--max-size", "90", "--objects-min", "1", "--objects-max", "2",
                     "--shapes", "circle", "cross", "--colours", "red", "cyan", "--sizes", "medium",
                     "--layout-grid", "2"])
    assert code == 0 and "3 train / 2 eval images" in capsys.readouterr().out
    spec = json.loads((out / "world.json").read_text())["spec"]
    assert spec["scene"] | {"min_visible": None} == {
        "min_size": 70, "max_size": 90, "objects_min": 1, "objects_max": 2, "shapes": ["circle", "cross"],
        "colours": ["red", "cyan"], "sizes": ["medium"], "min_visible": None, "layout_grid": 2}
    labels = {r.label for rec in load_pad_index(out / WORLD_FILES["pad_train"]).values() for r in rec.regions}
    assert labels <= {"red circle", "red cross", "cyan circle", "cyan cross"}


@pytest.mark.parametrize("damage", ["delete a file", "tear the manifest"])
def test_a_damaged_world_is_made_again_not_reused(tmp_path, damage):
    out = tmp_path / "w"
    make_world(out, TINY_SPEC)
    if damage == "delete a file":
        (out / WORLD_FILES["vqa_answers"]).unlink()
    else:
        (out / "world.json").write_text('{"spec": ')
    make_world(out, TINY_SPEC)
    assert (out / WORLD_FILES["vqa_answers"]).is_file()
    assert json.loads((out / "world.json").read_text())["spec"]["seed"] == TINY_SPEC.seed


def test_an_unchanged_world_is_reused_and_a_changed_one_rewritten(world, tmp_path):
    out = tmp_path / "w"
    make_world(out, TINY_SPEC)
    stamp = (out / "world.json").stat().st_mtime_ns
    make_world(out, TINY_SPEC)
    assert (out / "world.json").stat().st_mtime_ns == stamp
    manifest = make_world(out, WorldSpec(seed=3, n_train=2, n_eval=5))
    assert manifest["counts"]["train"]["images"] == 2
    assert len(list((out / "images" / "train").iterdir())) == 2
