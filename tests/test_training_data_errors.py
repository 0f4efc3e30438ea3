"""Specification of the one LLaVA JSON reader (`llava.train.llava_json`) and of the training data's checks.

Every bad file or record is an error naming the file and the record (position and id), raised
when the file is read, before any model loads; the training dataset, PAD generation and SEA
labelling read a file by the same rules.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from llava.conversation import conv_templates
from llava.train.data import LazySupervisedDataset, conversation_template
from llava.train.llava_json import LlavaDataError, image_samples, load_llava_json
from patch_align.pad.generate.items import load_image_items
from patch_align.sea.labeling import image_records


def image_record(record_id: object = "a", image: object = "a.png", question: str = "<image>\nIs it?") -> dict:
    return {"id": record_id, "image": image, "conversations": [
        {"from": "human", "value": question}, {"from": "gpt", "value": "a box"}]}


def text_record(record_id: str = "t", question: str = "What colour is the sky?") -> dict:
    return {"id": record_id, "conversations": [
        {"from": "human", "value": question}, {"from": "gpt", "value": "blue"}]}


def write(tmp_path: Path, records: object) -> Path:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path


def data_args(is_multimodal: bool = True) -> SimpleNamespace:
    return SimpleNamespace(is_multimodal=is_multimodal, version="v1", label_mismatch="error")


def test_a_good_file_reads_in_order_with_integer_ids_as_strings_and_repeated_ids_allowed(tmp_path):
    records = [image_record("a"), text_record("t"), image_record("a", "b.png"), {**text_record(), "id": 7}]
    path = write(tmp_path, records)
    assert load_llava_json(path) == records
    dataset = LazySupervisedDataset(str(path), tokenizer=None, data_args=data_args())
    assert [dataset.sample_id(i) for i in range(4)] == ["a", "t", "a", "7"]


def test_malformed_json_is_an_error_naming_the_file_line_and_column(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"id": "a",\n   "conversations": [}\n]')
    with pytest.raises(LlavaDataError, match=rf"^{path}: not valid JSON: .* at line 3, column 22$"):
        load_llava_json(path)


def test_a_missing_file_is_a_file_not_found_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"LLaVA data file {tmp_path / 'none.json'} does not exist"):
        load_llava_json(tmp_path / "none.json")


def test_a_top_level_object_is_an_error(tmp_path):
    message = r"data.json: a LLaVA data file is a JSON list of records, got a JSON dict"
    with pytest.raises(LlavaDataError, match=message):
        load_llava_json(write(tmp_path, {"id": "a"}))


TURNS = text_record()["conversations"]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ("not an object", r"record 1 is a JSON str, not an object"),
        ({"conversations": TURNS}, r"record 1 has no 'id' \(a non-empty string or an integer\), got None"),
        ({"id": True, "conversations": TURNS}, r"record 1 has no 'id' .*, got True"),
        ({"id": "b", "conversations": []},
         r"record 1 \(id 'b'\): needs a non-empty 'conversations' list, got \[\]"),
        ({"id": "b", "conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]},
         r"record 1 \(id 'b'\): turn 0 has no string 'value', got None"),
        ({"id": "b", "conversations": [{"from": "human", "value": 3}]},
         r"record 1 \(id 'b'\): turn 0 has no string 'value', got 3"),
        ({"id": "b", "conversations": [{"value": "hi"}]},
         r"record 1 \(id 'b'\): turn 0 has no string 'from'"),
        ({"id": "b", "conversations": ["hi"]}, r"record 1 \(id 'b'\): turn 0 is a JSON str, not an object"),
    ],
)
def test_a_bad_record_is_an_error_naming_the_file_its_position_and_id(tmp_path, record, message):
    path = write(tmp_path, [text_record("first"), record])
    with pytest.raises(LlavaDataError, match=rf"^{path}: {message}"):
        load_llava_json(path)


def test_a_list_of_images_is_a_clear_error_not_a_type_error(tmp_path):
    path = write(tmp_path, [image_record("pair", ["a.png", "b.png"])])
    with pytest.raises(LlavaDataError, match=r"record 0 \(id 'pair'\): 'image' is a list of 2 images; "
                                             r"LLaVA-1.5 trains one image per sample"):
        LazySupervisedDataset(str(path), tokenizer=None, data_args=data_args())


@pytest.mark.parametrize("image", [None, 5, ""])
def test_an_image_that_is_not_a_path_string_is_an_error(tmp_path, image):
    path = write(tmp_path, [image_record("a", image)])
    message = rf"record 0 \(id 'a'\): 'image' must be a non-empty path string, got {image!r}"
    with pytest.raises(LlavaDataError, match=message):
        load_llava_json(path)


def test_an_image_record_without_image_token_is_an_error_not_a_text_only_sample(tmp_path):
    path = write(tmp_path, [text_record(), image_record("cat-1", question="What is it?")])
    message = r"record 1 \(id 'cat-1'\): has an 'image' but 0 <image> in its turns"
    with pytest.raises(LlavaDataError, match=message):
        LazySupervisedDataset(str(path), tokenizer=None, data_args=data_args())


def test_an_image_record_with_image_tokens_in_two_turns_is_an_error(tmp_path):
    record = image_record("two")
    record["conversations"] += [{"from": "human", "value": "<image>\nAnd?"}, {"from": "gpt", "value": "b"}]
    message = r"record 0 \(id 'two'\): has an 'image' but 2 <image> in its turns"
    with pytest.raises(LlavaDataError, match=message):
        load_llava_json(write(tmp_path, [record]))


def test_a_text_only_record_with_an_image_token_is_an_error(tmp_path):
    path = write(tmp_path, [text_record("lost", question="<image>\nWhat is it?")])
    message = r"record 0 \(id 'lost'\): has no 'image' but 1 <image> in its turns"
    with pytest.raises(LlavaDataError, match=message):
        load_llava_json(path)


@pytest.mark.parametrize(
    "read",
    [
        lambda path: LazySupervisedDataset(str(path), tokenizer=None, data_args=data_args()),
        load_image_items,
        image_records,
    ],
    ids=["training", "pad-generation", "sea-labels"],
)
def test_the_three_readers_refuse_a_non_string_image_with_the_same_message(tmp_path, read):
    path = write(tmp_path, [image_record("a"), image_record("b", {"path": "b.png"})])
    with pytest.raises(LlavaDataError) as raised:
        read(path)
    assert str(raised.value) == f"{path}: record 1 (id 'b'): 'image' must be a non-empty path string, " \
        "got {'path': 'b.png'}"


def test_pad_and_sea_readers_return_the_same_image_samples_and_text_only_count(tmp_path):
    path = write(tmp_path, [image_record("a"), text_record("t"), image_record(7, "b.png")])
    items, items_text_only = load_image_items(path)
    records, records_text_only = image_records(path)
    assert [(i.index, i.id, i.image, i.caption) for i in items] == [(0, "a", "a.png", "a box"),
                                                                   (2, "7", "b.png", "a box")]
    assert [(r.sample_id, r.image) for r in records] == [("a", "a.png"), ("7", "b.png")]
    assert items_text_only == records_text_only == 1


def test_tools_keyed_by_id_refuse_two_image_records_with_one_id(tmp_path):
    path = write(tmp_path, [image_record("a"), text_record("a"), image_record("a", "b.png")])
    with pytest.raises(LlavaDataError, match=r"record 2 repeats the id 'a' of record 0"):
        image_samples(path)


def test_image_records_in_a_run_without_a_vision_tower_are_an_error(tmp_path):
    path = write(tmp_path, [text_record(), image_record("cat-1")])
    message = r"1 record\(s\) have an 'image' \(ids \['cat-1'\]\) but the run has no vision tower"
    with pytest.raises(ValueError, match=message):
        LazySupervisedDataset(str(path), tokenizer=None, data_args=data_args(is_multimodal=False))


def test_a_text_only_file_builds_a_dataset_without_a_vision_tower(tmp_path):
    dataset = LazySupervisedDataset(str(write(tmp_path, [text_record()])), tokenizer=None,
                                    data_args=data_args(is_multimodal=False))
    assert dataset.modality_lengths == [-6]


def test_a_version_with_a_typo_is_an_error_listing_the_known_templates():
    with pytest.raises(ValueError, match=r"--version 'plian' is not a known conversation template; known: "
                                         r"default, v0, v1, vicuna_v1, .*plain"):
        conversation_template("plian")
    assert conversation_template("plain") is conv_templates["plain"]
