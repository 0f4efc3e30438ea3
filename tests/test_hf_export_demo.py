"""The issue's "done when" (14): a patch-aligned checkpoint from the miniature's stage 2 exports to the
llava-hf layout, runs through transformers' image-text-to-text pipeline with our answer and our logits,
and imports back exactly.

The demo runs with tests/test_demo.py's smoke preset (2 training steps a stage, the same entry points
as `make demo`), patch-aligned objective only.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_demo import SMOKE_PRESET

from llava.eval.run_llava import image_query, single_turn_prompt
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from patch_align.cli import main

QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def demo_stage2(tmp_path_factory) -> tuple[Path, Path]:
    """(stage-2 checkpoint of the patch-aligned run, an image of the world)."""
    from patch_align.world.demo import DemoOptions, run_demo

    out = tmp_path_factory.mktemp("demo")
    metrics = run_demo(DemoOptions(out=out, preset=SMOKE_PRESET, methods=("patch_align",), device="cpu",
                                   progress=False))
    assert metrics["failed_runs"] == {}
    stage2 = out / "runs" / "patch_align-seed0" / "stage2"
    image = next(p for p in sorted(out.rglob("*.png")) if "images" in p.parts)
    return stage2, image


def test_demo_stage2_checkpoint_exports_runs_in_the_pipeline_and_imports_back_exactly(demo_stage2, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration, pipeline

    stage2, image_path = demo_stage2
    hf, imported, again = tmp_path / "hf", tmp_path / "ours", tmp_path / "hf-again"
    export = ["export", "hf", "--conv-mode", "llava_v1", "--model-path"]
    assert main([*export, str(stage2), "--out", str(hf)]) == 0

    image = Image.open(image_path).convert("RGB")
    tokenizer, model, image_processor, _ = load_pretrained_model(str(stage2), None, None, device="cpu")
    prompt = single_turn_prompt("llava_v1", image_query(QUESTION, 1))
    ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")[None]
    pixels = process_images([image], image_processor, model.config)
    with torch.no_grad():
        ours = model.eval()(input_ids=ids, images=pixels).logits[0]
        tokens = model.generate(ids, images=pixels, max_new_tokens=8, do_sample=False)[0].tolist()

    processor = AutoProcessor.from_pretrained(str(hf))
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert text == prompt
    theirs_model = LlavaForConditionalGeneration.from_pretrained(str(hf), dtype=torch.float32).eval()
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    with torch.no_grad():
        theirs = theirs_model(**inputs).logits[0]
    assert (theirs[:, : ours.shape[1]] - ours).abs().max().item() <= 1e-4
    # the pipeline's answer is the decoded text after the decoded prompt ("ASSISTANT:" + " a ...")
    prompt_ids = inputs["input_ids"][0].tolist()
    decode = processor.tokenizer.decode
    expected_answer = decode(prompt_ids + tokens, skip_special_tokens=True)[
        len(decode(prompt_ids, skip_special_tokens=True)):]

    pipe = pipeline("image-text-to-text", model=str(hf), device="cpu", dtype=torch.float32)
    chat[0]["content"][0]["image"] = image
    answer = pipe(text=chat, max_new_tokens=8, return_full_text=False, generate_kwargs={"do_sample": False})
    assert answer[0]["generated_text"] == expected_answer
    assert expected_answer.strip() == tokenizer.decode(tokens, skip_special_tokens=True).strip()

    assert main(["import", "hf", "--model-path", str(hf), "--out", str(imported)]) == 0
    assert main([*export, str(imported), "--out", str(again)]) == 0
    first, second = load_file(hf / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
