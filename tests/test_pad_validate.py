"""Specification of the PAD validator and the `patch-align pad validate` command."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from patch_align.cli import main
from patch_align.pad import validate as validate_module
from patch_align.pad.validate import validate_pad

FIXTURES = Path(__file__).parent / "data" / "upstream_golden" / "fixtures-437"
IMAGES = FIXTURES / "images"
REPO = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def pad_json() -> list[dict]:
    return json.loads((FIXTURES / "pad.json").read_text())


def write_jsonl(path: Path, values: list) -> Path:
    path.write_text("".join(json.dumps(v) + "\n" for v in values))
    return path


def test_good_file_has_no_problems():
    report = validate_pad(FIXTURES / "pad.json", IMAGES)
    assert report.ok and report.counts == {}
    assert (report.records, report.regions) == (24, 48)


def test_every_planted_bad_record_is_named_with_its_problem():
    report = validate_pad(FIXTURES / "pad_bad.json", IMAGES)
    assert [(p.record_id, p.kind) for p in report.problems] == [
        ("bad-missing-image", "missing_image"),
        ("bad-rle-size", "mask_size_mismatch"),
        ("bad-empty-mask", "empty_mask"),
        ("bad-bbox-outside", "bbox_outside"),
        ("bad-empty-label", "empty_label"),
        ("s000", "duplicate_id"),
    ]
    assert report.problems[-1].detail == "duplicate id s000 (records 0 and 6)"
    assert report.bad_records == 6 and report.records == 7


def test_image_size_differing_from_the_record_is_reported(tmp_path, pad_json):
    path = write_jsonl(tmp_path / "pad.jsonl", [{**pad_json[0], "width": 81}])
    report = validate_pad(path, IMAGES)
    kinds = [p.kind for p in report.problems]
    assert kinds[0] == "image_size_mismatch"
    assert report.problems[0].detail.endswith("is 80x60 (width x height), record says 81x60")
    # the masks were made for 80x60, so they no longer fit either
    assert set(kinds[1:]) == {"mask_size_mismatch"}


def test_unreadable_and_zero_area_inputs_are_reported(tmp_path, pad_json):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    regions = [{**pad_json[0]["regions"][0], "bbox": [1, 1, 0, 5]},
               {**pad_json[0]["regions"][0], "segmentation": {"size": [60, 80], "counts": [5]}}]
    records = [{**pad_json[0], "image": "broken.png"},
               {**pad_json[0], "id": "zero", "image": str(IMAGES / "img000.png"), "regions": regions}]
    report = validate_pad(write_jsonl(tmp_path / "pad.jsonl", records), tmp_path)
    assert [(p.record_id, p.kind) for p in report.problems] == [
        ("s000", "unreadable_image"), ("zero", "empty_bbox"), ("zero", "invalid_mask")]


def test_malformed_lines_are_reported_by_line_and_the_scan_goes_on(tmp_path, pad_json):
    path = tmp_path / "pad.jsonl"
    path.write_text(json.dumps(pad_json[0]) + "\n{oops\n" + json.dumps({**pad_json[1], "regions": 3}) + "\n"
                    + json.dumps({**pad_json[2], "image": "gone.png"}) + "\n")
    report = validate_pad(path, IMAGES)
    assert [(p.record_id, p.kind) for p in report.problems] == [
        ("#1", "malformed_json"), ("s001", "malformed_record"), ("s002", "missing_image")]
    assert report.problems[0].detail.startswith("record 1 (line 2): ")
    assert report.records == 4


class LabelTokenizer:
    """A tokenizer double: a label made only of '~' has no tokens."""

    def __init__(self):
        self.calls = 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        assert add_special_tokens is False
        self.calls += 1
        return [] if set(text) == {"~"} else [len(text)]


def test_labels_that_tokenise_to_nothing_are_reported_and_each_label_tokenised_once(tmp_path, pad_json):
    r0 = pad_json[0]["regions"][0]
    records = [{**pad_json[0], "regions": [{**r0, "label": "~~"}, {**r0, "label": "~~"}]},
               {**pad_json[0], "id": "again", "regions": [{**r0, "label": "box"}, {**r0, "label": "~~"}]}]
    tokenizer = LabelTokenizer()
    report = validate_pad(write_jsonl(tmp_path / "pad.jsonl", records), IMAGES, tokenizer=tokenizer)
    assert [(p.record_id, p.kind) for p in report.problems] == [
        ("s000", "label_without_tokens"), ("s000", "label_without_tokens"), ("again", "label_without_tokens")]
    assert tokenizer.calls == 2


def test_missing_inputs_raise_naming_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        validate_pad(tmp_path / "nope.json", IMAGES)
    with pytest.raises(NotADirectoryError, match="no_images"):
        validate_pad(FIXTURES / "pad.json", tmp_path / "no_images")


def test_progress_bar_goes_to_stderr_for_large_files(monkeypatch, capsys):
    monkeypatch.setattr(validate_module, "_PROGRESS_MIN_BYTES", 0)
    validate_pad(FIXTURES / "pad.json", IMAGES, show_progress=True)
    captured = capsys.readouterr()
    assert "validating PAD" in captured.err and captured.out == ""


# ---- the command ---------------------------------------------------------------------------------

def test_cli_exits_0_on_a_good_file(capsys):
    assert main(["pad", "validate", str(FIXTURES / "pad.json"), "--image-folder", str(IMAGES)]) == 0
    assert "24 records, 48 regions, 0 problems in 0 records" in capsys.readouterr().out


def test_cli_exits_1_and_prints_every_bad_record_and_the_counts(capsys):
    assert main(["pad", "validate", str(FIXTURES / "pad_bad.json"), "--image-folder", str(IMAGES)]) == 1
    out = capsys.readouterr().out
    for record_id in ["bad-missing-image", "bad-rle-size", "bad-empty-mask", "bad-bbox-outside",
                      "bad-empty-label"]:
        assert f"{record_id}: " in out
    assert "s000: duplicate_id: duplicate id s000 (records 0 and 6)" in out
    assert "  empty_mask: 1\n" in out and "6 problems in 6 records" in out


def test_cli_max_print_limits_the_listing_but_not_the_counts(capsys):
    main(["pad", "validate", str(FIXTURES / "pad_bad.json"), "--image-folder", str(IMAGES),
          "--max-print", "2"])
    out = capsys.readouterr().out
    assert "bad-rle-size" in out and "bad-empty-mask: " not in out
    assert "... 4 more problems not printed" in out and "  empty_label: 1\n" in out


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    assert main(["pad", "validate", str(FIXTURES / "pad.json"), "--image-folder", str(tmp_path / "x")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_cli_unsupported_version_exits_1(tmp_path, capsys):
    path = write_jsonl(tmp_path / "v9.jsonl", [{"pad_version": 9}])
    assert main(["pad", "validate", str(path), "--image-folder", str(IMAGES)]) == 1
    assert "pad_version 9 is not supported" in capsys.readouterr().out


def test_cli_with_the_fixture_tokenizer_accepts_the_good_file():
    assert main(["pad", "validate", str(FIXTURES / "pad.json"), "--image-folder", str(IMAGES),
                 "--tokenizer", str(FIXTURES / "llm")]) == 0


def test_module_entry_point_runs_the_same_command():
    done = subprocess.run([sys.executable, "-m", "patch_align.cli", "pad", "validate",
                           str(FIXTURES / "pad_bad.json"), "--image-folder", str(IMAGES)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "bad-empty-label" in done.stdout
