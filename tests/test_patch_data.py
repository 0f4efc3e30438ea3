"""Specification of the PAD-aware dataset and ragged collator (fixtures-437: 56-px CLIP, 14-px patches)."""

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from llava.train.data import DataCollatorForSupervisedDataset
from patch_align.data import (
    PadAlignedCollator,
    PadAlignedDataset,
    PadCoverage,
    PadCoverageError,
    PadRecordError,
    PatchGrid,
)
from patch_align.objectives.label_embedding import tokenize_label
from patch_align.pad import load_pad_index

FIXTURES = Path(__file__).parent / "data" / "upstream_golden" / "fixtures-437"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(FIXTURES / "llm"))
    tok.pad_token = tok.unk_token
    return tok


@pytest.fixture(scope="module")
def processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor.from_pretrained(str(FIXTURES / "clip"))


def make_dataset(
    tokenizer,
    processor,
    *,
    mode="pad",
    data_path=FIXTURES / "pretrain.json",
    pad_path=FIXTURES / "pad.json",
    select_feature="patch",
    on_error="error",
    min_pad_coverage=0.0,
):
    data_args = SimpleNamespace(
        image_folder=str(FIXTURES / "images"),
        image_processor=processor,
        is_multimodal=True,
        mm_use_im_start_end=False,
        image_aspect_ratio=mode,
        label_mismatch="error",
        version="plain",
    )
    grid = PatchGrid(mode, processor, patch_size=14, select_feature=select_feature)
    return PadAlignedDataset(
        str(data_path),
        tokenizer,
        data_args,
        load_pad_index(pad_path),
        grid,
        threshold=0.5,
        on_error=on_error,
        min_pad_coverage=min_pad_coverage,
    )


# s000 (80x60) region 0 "yellow box": mask columns 58..77, rows 39..53.
# pad: canvas 80x80 (top 10), x0.7 → x [40.6, 54.6), y [34.3, 44.8); patch (2, 3) covers
#   (12.6/14)(7.7/14) = 0.495 < τ = 0.5: no patch reaches τ, the fallback gives it (2, 3) = token 11.
# square: x56/60, crop 9 px from the left → x [45.1, 63.8), y [36.4, 50.4); best patch (3, 3) = token 15
#   with (10.87/14)(8.4/14) = 0.466, again by fallback.
@pytest.mark.parametrize(("mode", "token"), [("pad", 11), ("square", 15)])
def test_region_mask_follows_the_image_transform(tokenizer, processor, mode, token):
    item = make_dataset(tokenizer, processor, mode=mode)[0]
    assert item["region_masks"].shape == (2, 16)
    assert item["region_masks"][0].nonzero().flatten().tolist() == [token]
    assert item["pad_regions_fallback"] == 2
    assert item["image"].shape == (3, 56, 56)  # the caption sample itself is unchanged


def test_cls_patch_shifts_tokens_by_one(tokenizer, processor):
    item = make_dataset(tokenizer, processor, select_feature="cls_patch")[0]
    assert item["region_masks"].shape == (2, 17)
    assert item["region_masks"][0].nonzero().flatten().tolist() == [12]
    assert not item["region_masks"][:, 0].any()  # no region owns CLS


def test_label_ids_are_the_words_as_in_running_text_without_bos(tokenizer, processor):
    item = make_dataset(tokenizer, processor)[0]
    caption = tokenizer("a yellow box and a blue box", add_special_tokens=False).input_ids
    for label, ids in zip(("yellow box", "blue box"), item["region_label_ids"], strict=True):
        assert ids == tokenize_label(tokenizer, label)
        assert tokenizer.bos_token_id not in ids
        assert any(caption[i : i + len(ids)] == ids for i in range(len(caption)))


def test_collator_batches_regions_ragged(tokenizer, processor):
    dataset = make_dataset(tokenizer, processor)
    items = [dataset[0], dataset[1]]
    batch = PadAlignedCollator(DataCollatorForSupervisedDataset(tokenizer))(items)
    assert batch["region_masks"].shape == (4, 16)
    assert batch["region_sample_index"].tolist() == [0, 0, 1, 1]
    longest = max(len(ids) for item in items for ids in item["region_label_ids"])
    assert batch["region_label_ids"].shape == (4, longest)
    assert batch["region_label_mask"].sum(1).tolist() == [
        len(i) for it in items for i in it["region_label_ids"]
    ]
    assert batch["images"].shape == (2, 3, 56, 56) and batch["input_ids"].shape[0] == 2
    assert (
        batch["pad_regions_fallback"].item()
        == items[0]["pad_regions_fallback"] + items[1]["pad_regions_fallback"]
    )


def test_samples_without_pad_record_have_no_regions(tokenizer, processor, tmp_path):
    records = json.loads((FIXTURES / "pad.json").read_text())
    pad = tmp_path / "pad.json"
    pad.write_text(json.dumps([r for r in records if r["id"] != "s000"]))
    dataset = make_dataset(tokenizer, processor, pad_path=pad)
    assert dataset[0]["region_masks"].shape == (0, 16) and dataset[0]["region_label_ids"] == []
    batch = PadAlignedCollator(DataCollatorForSupervisedDataset(tokenizer))([dataset[0], dataset[1]])
    assert batch["region_sample_index"].tolist() == [1, 1]


def write_bad_setup(tmp_path):
    """PAD records with one problem each, and LLaVA samples joined to them by id."""
    bad = [r for r in json.loads((FIXTURES / "pad_bad.json").read_text()) if r["id"].startswith("bad-")]
    bad = [r for r in bad if r["id"] != "bad-missing-image"]  # LLaVA's own loader reports missing images
    good = json.loads((FIXTURES / "pad.json").read_text())[0]
    wrong_size = dict(good, id="bad-image-size", width=100)
    wrong_size["regions"] = [dict(good["regions"][0], segmentation=[[1, 1, 10, 1, 10, 10]])]
    other_image = dict(good, id="bad-join", image="img001.png")
    records = [*bad, wrong_size, other_image]
    samples = [
        {
            "id": r["id"],
            "image": "img001.png" if r["id"] == "bad-join" else r["image"],
            "conversations": [{"from": "human", "value": "<image>\n"}, {"from": "gpt", "value": "a box"}],
        }
        for r in records
    ]
    other_image["image"] = "img000.png"
    (tmp_path / "pad.json").write_text(json.dumps(records))
    (tmp_path / "data.json").write_text(json.dumps(samples))
    return tmp_path / "data.json", tmp_path / "pad.json", [r["id"] for r in records]


@pytest.mark.parametrize(
    ("record_id", "message"),
    [
        ("bad-rle-size", "RLE size"),
        ("bad-empty-mask", "empty mask"),
        ("bad-empty-label", "has no tokens"),
        ("bad-image-size", "the record says 100x60"),
        ("bad-join", "img000.png"),
    ],
)
def test_bad_pad_record_raises_naming_its_id(tokenizer, processor, tmp_path, record_id, message):
    data, pad, ids = write_bad_setup(tmp_path)
    dataset = make_dataset(tokenizer, processor, data_path=data, pad_path=pad)
    with pytest.raises(PadRecordError, match=f"PAD record {record_id}: .*{message}"):
        dataset[ids.index(record_id)]


def test_skip_mode_counts_and_logs_bad_regions_and_keeps_the_rest(tokenizer, processor, tmp_path, caplog):
    data, pad, ids = write_bad_setup(tmp_path)
    dataset = make_dataset(tokenizer, processor, data_path=data, pad_path=pad, on_error="skip")
    with caplog.at_level(logging.WARNING, logger="patch_align.data"):
        items = [dataset[i] for i in range(len(dataset))]
    skipped = {record_id: item["pad_regions_skipped"] for record_id, item in zip(ids, items, strict=True)}
    # bad-bbox-outside has a valid mask: the box is not used in training, so its regions stay
    assert skipped == {
        "bad-rle-size": 1,
        "bad-empty-mask": 1,
        "bad-bbox-outside": 0,
        "bad-empty-label": 1,
        "bad-image-size": 1,
        "bad-join": 2,
    }
    assert items[ids.index("bad-bbox-outside")]["region_masks"].shape[0] == 1
    assert dataset.skipped_regions == 6
    for record_id in ("bad-rle-size", "bad-empty-mask", "bad-empty-label", "bad-image-size", "bad-join"):
        assert any(f"PAD record {record_id}: skipping" in r.getMessage() for r in caplog.records)
    batch = PadAlignedCollator(DataCollatorForSupervisedDataset(tokenizer))(items)
    assert batch["pad_regions_skipped"].item() == 6
    assert torch.all(batch["region_masks"].sum(1) >= 1)


def test_pad_on_error_must_be_error_or_skip(tokenizer, processor):
    with pytest.raises(ValueError, match="--pad_on_error"):
        make_dataset(tokenizer, processor, on_error="ignore")


# --- PAD coverage: a checked quantity ---------------------------------------------------------------
# fixtures-437: 24 image samples s000..s023, one PAD record with 2 regions for each.


def write_pad(tmp_path, keep=lambda record: True, rename=lambda record_id: record_id, empty=()):
    """A copy of the fixture PAD file: records kept by `keep`, ids renamed, regions of `empty` dropped."""
    records = [
        dict(r, id=rename(r["id"]), regions=[] if r["id"] in empty else r["regions"])
        for r in json.loads((FIXTURES / "pad.json").read_text())
        if keep(r)
    ]
    pad = tmp_path / "pad.json"
    pad.write_text(json.dumps(records))
    return pad


def test_full_coverage_is_measured_and_logged(tokenizer, processor, caplog):
    with caplog.at_level(logging.INFO, logger="patch_align.data"):
        dataset = make_dataset(tokenizer, processor)
    assert dataset.pad_coverage == PadCoverage(image_samples=24, covered=24, records=24, unmatched_records=0)
    assert dataset.pad_coverage.as_dict() == {
        "image_samples": 24, "covered": 24, "records": 24, "unmatched_records": 0, "fraction": 1.0
    }
    message = "24 of 24 image samples (100.0%) have PAD regions; 0 of 24 PAD records match no sample"
    assert [r.levelname for r in caplog.records if message in r.getMessage()] == ["INFO"]


def test_pad_ids_that_match_no_sample_are_an_error_naming_both_sides(tokenizer, processor, tmp_path):
    pad = write_pad(tmp_path, rename=lambda record_id: f"coco-{record_id}")
    with pytest.raises(PadCoverageError) as caught:
        make_dataset(tokenizer, processor, pad_path=pad)
    message = str(caught.value)
    assert "pretrain.json: 0 of 24 image samples (0.0%) have PAD regions; 24 of 24 PAD records" in message
    assert "--pad_min_coverage 0.0 needs at least one" in message
    assert "['s000', 's001', 's002']" in message and "['coco-s000', 'coco-s001', 'coco-s002']" in message


def test_records_without_regions_do_not_count_as_covered(tokenizer, processor, tmp_path):
    ids = {f"s{i:03d}" for i in range(24)}
    with pytest.raises(PadCoverageError, match="0 of 24 image samples"):
        make_dataset(tokenizer, processor, pad_path=write_pad(tmp_path, empty=ids))


def test_partial_coverage_is_a_warning_above_the_threshold_and_an_error_below(
    tokenizer, processor, tmp_path, caplog
):
    pad = write_pad(tmp_path, keep=lambda record: int(record["id"][1:]) < 18)  # 18 of 24 = 75%
    with caplog.at_level(logging.INFO, logger="patch_align.data"):
        dataset = make_dataset(tokenizer, processor, pad_path=pad, min_pad_coverage=0.75)
    assert (dataset.pad_coverage.covered, dataset.pad_coverage.fraction) == (18, 0.75)
    assert [r.levelname for r in caplog.records if "18 of 24 image samples (75.0%)" in r.getMessage()] == [
        "WARNING"
    ]
    with pytest.raises(PadCoverageError, match=r"18 of 24 .*--pad_min_coverage 0.8 needs at least 80.0%"):
        make_dataset(tokenizer, processor, pad_path=pad, min_pad_coverage=0.8)


def test_min_pad_coverage_must_be_a_fraction(tokenizer, processor):
    with pytest.raises(ValueError, match=r"--pad_min_coverage must be in \[0, 1\], got 75"):
        make_dataset(tokenizer, processor, min_pad_coverage=75)
