"""`llava.train.train.build_trainer` checks the data flags before it loads a tokenizer or a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "data" / "upstream_golden" / "fixtures-437"


def argv(data_path, image_folder=FIXTURES / "images", version="plain") -> list[str]:
    flags = {
        "model_name_or_path": FIXTURES / "llm", "vision_tower": FIXTURES / "clip", "version": version,
        "data_path": data_path, "image_folder": image_folder, "output_dir": "unused", "report_to": "none",
    }
    return [part for key, value in flags.items() for part in (f"--{key}", str(value))]


@pytest.fixture
def nothing_loads(monkeypatch):
    import llava.train.train as train

    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer was loaded before the data flags were checked")

    monkeypatch.setattr(train, "load_tokenizer", refuse)
    return train.build_trainer


def test_a_missing_data_file_is_an_error_naming_it(nothing_loads, tmp_path):
    missing = tmp_path / "absent.json"
    with pytest.raises(FileNotFoundError, match=f"LLaVA data file {missing} does not exist"):
        nothing_loads(argv=argv(missing))


def test_a_data_file_that_is_not_json_is_an_error_with_its_path_and_line(nothing_loads, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[\n{"id": "a",\n')
    with pytest.raises(ValueError, match=rf"{broken}: not valid JSON: .* at line 3"):
        nothing_loads(argv=argv(broken))


def test_a_bad_record_is_an_error_naming_it(nothing_loads, tmp_path):
    data = tmp_path / "bad-record.json"
    data.write_text(json.dumps([{"id": "s1", "image": "img000.png", "conversations": []}]))
    with pytest.raises(ValueError, match=r"record 0 \(id 's1'\): needs a non-empty 'conversations'"):
        nothing_loads(argv=argv(data))


def test_a_missing_image_folder_is_an_error_naming_it(nothing_loads, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"--image_folder {tmp_path / 'nope'} does not exist"):
        nothing_loads(argv=argv(FIXTURES / "pretrain.json", image_folder=tmp_path / "nope"))


def test_an_unknown_template_is_refused_before_anything_loads(nothing_loads):
    with pytest.raises(ValueError, match="--version .vicuna_v7. is not a known conversation template"):
        nothing_loads(argv=argv(FIXTURES / "pretrain.json", version="vicuna_v7"))
