"""`llm_variant`: the world's LLM bootstrapped as another family, on its own tokenizer and template."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from patch_align.world.bootstrap import (
    QUICK_SETTINGS,
    bootstrap_world,
    render_conversation,
    stage2_template,
    text_template,
)
from patch_align.world.generator import WorldSpec, make_world

SMALL = replace(QUICK_SETTINGS, clip_hidden=32, clip_layers=2, clip_projection=32, clip_steps=10,
                clip_batch=32, llm_hidden=32, llm_intermediate=64, llm_steps=100, llm_batch=8, llm_seq_len=64)
TURNS = [{"from": "human", "value": "<image>\nWhat colour is the circle?"}, {"from": "gpt", "value": "red"}]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    make_world(out, WorldSpec(seed=2, n_train=40, n_eval=12))
    return out


def test_the_default_llama_keeps_vicuna_text_and_stage2_v1():
    assert (text_template(SMALL), stage2_template(SMALL)) == ("vicuna_v1", "v1")


def test_a_family_variant_reads_and_trains_with_its_own_template():
    qwen = replace(SMALL, llm_variant="qwen2")
    assert (text_template(qwen), stage2_template(qwen)) == ("qwen_2", "qwen_2")
    assert render_conversation(TURNS, "qwen_2") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat colour is the circle?<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n"
    )


def test_an_unknown_variant_is_an_error_before_anything_trains(world, tmp_path):
    with pytest.raises(ValueError, match=r"unknown tiny LM variant 'qwen9'; known: llama2, llama3"):
        bootstrap_world(world, tmp_path / "boot", replace(SMALL, llm_variant="qwen9"))
    assert not (tmp_path / "boot").exists()


def test_a_qwen2_world_llm_is_a_qwen2_model_on_a_byte_level_tokenizer_that_learned_the_world(world, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

    report = bootstrap_world(world, tmp_path / "boot", replace(SMALL, llm_variant="qwen2"))
    llm = str(tmp_path / "boot" / report["llm_dir"])
    assert isinstance(AutoModelForCausalLM.from_pretrained(llm), Qwen2ForCausalLM)
    tokenizer = AutoTokenizer.from_pretrained(llm)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer.eos_token_id
    no_bos = tokenizer("red circle", add_special_tokens=False)["input_ids"]
    assert tokenizer("red circle")["input_ids"] == no_bos  # Qwen adds no BOS
    quality = report["llm"]
    assert quality["perplexity"] < quality["unigram_perplexity"] < quality["uniform_perplexity"]
    assert report["settings"]["llm_variant"] == "qwen2"


# ---------------------------------------------------------------- the demo on another family


def test_the_demo_trains_and_evaluates_stage2_in_the_familys_template():
    from patch_align.world.demo import DEFAULT_PRESET, DemoPaths, RunSpec, eval_conv_mode, stage2_command

    paths = DemoPaths(world=Path("/w"), clip=Path("/b/clip"), llm=Path("/b/llm"), sea_labels=None)
    run = RunSpec("caption", 0, Path("/o/runs/caption-seed0"))
    qwen = replace(DEFAULT_PRESET, bootstrap=replace(DEFAULT_PRESET.bootstrap, llm_variant="qwen2"))
    for preset, version, conv_mode in ((DEFAULT_PRESET, "v1", "llava_v1"), (qwen, "qwen_2", "qwen_2")):
        command = stage2_command(run, paths, preset)
        assert command[command.index("--version") + 1] == version
        assert eval_conv_mode(preset.bootstrap) == conv_mode


def test_an_unknown_llm_family_is_a_command_error_naming_the_choices(capsys):
    from patch_align.cli import main

    assert main(["demo", "--llm-family", "qwen9", "--out", "/nonexistent/never-written"]) == 2
    assert "--llm-family 'qwen9' is not one of: llama, llama2, llama3" in capsys.readouterr().err


def test_the_demo_runs_end_to_end_on_a_qwen2_world_llm(tmp_path):
    from patch_align.world.demo import DemoOptions, run_demo
    from tests.test_demo import SMOKE_PRESET

    preset = replace(SMOKE_PRESET, bootstrap=replace(SMOKE_PRESET.bootstrap, llm_variant="qwen2"))
    metrics = run_demo(DemoOptions(out=tmp_path, preset=preset, methods=("patch_align",), device="cpu",
                                   progress=False))
    assert not metrics["failed_runs"]
    stage2 = json.loads((tmp_path / "runs/patch_align-seed0/stage2/config.json").read_text())
    assert (stage2["model_type"], stage2["mm_conv_template"]) == ("llava_qwen", "qwen_2")
    suite = json.loads((tmp_path / "eval_suite.json").read_text())
    assert suite["defaults"]["conv_mode"] == "qwen_2"
    assert metrics["settings"]["bootstrap"]["llm_variant"] == "qwen2"
