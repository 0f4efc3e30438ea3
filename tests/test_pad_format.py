"""Specification of the PAD format: schema, streaming reader (JSON / JSONL), index, mask decoding."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from patch_align.pad import reader
from patch_align.pad.masks import MaskDecodeError, MaskSizeError, compressed_rle_counts, decode_region_mask
from patch_align.pad.reader import (
    MALFORMED_JSON,
    MALFORMED_RECORD,
    find_pad_record,
    iter_pad_entries,
    iter_pad_records,
    load_pad_index,
)
from patch_align.pad.schema import PadFormatError, PadRegion, parse_pad_record

FIXTURES = Path(__file__).parent / "data" / "upstream_golden" / "fixtures-437"


@pytest.fixture(scope="module")
def pad_json() -> list[dict]:
    return json.loads((FIXTURES / "pad.json").read_text())


def write_jsonl(path: Path, values: list) -> Path:
    path.write_text("".join(json.dumps(v) + "\n" for v in values))
    return path


def region(label="red box", bbox=(0, 0, 2, 2), segmentation=None) -> dict:
    seg = segmentation if segmentation is not None else {"size": [4, 5], "counts": [0, 2, 2, 2, 14]}
    return {"label": label, "bbox": list(bbox), "segmentation": seg}


# ---- reading -------------------------------------------------------------------------------------

def test_json_array_and_jsonl_read_the_same_records(tmp_path, pad_json):
    from_json = list(iter_pad_records(FIXTURES / "pad.json"))
    from_jsonl = list(iter_pad_records(write_jsonl(tmp_path / "pad.jsonl", pad_json)))
    assert from_json == from_jsonl
    assert [r.id for r in from_json] == [f"s{i:03d}" for i in range(24)]
    first = from_json[0]
    assert (first.image, first.width, first.height, len(first.regions)) == ("img000.png", 80, 60, 2)
    assert first.regions[0] == PadRegion(label="yellow box", bbox=(58, 37, 20, 17),
                                         segmentation=pad_json[0]["regions"][0]["segmentation"], score=1.0)


def test_array_split_across_many_chunks_reads_every_record_and_line(tmp_path, monkeypatch, pad_json):
    path = tmp_path / "pad.json"
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in pad_json) + "\n]\n")
    monkeypatch.setattr(reader, "_CHUNK_BYTES", 7)
    entries = list(iter_pad_entries(path))
    assert [e.record.id for e in entries] == [r["id"] for r in pad_json]
    assert [e.line for e in entries] == list(range(2, 26))


def test_records_before_a_syntax_error_stream_out_before_the_error(tmp_path, pad_json):
    path = tmp_path / "cut.json"
    path.write_text("[" + json.dumps(pad_json[0]) + ",\n" + json.dumps(pad_json[1])[:50])
    records = iter_pad_records(path)
    assert next(records).id == "s000"
    with pytest.raises(PadFormatError, match=r"cut.json: record 1 \(line 2\): malformed_json"):
        next(records)


def test_optional_version_header_is_not_a_record(tmp_path, pad_json):
    path = write_jsonl(tmp_path / "pad.jsonl", [{"pad_version": 1}, pad_json[0]])
    assert [r.id for r in iter_pad_records(path)] == ["s000"]


def test_unsupported_version_is_rejected_naming_file_and_version(tmp_path, pad_json):
    path = write_jsonl(tmp_path / "v2.jsonl", [{"pad_version": 2}, pad_json[0]])
    with pytest.raises(PadFormatError, match=r"v2.jsonl: pad_version 2 is not supported"):
        list(iter_pad_records(path))


def test_layout_is_detected_from_content_not_name(tmp_path, pad_json):
    path = write_jsonl(tmp_path / "records.json", pad_json[:2])  # JSON Lines despite the suffix
    assert [r.id for r in iter_pad_records(path)] == ["s000", "s001"]


@pytest.mark.parametrize("content,message", [("", "file is empty"), ("hello", "not a PAD file")])
def test_non_pad_file_is_rejected_by_name(tmp_path, content, message):
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(PadFormatError, match=message):
        list(iter_pad_records(path))


def test_bad_jsonl_lines_are_yielded_with_their_line_and_reading_goes_on(tmp_path, pad_json):
    path = tmp_path / "mixed.jsonl"
    bad_schema = {**pad_json[1], "width": -3}
    path.write_text(json.dumps(pad_json[0]) + "\n{not json\n\n" + json.dumps(bad_schema) + "\n"
                    + json.dumps(pad_json[2]) + "\n")
    entries = list(iter_pad_entries(path))
    assert [(e.number, e.line, e.problem, e.raw_id) for e in entries] == [
        (0, 1, None, "s000"), (1, 2, MALFORMED_JSON, None), (2, 4, MALFORMED_RECORD, "s001"),
        (3, 5, None, "s002")]
    assert entries[2].detail == "'width' must be a positive integer, got -3"


def test_truncated_array_is_one_malformed_entry(tmp_path, pad_json):
    path = tmp_path / "cut.json"
    path.write_text("[" + json.dumps(pad_json[0]) + ",")
    entries = list(iter_pad_entries(path))
    assert [e.problem for e in entries] == [None, MALFORMED_JSON]


def test_index_is_keyed_by_id(pad_json):
    index = load_pad_index(FIXTURES / "pad.json")
    assert len(index) == 24 and index["s005"].image == "img005.png"


def test_index_rejects_duplicate_ids_naming_both_records():
    with pytest.raises(PadFormatError, match=r"duplicate id s000 \(records 0 and 6\)"):
        load_pad_index(FIXTURES / "pad_bad.json")


def test_join_to_a_llava_sample_checks_the_image(pad_json):
    index = load_pad_index(FIXTURES / "pad.json")
    assert find_pad_record(index, "s003", "./img003.png").id == "s003"
    assert find_pad_record(index, "not-in-pad", "img003.png") is None
    with pytest.raises(PadFormatError, match="s003 is for image 'img003.png'.*'img004.png'"):
        find_pad_record(index, "s003", "img004.png")


# ---- schema --------------------------------------------------------------------------------------

@pytest.mark.parametrize("change,message", [
    ({"id": ""}, "'id' must be a non-empty string"),
    ({"height": 2.5}, "'height' must be a positive integer"),
    ({"regions": {}}, "'regions' must be a list"),
    ({"regions": [region(bbox=(0, 0, 1))]}, r"region 0: 'bbox' must be \[x, y, w, h\]"),
    ({"regions": [region(label=None)]}, "region 0: 'label' must be a string"),
    ({"regions": [region(segmentation={"size": [4], "counts": []})]}, "segmentation 'size'"),
    ({"regions": [region(segmentation=[[1, 2, "x"]])]}, "list of polygons"),
])
def test_schema_errors_name_the_field(change, message):
    record = {"id": "a", "image": "a.png", "width": 5, "height": 4, "regions": [region()], **change}
    with pytest.raises(PadFormatError, match=message):
        parse_pad_record(record)


def test_unknown_keys_are_ignored_for_forward_compatibility():
    record = parse_pad_record({"id": "a", "image": "a.png", "width": 5, "height": 4,
                               "regions": [{**region(), "source": "sam", "extra": 1}], "note": "x"})
    assert record.regions[0].source == "sam"


# ---- masks ---------------------------------------------------------------------------------------

def test_uncompressed_rle_decodes_to_the_drawn_box(pad_json):
    record = parse_pad_record(pad_json[0])
    pixels = np.asarray(Image.open(FIXTURES / "images" / record.image))
    yellow = (pixels == (230, 220, 30)).all(axis=-1)
    np.testing.assert_array_equal(decode_region_mask(record.regions[0], 60, 80), yellow)


def test_compressed_rle_string_decodes_like_its_uncompressed_form():
    rng = np.random.default_rng(0)
    mask = rng.random((9, 13)) < 0.4
    compressed = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    seg = {"size": [9, 13], "counts": compressed["counts"].decode("ascii")}
    np.testing.assert_array_equal(decode_region_mask(PadRegion("x", (0, 0, 1, 1), seg), 9, 13), mask)


@pytest.mark.parametrize("runs", [[3, 4, 13], [0, 20], [1000, 5, 2000, 7, 30000, 1]])
def test_compressed_rle_counts_recover_the_run_lengths(runs):
    height = 1
    compressed = coco_mask.frPyObjects({"size": [height, sum(runs)], "counts": runs}, height, sum(runs))
    assert compressed_rle_counts(compressed["counts"].decode("ascii")) == runs


def test_polygon_decodes_with_pycocotools_pixel_rule():
    seg = [[0, 0, 4, 0, 4, 3, 0, 3]]
    mask = decode_region_mask(PadRegion("x", (0, 0, 4, 3), seg), 4, 5)
    expected = np.zeros((4, 5), bool)
    expected[0:3, 0:4] = True
    np.testing.assert_array_equal(mask, expected)


def test_rle_of_another_size_raises_mask_size_error():
    seg = {"size": [5, 5], "counts": [25]}
    with pytest.raises(MaskSizeError, match=r"RLE size \[5, 5\] differs .* \[4, 5\]"):
        decode_region_mask(PadRegion("x", (0, 0, 1, 1), seg), 4, 5)


@pytest.mark.parametrize("seg,message", [
    ({"size": [4, 5], "counts": [3, 4]}, "add up to 7 pixels, not height\\*width = 20"),
    ({"size": [4, 5], "counts": "3"}, "add up to 3 pixels"),
    ({"size": [4, 5], "counts": "0~"}, "invalid character"),
    ([[0, 0, 4, 4]], "at least 3"),
])
def test_invalid_segmentations_raise_instead_of_decoding_garbage(seg, message):
    with pytest.raises(MaskDecodeError, match=message):
        decode_region_mask(PadRegion("x", (0, 0, 1, 1), seg), 4, 5)
