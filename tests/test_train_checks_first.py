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


def test_a_hub_id_llm_offline_is_an_error_naming_it_before_anything_loads(nothing_loads, tmp_path,
                                                                         monkeypatch):
    from llava.paths import HubModelError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    flags = argv(FIXTURES / "pretrain.json")
    flags[flags.index("--model_name_or_path") + 1] = "lmsys/vicuna-7b-v1.5"
    message = "--model_name_or_path lmsys/vicuna-7b-v1.5 is not a local folder"
    with pytest.raises(HubModelError, match=message):
        nothing_loads(argv=flags)


def test_a_relative_llm_folder_reaches_the_loader_absolute(tmp_path, monkeypatch):
    """What a checkpoint records of its base (_name_or_path, a LoRA's base) must not depend on the folder."""
    import os

    import llava.train.train as train

    seen = []

    def record(model_args, training_args):
        seen.append(model_args.model_name_or_path)
        raise RuntimeError("stop after the first load")

    monkeypatch.setattr(train, "load_tokenizer", record)
    monkeypatch.chdir(FIXTURES)
    flags = argv(FIXTURES / "pretrain.json")
    flags[flags.index("--model_name_or_path") + 1] = "llm"
    with pytest.raises(RuntimeError, match="stop after the first load"):
        train.build_trainer(argv=flags + ["--output_dir", str(tmp_path / "out")])
    assert seen == [os.path.join(str(FIXTURES), "llm")]
