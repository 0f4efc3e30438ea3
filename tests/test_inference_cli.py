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
from greedy_reference import greedy_new_tokens
from PIL import Image

from llava.eval import generation, run_llava
from llava.eval.generation import encode_images, trim_at_stop_strings
from llava.eval.run_llava import (
    choose_conv_mode,
    conv_mode_for_model,
    image_query,
    new_chat,
    resolve_device,
    single_turn_prompt,
    stop_string,
    trained_conv_mode,
)
from llava.mm_utils import tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.serve import cli

REPO_ROOT = Path(__file__).resolve().parents[1]
# Upstream's greedy answer to this question about img003 with vicuna_v1 (8 new tokens) is golden.
QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def golden_model(golden_dir):
    """(tokenizer, model, image_processor) of the golden tiny checkpoint, for reference computations."""
    tokenizer, model, image_processor, _ = load_pretrained_model(
        str(golden_dir / "llava-v1.5-tiny"), None, "llava-v1.5-tiny", device="cpu"
    )
    model.eval()
    return tokenizer, model, image_processor


def _second_turn_greedy_answer(
    golden_model, golden_case, question: str, max_new_tokens: int
) -> tuple[list[int], str]:
    """The serve chat's second answer computed directly, as (new tokens, answer): the vicuna_v1
    conversation holding the image turn and its golden answer, then `question`, greedy by full forwards."""
    tokenizer, model, image_processor = golden_model
    conv = new_chat("vicuna_v1")
    for user_text, answer in ((f"<image>\n{QUESTION}", golden_case["answer"]), (question, None)):
        conv.append_message(conv.roles[0], user_text)
        conv.append_message(conv.roles[1], answer)
    with Image.open(golden_case["image"]) as image:
        image = image.convert("RGB")
    pixels = encode_images([image], image_processor, model.config.image_aspect_ratio)
    ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")
    new = greedy_new_tokens(model, ids, max_new_tokens, tokenizer.eos_token_id, images=pixels,
                            image_sizes=[image.size])
    return new, trim_at_stop_strings(tokenizer.decode(new, skip_special_tokens=True), [stop_string(conv)])


@pytest.fixture(scope="module")
def golden_case(golden_dir):
    case = json.loads((golden_dir / "infer.json").read_text())["full"]["cases"]["pad/wide_96x48"]
    return {
        "model": str(golden_dir / "llava-v1.5-tiny"),
        "image": str(golden_dir / "fixtures-437" / "images" / case["image"]),
        "answer": case["generated_text_strip"],
        "tokens": case["new_token_ids"],
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


def test_the_template_a_checkpoint_was_trained_with_wins_over_the_name_rule(tmp_path):
    config = {"model_type": "llava_qwen", "mm_conv_template": "qwen_2"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    trained = trained_conv_mode(tmp_path)
    assert trained == "qwen_2"
    assert choose_conv_mode("llava-v1.5-7b", None, trained) == "qwen_2"
    assert choose_conv_mode("llava-v1.5-7b", "llava_v1", trained) == "llava_v1"  # --conv-mode still wins
    assert choose_conv_mode("llava-v1.5-7b", None, None) == "llava_v1"  # upstream checkpoint: name rule


def test_a_checkpoint_without_a_recorded_template_or_config_records_none(tmp_path):
    assert trained_conv_mode(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_llama"}))
    assert trained_conv_mode(tmp_path) is None


def test_a_recorded_template_that_does_not_exist_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"mm_conv_template": "qwen_9"}))
    with pytest.raises(ValueError, match=r"config\.json records mm_conv_template='qwen_9'.*--conv-mode"):
        trained_conv_mode(tmp_path)


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


def _record_returns(monkeypatch, owner, name: str) -> list:
    """Wrap `owner.name` so that every value it returns is also appended to the returned list."""
    returned, real = [], getattr(owner, name)

    def recording(*args, **kwargs):
        returned.append(real(*args, **kwargs))
        return returned[-1]

    monkeypatch.setattr(owner, name, recording)
    return returned


def test_run_llava_answers_a_text_only_query_with_the_greedy_tokens(
    golden_case, golden_model, capsys, monkeypatch
):
    generated = _record_returns(monkeypatch, generation, "generate_batch_token_ids")
    answer = run_llava.main([
        "--model-path", golden_case["model"], "--query", "Name one object.", "--temperature", "0",
        "--max_new_tokens", "4", "--device", "cpu",
    ])
    tokenizer, model, _ = golden_model
    # No --conv-mode: "llava-v1.5-tiny" names the llava_v1 template; no image: the query is the user turn.
    ids = tokenizer_image_token(single_turn_prompt("llava_v1", "Name one object."), tokenizer,
                                return_tensors="pt")
    expected = greedy_new_tokens(model, ids, 4, tokenizer.eos_token_id)
    # The tiny model answers in byte tokens that decode to replacement characters: compare the tokens.
    assert generated == [[expected]] and len(expected) == 4
    assert answer == tokenizer.decode(expected, skip_special_tokens=True).strip()
    assert capsys.readouterr().out == answer + "\n"


def test_serve_cli_chats_until_an_empty_line_and_streams_each_answer(
    golden_case, golden_model, capsys, monkeypatch
):
    generated = _record_returns(monkeypatch, cli, "generate_token_ids")
    answers = cli.main(
        ["--model-path", golden_case["model"], "--image-file", golden_case["image"], "--conv-mode",
         "vicuna_v1", "--temperature", "0", "--max-new-tokens", "8", "--device", "cpu"],
        input_stream=io.StringIO(f"{QUESTION}\nAnd now?\n\nnever read\n"),
    )
    out = capsys.readouterr().out
    assert len(answers) == 2
    assert answers[0] == golden_case["answer"]  # the first turn is upstream's exact prompt
    second_tokens, second_text = _second_turn_greedy_answer(golden_model, golden_case, "And now?", 8)
    assert [row for [row] in generated] == [golden_case["tokens"], second_tokens]
    assert answers[1] == second_text
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


def _never_load(*args, **kwargs):
    raise AssertionError("a model was loaded")


@pytest.fixture
def bad_inputs(golden_case, tmp_path) -> dict[str, str]:
    """Paths of a missing image, a file that is not an image, and a real image."""
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    return {"absent": str(tmp_path / "absent.png"), "not_an_image": str(not_an_image),
            "image": golden_case["image"]}


@pytest.mark.parametrize(("entry", "flags", "message"), [
    ("run_llava", ["--image-file", "{absent}"], "image file not found: {absent}"),
    ("run_llava", ["--image-file", "{not_an_image}"], "image file {not_an_image} is not a readable image"),
    ("run_llava", ["--image-file", "https://example.org/a.png"],
     "https://example.org/a.png: image URLs are not supported"),
    ("run_llava", ["--conv-mode", "vicuna_v9"], "--conv-mode 'vicuna_v9' is not a template"),
    ("run_llava", ["--image-file", "{image}", "--query", "<image-placeholder> vs <image-placeholder>"],
     "the query has 2 <image-placeholder> but 1 image(s) were given"),
    ("serve", ["--image-file", "{absent}"], "image file not found: {absent}"),
    ("serve", ["--image-file", "{not_an_image}"], "image file {not_an_image} is not a readable image"),
    ("serve", ["--conv-mode", "vicuna_v9"], "--conv-mode 'vicuna_v9' is not a template"),
])
def test_bad_image_or_conversation_mode_exits_2_before_the_model_loads(
    golden_case, bad_inputs, monkeypatch, capsys, entry, flags, message
):
    module = run_llava if entry == "run_llava" else cli
    monkeypatch.setattr(module, "load_pretrained_model", _never_load)
    argv = ["--model-path", golden_case["model"], "--device", "cpu", *[f.format(**bad_inputs) for f in flags]]
    if entry == "run_llava" and "--query" not in flags:
        argv += ["--query", QUESTION]
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv, input_stream=io.StringIO("hi\n")) if entry == "serve" else module.main(argv)
    assert exit_info.value.code == 2
    assert f"error: {message.format(**bad_inputs)}" in capsys.readouterr().err


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
