"""Specification of llava.tiny: real, loadable, deterministic tiny model folders and data."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionModel, LlamaForCausalLM

from llava.tiny import (
    BOX_COLOURS,
    build_tiny_clip,
    build_tiny_llava_setup,
    make_tiny_dataset,
    train_sentencepiece_tokenizer,
)


def _file_digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_llm_folder_loads_through_auto_tokenizer_and_llama_for_causal_lm(tiny_setup):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_setup.llm))
    model, loading_info = LlamaForCausalLM.from_pretrained(str(tiny_setup.llm), output_loading_info=True)

    assert type(tokenizer).__name__ == "LlamaTokenizer"
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token is None
    assert tokenizer.padding_side == "right"
    assert len(tokenizer) == 320
    assert not loading_info["missing_keys"]
    assert (model.config.vocab_size, model.config.hidden_size, model.config.num_hidden_layers) == (320, 64, 2)
    assert next(model.parameters()).dtype == torch.float32
    ids = tokenizer("a red box", return_tensors="pt").input_ids
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], 320)


def test_tokenizer_config_keeps_legacy_false_for_transformers_4_readers(tiny_setup):
    config = json.loads((tiny_setup.llm / "tokenizer_config.json").read_text())
    assert config["legacy"] is False
    assert config["padding_side"] == "right"
    assert "local_files_only" not in config


def test_tokenizer_has_newline_as_its_own_piece_and_round_trips_it(tiny_setup):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_setup.llm))
    ids = tokenizer("<image>\nWhat is in the picture?").input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)

    assert "\n" in tokens
    assert "<0x0A>" not in tokens
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<image>\nWhat is in the picture?"
    assert tokenizer.decode(tokenizer("USER:\nASSISTANT:").input_ids, skip_special_tokens=True) == (
        "USER:\nASSISTANT:"
    )


def test_clip_folder_loads_as_vision_model_and_image_processor(tiny_setup):
    vision, loading_info = CLIPVisionModel.from_pretrained(str(tiny_setup.clip), output_loading_info=True)
    processor = CLIPImageProcessor.from_pretrained(str(tiny_setup.clip))
    image = Image.open(tiny_setup.image_folder / "img000.png").convert("RGB")

    pixel_values = processor(images=[image], return_tensors="pt")["pixel_values"]
    hidden = vision(pixel_values=pixel_values, output_hidden_states=True).hidden_states

    assert not loading_info["missing_keys"]
    assert pixel_values.shape == (1, 3, 56, 56)
    # 4x4 patches of 14 px plus the CLS token; 3 layers give 4 hidden states.
    assert len(hidden) == 4
    assert hidden[-2].shape == (1, 17, 32)


def test_clip_rejects_an_image_size_that_is_not_a_multiple_of_the_patch_size(tmp_path):
    with pytest.raises(ValueError, match="image_size 50 is not a multiple of patch_size 14"):
        build_tiny_clip(tmp_path / "clip", image_size=50)


def test_dataset_images_are_non_square_and_captions_name_the_boxes_left_to_right(tmp_path):
    paths = make_tiny_dataset(tmp_path, n_images=6, seed=3)
    pretrain = json.loads(paths["pretrain_json"].read_text())

    assert len(pretrain) == 6
    for sample in pretrain:
        human, gpt = sample["conversations"]
        assert human["from"] == "human" and human["value"].count("<image>") == 1
        left, right = re.fullmatch(r"a (\w+) box and a (\w+) box", gpt["value"]).groups()
        image = Image.open(paths["image_folder"] / sample["image"])
        width, height = image.size
        assert width != height
        pixels = image.load()
        columns_of = {
            name: {x for x in range(width) for y in range(height) if pixels[x, y] == BOX_COLOURS[name]}
            for name in (left, right)
        }
        assert columns_of[left] and max(columns_of[left]) < width // 2
        assert columns_of[right] and min(columns_of[right]) >= width // 2


def test_finetune_list_mixes_single_turn_multi_turn_and_text_only_samples(tmp_path):
    paths = make_tiny_dataset(tmp_path, n_images=6)
    finetune = json.loads(paths["finetune_json"].read_text())
    image_samples = [s for s in finetune if "image" in s]
    text_only = [s for s in finetune if "image" not in s]

    assert len(image_samples) == 6 and len(text_only) >= 1
    assert len({s["id"] for s in finetune}) == len(finetune)
    assert {len(s["conversations"]) for s in image_samples} == {2, 4}
    for sample in finetune:
        roles = [turn["from"] for turn in sample["conversations"]]
        assert roles == ["human", "gpt"] * (len(roles) // 2)
        image_marks = sum(turn["value"].count("<image>") for turn in sample["conversations"])
        assert image_marks == (1 if "image" in sample else 0)
    for sample in image_samples:
        assert (paths["image_folder"] / sample["image"]).is_file()


def test_seeded_setup_is_byte_identical_and_another_seed_changes_the_weights(tmp_path):
    first = build_tiny_llava_setup(tmp_path / "first", seed=0)
    second = build_tiny_llava_setup(tmp_path / "second", seed=0)
    third = build_tiny_llava_setup(tmp_path / "third", seed=1)

    assert _file_digests(first.root) == _file_digests(second.root)
    assert _file_digests(first.llm)["model.safetensors"] != _file_digests(third.llm)["model.safetensors"]
    assert _file_digests(first.clip)["model.safetensors"] != _file_digests(third.clip)["model.safetensors"]


def test_building_leaves_the_callers_random_state_untouched(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_clip(tmp_path / "clip")
    assert torch.equal(torch.rand(3), expected)


def test_second_setup_call_reuses_the_build_and_a_new_seed_rebuilds_it(tmp_path):
    setup = build_tiny_llava_setup(tmp_path, seed=0)
    weights = setup.llm / "model.safetensors"
    built_at = weights.stat().st_mtime_ns

    assert build_tiny_llava_setup(tmp_path, seed=0) == setup
    assert weights.stat().st_mtime_ns == built_at

    before = _file_digests(setup.llm)["model.safetensors"]
    build_tiny_llava_setup(tmp_path, seed=1)
    assert _file_digests(setup.llm)["model.safetensors"] != before


def test_a_setup_without_its_marker_is_rebuilt_from_scratch(tmp_path):
    setup = build_tiny_llava_setup(tmp_path)
    (tmp_path / ".tiny_setup.json").unlink()
    stray = setup.llm / "left_over_from_an_interrupted_build.bin"
    stray.write_bytes(b"x")

    build_tiny_llava_setup(tmp_path)

    assert not stray.exists()
    assert (tmp_path / ".tiny_setup.json").is_file()


def test_tokenizer_training_names_the_folder_when_the_corpus_is_empty(tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "tok")) + ".*corpus is empty"):
        train_sentencepiece_tokenizer([], tmp_path / "tok")


def test_tokenizer_training_reports_a_vocabulary_too_small_for_the_byte_pieces(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_sentencepiece_tokenizer(["a red box"] * 10, tmp_path / "tok", vocab_size=100)


def test_golden_dir_fixture_points_the_golden_checkpoints_at_its_own_fixtures_copy(golden_dir):
    config = json.loads((golden_dir / "llava-v1.5-tiny" / "config.json").read_text())
    adapter = json.loads((golden_dir / "llava-v1.5-tiny-lora" / "adapter_config.json").read_text())

    assert not [p for p in golden_dir.rglob("*.json") if "@FIXTURES@" in p.read_text()]
    assert Path(config["mm_vision_tower"]) == (golden_dir / "fixtures-437" / "clip").resolve()
    assert (Path(adapter["base_model_name_or_path"]) / "model.safetensors").is_file()
