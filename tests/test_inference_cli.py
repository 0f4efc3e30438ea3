"""Specification of the inference entry points: `llava.eval.run_llava` and `llava.serve.cli`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llava.eval import run_llava
from llava.eval.run_llava import (
    conv_mode_for_model,
    image_query,
    new_chat,
    resolve_device,
    single_turn_prompt,
    stop_string,
)
from llava.serve import cli

REPO_ROOT = Path(__file__).resolve().parents[1]
# Upstream's greedy answer to this question about img003 with vicuna_v1 (8 new tokens) is golden.
QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def golden_case(golden_dir):
    case = json.loads((golden_dir / "infer.json").read_text())["full"]["cases"]["pad/wide_96x48"]
    return {
        "model": str(golden_dir / "llava-v1.5-tiny"),
        "image": str(golden_dir / "fixtures-437" / "images" / case["image"]),
        "answer": case["generated_text_strip"],
    }


@pytest.mark.parametrize(
    ("model_name", "mode"),
    [
        ("llava-v1.5-7b", "llava_v1"),
        ("llava-llama-2-13b-chat", "llava_llama_2"),
        ("llava-v1.6-mistral-7b", "mistral_instruct"),
        ("llava-v1.6-34b", "chatml_direct"),
        ("llava-mpt-7b", "mpt"),
        ("llava-tiny", "llava_v0"),
    ],
)
def test_conversation_mode_is_inferred_from_the_model_name_like_upstream(model_name, mode):
    assert conv_mode_for_model(model_name) == mode


def test_images_go_in_front_of_the_query_or_replace_its_placeholders():
    assert image_query("What?", 1) == "<image>\nWhat?"
    assert image_query("What?", 2) == "<image><image>\nWhat?"
    assert image_query("What?", 0) == "What?"
    wrapped = image_query("A <image-placeholder> B", 1, mm_use_im_start_end=True)
    assert wrapped == "A <im_start><image><im_end> B"
    with pytest.raises(ValueError, match="1 <image-placeholder> but 2 image"):
        image_query("A <image-placeholder>", 2)


def test_two_style_templates_stop_on_sep2_and_others_on_sep():
    assert stop_string(new_chat("llava_v1")) == "</s>"
    assert stop_string(new_chat("llava_v0")) == "###"


def test_single_turn_prompt_ends_with_the_assistant_role():
    assert single_turn_prompt("vicuna_v1", "hi").endswith("USER: hi ASSISTANT:")


def test_cuda_request_falls_back_to_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cuda") == "cpu"
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"


def test_unknown_conversation_mode_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'nope'"):
        new_chat("nope")


def test_run_llava_prints_upstreams_greedy_answer(golden_case, capsys):
    run_llava.main([
        "--model-path", golden_case["model"], "--image-file", golden_case["image"], "--query", QUESTION,
        "--conv-mode", "vicuna_v1", "--temperature", "0", "--max_new_tokens", "8", "--device", "cpu",
    ])
    assert capsys.readouterr().out.strip().splitlines()[-1] == golden_case["answer"] == ",ox,ox,ox,ox"


def test_run_llava_answers_a_text_only_query(golden_case, capsys):
    answer = run_llava.main([
        "--model-path", golden_case["model"], "--query", "Name one object.", "--temperature", "0",
        "--max_new_tokens", "4", "--device", "cpu",
    ])
    assert answer != ""
    assert capsys.readouterr().out == answer + "\n"


def test_serve_cli_chats_until_an_empty_line_and_streams_each_answer(golden_case, capsys):
    answers = cli.main(
        ["--model-path", golden_case["model"], "--image-file", golden_case["image"], "--conv-mode",
         "vicuna_v1", "--temperature", "0", "--max-new-tokens", "8", "--device", "cpu"],
        input_stream=io.StringIO(f"{QUESTION}\nAnd now?\n\nnever read\n"),
    )
    out = capsys.readouterr().out
    assert len(answers) == 2
    assert answers[0] == golden_case["answer"]  # the first turn is upstream's exact prompt
    assert out.count("USER: ") == 3 and out.count("ASSISTANT: ") == 2
    assert golden_case["answer"] in out  # streamed as it was generated
    assert out.rstrip().endswith("exit...")


def test_in_process_inference_leaves_torch_layer_initialisation_alone(golden_case, capsys):
    """Upstream's disable_torch_init patch lasts for the process: a layer built after it would start
    from uninitialised memory (a new projector in the same process trained into NaN)."""
    linear_init, norm_init = torch.nn.Linear.reset_parameters, torch.nn.LayerNorm.reset_parameters
    run_llava.main([
        "--model-path", golden_case["model"], "--query", "Name one object.", "--temperature", "0",
        "--max_new_tokens", "2", "--device", "cpu",
    ])
    cli.main(["--model-path", golden_case["model"], "--temperature", "0", "--max-new-tokens", "2",
              "--device", "cpu"], input_stream=io.StringIO("hi\n\n"))
    assert torch.nn.Linear.reset_parameters is linear_init
    assert torch.nn.LayerNorm.reset_parameters is norm_init


def _run_module(module: str, args: list[str], stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", module, *args], input=stdin, capture_output=True, text=True, env=env,
        cwd=REPO_ROOT, timeout=300,
    )


@pytest.mark.slow
def test_run_llava_as_a_subprocess_prints_the_answer(golden_case):
    result = _run_module("llava.eval.run_llava", [
        "--model-path", golden_case["model"], "--image-file", golden_case["image"], "--query", QUESTION,
        "--conv-mode", "vicuna_v1", "--temperature", "0", "--max_new_tokens", "8",
    ])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == golden_case["answer"]
    assert "running on cpu" not in result.stderr  # --device auto picks cpu without a warning


@pytest.mark.slow
def test_serve_cli_as_a_subprocess_reads_stdin_until_eof(golden_case):
    result = _run_module(
        "llava.serve.cli",
        ["--model-path", golden_case["model"], "--image-file", golden_case["image"], "--conv-mode",
         "vicuna_v1", "--temperature", "0", "--max-new-tokens", "8", "--debug"],
        stdin=f"{QUESTION}\n",
    )
    assert result.returncode == 0, result.stderr
    assert "CUDA is not available: running on cpu" in result.stderr  # default --device cuda fell back
    assert f"ASSISTANT: {golden_case['answer']}" in result.stdout
    assert "'outputs': ',ox,ox,ox,ox'" in result.stdout
    assert result.stdout.rstrip().endswith("exit...")
