"""Specification of llava.eval.generation: batched, left-padded generation on the upstream tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from llava.conversation import conv_templates
from llava.eval.generation import (
    GenerationSettings,
    generate_batch,
    generate_batch_token_ids,
    left_pad,
    trim_at_stop_strings,
)
from llava.mm_utils import tokenizer_image_token

GREEDY_8 = GenerationSettings(max_new_tokens=8)


@pytest.fixture(scope="module")
def golden_model(golden_dir):
    """(tokenizer, model, image_processor) of upstream's full tiny checkpoint, float32 on CPU."""
    from llava.model.builder import load_pretrained_model

    tokenizer, model, image_processor, _ = load_pretrained_model(
        str(golden_dir / "llava-v1.5-tiny"), None, "llava-v1.5-tiny", device="cpu"
    )
    model.eval()
    return tokenizer, model, image_processor


@pytest.fixture(scope="module")
def golden_cases(golden_dir):
    return json.loads((golden_dir / "infer.json").read_text())["full"]["cases"]


def _image(golden_dir, name: str) -> Image.Image:
    with Image.open(golden_dir / "fixtures-437" / "images" / name) as image:
        return image.convert("RGB")


def _prompt(template: str, question: str) -> str:
    conv = conv_templates[template].copy()
    conv.append_message(conv.roles[0], question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


@pytest.fixture(scope="module")
def mixed_batch(golden_dir):
    """Prompts of different lengths: with an image, text-only, and one with two images."""
    questions_and_images = [
        ("<image>\nWhat is in the picture?", _image(golden_dir, "img005.png")),
        ("<image>\nName one object.", _image(golden_dir, "img001.png")),
        ("Describe a red box and a blue box in detail, please.", None),
        ("<image>\nWhat colour is the left box, and why?", _image(golden_dir, "img003.png")),
        ("hi", None),
        ("<image><image>\nCompare.", [_image(golden_dir, "img000.png"), _image(golden_dir, "img004.png")]),
    ]
    prompts = [_prompt("llava_v1", question) for question, _ in questions_and_images]
    return prompts, [images for _, images in questions_and_images]


def test_left_pad_puts_padding_before_each_sequence_and_masks_it():
    ids, mask = left_pad([torch.tensor([5, 6, 7]), torch.tensor([8])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[True, True, True], [False, False, True]]


def test_trim_at_stop_strings_cuts_at_the_earliest_stop_string_and_strips():
    assert trim_at_stop_strings(" a red box###b</s>", ["</s>", "###"]) == "a red box"
    assert trim_at_stop_strings("  no stop here \n", ["###"]) == "no stop here"
    assert trim_at_stop_strings("###", ["###"]) == ""


def test_greedy_settings_pass_no_sampling_knobs_and_sampling_settings_do():
    assert GenerationSettings(max_new_tokens=4).generate_kwargs() == {
        "num_beams": 1, "max_new_tokens": 4, "use_cache": True, "do_sample": False,
    }
    sampling = GenerationSettings(temperature=0.7, top_p=0.9).generate_kwargs()
    assert (sampling["do_sample"], sampling["temperature"], sampling["top_p"]) == (True, 0.7, 0.9)


@pytest.mark.parametrize(
    "bad",
    [{"temperature": -0.1}, {"top_p": 0.0}, {"num_beams": 0}, {"max_new_tokens": 0}, {"stop_strings": ("",)}],
)
def test_invalid_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        GenerationSettings(**bad)


def test_batched_greedy_equals_one_at_a_time_token_for_token(golden_model, mixed_batch):
    tokenizer, model, image_processor = golden_model
    prompts, images = mixed_batch
    lengths = {len(tokenizer_image_token(p, tokenizer)) for p in prompts}
    assert len(lengths) == len(prompts)  # every row is padded differently
    one_at_a_time = generate_batch_token_ids(model, tokenizer, prompts, images, image_processor, GREEDY_8,
                                             batch_size=1)
    all_at_once = generate_batch_token_ids(model, tokenizer, prompts, images, image_processor, GREEDY_8,
                                           batch_size=len(prompts))
    in_pairs = generate_batch_token_ids(model, tokenizer, prompts, images, image_processor, GREEDY_8,
                                        batch_size=2)
    assert all(len(ids) == 8 for ids in one_at_a_time)
    assert all_at_once == one_at_a_time
    assert in_pairs == one_at_a_time


def test_batched_greedy_reproduces_upstream_tokens_inside_a_mixed_batch(
    golden_model, golden_cases, golden_dir, mixed_batch
):
    tokenizer, model, image_processor = golden_model
    prompts, images = mixed_batch
    case = golden_cases["pad/square_72x72"]
    ids = generate_batch_token_ids(
        model, tokenizer, [case["prompt"], *prompts], [_image(golden_dir, case["image"]), *images],
        image_processor, GREEDY_8, batch_size=len(prompts) + 1,
    )
    assert ids[0] == case["new_token_ids"] == [15, 183, 113, 18, 89, 240, 33, 262]


def test_generate_batch_answers_are_the_stripped_decoded_tokens(golden_model, golden_cases, golden_dir):
    tokenizer, model, image_processor = golden_model
    case = golden_cases["pad/wide_80x60"]
    [answer] = generate_batch(model, tokenizer, [case["prompt"]], [_image(golden_dir, case["image"])],
                              image_processor, max_new_tokens=8)
    assert answer == case["generated_text_strip"] == ",ox,ox,ox,ox"


def test_stop_string_ends_generation_and_is_cut_from_the_answer(golden_model, golden_cases, golden_dir):
    tokenizer, model, image_processor = golden_model
    case = golden_cases["pad/wide_80x60"]  # upstream greedy: ",ox,ox,ox,ox"
    image = _image(golden_dir, case["image"])
    stop_at_ox = GenerationSettings(max_new_tokens=8, stop_strings=("ox",))
    ids = generate_batch_token_ids(model, tokenizer, [case["prompt"]], [image], image_processor, stop_at_ox)
    assert ids == [[47, 261]]  # "," then "ox": generation stopped right after the stop string
    [answer] = generate_batch(model, tokenizer, [case["prompt"]], [image], image_processor,
                              max_new_tokens=8, stop_strings=["ox"])
    assert answer == ","


def test_sampling_is_reproducible_under_a_seed_and_differs_from_greedy(golden_model, mixed_batch):
    tokenizer, model, image_processor = golden_model
    prompts, images = mixed_batch
    sampling = GenerationSettings(temperature=1.0, max_new_tokens=8)

    def run(settings):
        return generate_batch_token_ids(
            model, tokenizer, prompts, images, image_processor, settings, batch_size=3
        )

    torch.manual_seed(0)
    first = run(sampling)
    torch.manual_seed(0)
    second = run(sampling)
    greedy = run(GREEDY_8)
    assert first == second
    assert first != greedy


def test_image_count_must_match_the_image_tokens_of_each_prompt(golden_model, golden_dir):
    tokenizer, model, image_processor = golden_model
    prompts = [_prompt("llava_v1", "hi"), _prompt("llava_v1", "<image>\nhi")]
    with pytest.raises(ValueError, match="prompt 1 has 1 <image> token"):
        generate_batch(model, tokenizer, prompts, [None, None], image_processor)
    with pytest.raises(ValueError, match="2 prompts but 1 image"):
        generate_batch(model, tokenizer, prompts, [None], image_processor)


def test_plain_language_model_answers_without_the_prompt_and_batches_identically(golden_dir):
    from llava.model.builder import load_pretrained_model

    tokenizer, model, image_processor, _ = load_pretrained_model(
        str(golden_dir / "fixtures-437" / "llm"), None, "llm", device="cpu"
    )
    assert image_processor is None
    prompts = [_prompt("vicuna_v1", "hi"), _prompt("vicuna_v1", "Describe a red box and a blue box.")]
    no_images = [None, None]
    single = generate_batch_token_ids(model, tokenizer, prompts, no_images, None, GREEDY_8, batch_size=1)
    together = generate_batch_token_ids(model, tokenizer, prompts, no_images, None, GREEDY_8, batch_size=2)
    assert together == single
    assert all(len(ids) == 8 for ids in together)  # new tokens only, the prompt is not echoed
