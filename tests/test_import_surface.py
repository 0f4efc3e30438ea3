"""The sequence an evaluation harness (lmms-eval's `llava` model) runs against `llava/`, on CPU.

Every call below is the harness's own: imports from the upstream module paths, the loader with
`multimodal=True` and `attn_implementation="sdpa"` (retried without them on a TypeError), fp16
images, a left-padded batch with a bool mask, text-only generation and log-likelihoods through
`conv.messages[1][1] = answer`. The checkpoint is upstream's own tiny full finetune.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from greedy_reference import greedy_new_tokens
from PIL import Image

from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.mm_utils import get_model_name_from_path, process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model

MAX_NEW = 6


@pytest.fixture(scope="module")
def harness(golden_dir: Path, tmp_path_factory):
    """(tokenizer, model, image_processor, context_len, images) loaded the way lmms-eval loads them."""
    path = tmp_path_factory.mktemp("eval") / "ckpt"  # a saved tiny checkpoint in a neutral folder
    shutil.copytree(golden_dir / "llava-v1.5-tiny", path)
    name = get_model_name_from_path(str(path))
    try:
        loaded = load_pretrained_model(
            str(path), None, name, device_map="cpu", multimodal=True, attn_implementation="sdpa"
        )
    except TypeError:  # the harness retries without the extra kwargs
        loaded = load_pretrained_model(str(path), None, name, device_map="cpu")
    tokenizer, model, processor, context_len = loaded
    model.eval()
    model.tie_weights()
    model.to("cpu")
    folder = golden_dir / "fixtures-437" / "images"
    images = [Image.open(folder / f"img00{i}.png").convert("RGB") for i in (1, 2)]
    return tokenizer, model, processor, context_len, images


def vicuna_prompt(question: str) -> str:
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def test_loader_returns_upstreams_four_values(harness):
    tokenizer, model, processor, context_len, _ = harness
    assert isinstance(context_len, int) and context_len == 2048
    assert model.config.model_type == "llava_llama"
    assert processor.crop_size["height"] == 56
    assert tokenizer.decode(tokenizer("a red box").input_ids, skip_special_tokens=True) == "a red box"


def test_left_padded_fp16_batch_generates_what_each_prompt_generates_alone(harness, golden_dir):
    tokenizer, model, processor, _, images = harness
    questions = [DEFAULT_IMAGE_TOKEN + "\nWhat is in the picture?",
                 DEFAULT_IMAGE_TOKEN + "\nWhat colour is the box on the left of the picture?"]
    prompts = [tokenizer_image_token(vicuna_prompt(q), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
               for q in questions]
    pixels = process_images(images, processor, model.config).to(torch.float16)  # as the harness casts
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(p.shape[0] for p in prompts)
    batch = torch.full((2, width), pad_id, dtype=torch.long)
    mask = torch.zeros((2, width), dtype=torch.bool)
    for row, ids in enumerate(prompts):
        batch[row, width - ids.shape[0]:] = ids
        mask[row, width - ids.shape[0]:] = True
    with torch.inference_mode():
        batched = model.generate(
            batch, attention_mask=mask, pad_token_id=pad_id, images=pixels,
            image_sizes=[im.size for im in images], do_sample=False, temperature=0, top_p=None,
            num_beams=1, max_new_tokens=MAX_NEW, use_cache=True,
        )
        alone = [
            model.generate(ids[None], images=pixels[row : row + 1], image_sizes=[images[row].size],
                           do_sample=False, max_new_tokens=MAX_NEW, use_cache=True)[0].tolist()
            for row, ids in enumerate(prompts)
        ]
    assert batched.shape[0] == 2 and batched.shape[1] <= MAX_NEW  # only the new tokens come back
    for row in range(2):
        assert batched[row].tolist()[: len(alone[row])] == alone[row]
    # Upstream's greedy tokens for the first question about img001 (fp32; fp16 pixels pick the same).
    golden = json.loads((golden_dir / "infer.json").read_text())["full"]["cases"]["pad/tall_60x80"]
    assert alone[0] == golden["new_token_ids"][:MAX_NEW]
    texts = tokenizer.batch_decode(batched, skip_special_tokens=True)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_text_only_generation_takes_no_images_and_returns_the_greedy_tokens(harness):
    tokenizer, model, _, _, _ = harness
    ids = tokenizer_image_token(vicuna_prompt("Name one colour."), tokenizer, IMAGE_TOKEN_INDEX,
                                return_tensors="pt")[None]
    with torch.inference_mode():
        out = model.generate(ids, images=None, image_sizes=[], do_sample=False, max_new_tokens=3,
                             use_cache=True)
    # Only the new tokens come back, and they are the arg-max chain of full forwards without a cache.
    assert out.tolist() == [greedy_new_tokens(model, ids, 3, tokenizer.eos_token_id)]


def test_loglikelihood_of_an_answer_through_the_conversation_messages(harness):
    tokenizer, model, processor, _, images = harness
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\nWhat is in the picture?")
    conv.append_message(conv.roles[1], None)
    context = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
    conv.messages[1][1] = "a red box"  # the harness fills the answer in place
    full = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
    labels = full.clone()
    labels[0, : context.shape[0]] = IGNORE_INDEX
    pixels = process_images(images[:1], processor, model.config).to(torch.float16)
    with torch.inference_mode():
        outputs = model(input_ids=full, labels=labels, images=pixels, image_sizes=[images[0].size],
                        use_cache=True)
    loss = float(outputs["loss"])
    assert math.isfinite(loss) and loss > 0
    # the loss is the mean negative log-likelihood of exactly the answer tokens
    answer = full[0, context.shape[0]:]
    patches = model.get_vision_tower().num_patches
    logits = outputs["logits"][0, context.shape[0] - 1 + patches - 1 : -1].float()
    expected = torch.nn.functional.cross_entropy(logits, answer)
    assert loss == pytest.approx(float(expected), abs=1e-4)
