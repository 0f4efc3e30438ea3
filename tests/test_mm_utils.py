"""Prompt and image helpers against the tensors upstream LLaVA 1.2.2 produced (infer_full.pt)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import (
    KeywordsStoppingCriteria,
    ProcessorGeometry,
    get_model_name_from_path,
    pad_fill,
    process_images,
    processor_geometry,
    processor_input_size,
    tokenizer_image_token,
)

GOLDEN = Path(__file__).parent / "data" / "upstream_golden"
FIXTURES = GOLDEN / "fixtures-437"
INFER_CASES = json.loads((GOLDEN / "infer.json").read_text())["full"]["cases"]
PIXEL_CASES = [key for key, case in INFER_CASES.items() if "image_aspect_ratio" in case]
VICUNA_PROMPT = INFER_CASES["pad/wide_80x60"]["prompt"]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(FIXTURES / "llm")


@pytest.fixture(scope="module")
def image_processor():
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(FIXTURES / "clip")


@pytest.fixture(scope="module")
def golden_cases():
    return torch.load(GOLDEN / "infer_full.pt", weights_only=True)["cases"]


def test_golden_covers_pad_and_square_cases():
    aspects = {INFER_CASES[key]["image_aspect_ratio"] for key in PIXEL_CASES}
    assert aspects == {"pad", "square"}
    assert len(PIXEL_CASES) == 9


@pytest.mark.parametrize("case_key", PIXEL_CASES)
def test_process_images_equals_upstream_pixel_values(case_key, image_processor, golden_cases):
    case = INFER_CASES[case_key]
    image = Image.open(FIXTURES / "images" / case["image"]).convert("RGB")
    config = SimpleNamespace(image_aspect_ratio=case["image_aspect_ratio"])
    pixels = process_images([image], image_processor, config)
    expected = golden_cases[case_key]["pixel_values"]
    assert pixels.shape == expected.shape == (1, 3, 56, 56)
    assert torch.allclose(pixels, expected, rtol=0, atol=1e-5)


def test_process_images_batches_mixed_sizes_when_padding(image_processor):
    images = [Image.new("RGB", (80, 40), (255, 0, 0)), Image.new("RGB", (30, 60), (0, 0, 255))]
    pixels = process_images(images, image_processor, SimpleNamespace(image_aspect_ratio="pad"))
    assert pixels.shape == (2, 3, 56, 56)
    # The pad colour is the processor mean, so the top rows of the wide image normalise to ~0.
    assert pixels[0, :, 0, :].abs().max() < 0.02


def test_process_images_without_pad_setting_crops_the_centre(image_processor):
    wide = Image.new("RGB", (112, 56), (255, 255, 255))
    wide.paste((0, 0, 0), (0, 0, 28, 56))  # a black strip at the far left, outside the centre crop
    pixels = process_images([wide], image_processor, SimpleNamespace())
    white = process_images([Image.new("RGB", (56, 56), (255, 255, 255))], image_processor, SimpleNamespace())
    assert torch.equal(pixels, white)


@pytest.mark.parametrize("case_key", sorted(INFER_CASES))
def test_tokenizer_image_token_equals_upstream_ids(case_key, tokenizer, golden_cases):
    prompt = INFER_CASES[case_key].get("prompt", VICUNA_PROMPT)
    ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
    assert ids.dtype == torch.long
    assert torch.equal(ids, golden_cases[case_key]["input_ids"])


def test_tokenizer_image_token_keeps_one_bos_and_gives_each_chunk_its_prefix(tokenizer):
    # "hi" is "▁" "h" "i" (281 291 284); the chunk after the image starts with its own "▁" too.
    ids = tokenizer_image_token("hi<image>\nhi", tokenizer)
    assert ids == [1, 281, 291, 284, IMAGE_TOKEN_INDEX, 281, 301, 291, 284]
    assert tokenizer_image_token("<image>", tokenizer) == [1, IMAGE_TOKEN_INDEX]
    assert tokenizer_image_token("<image><image>", tokenizer, image_token_index=-7) == [1, -7, -7]


def test_tokenizer_image_token_rejects_unknown_return_tensors(tokenizer):
    with pytest.raises(ValueError, match="return_tensors='np'"):
        tokenizer_image_token("<image>", tokenizer, return_tensors="np")


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("liuhaotian/llava-v1.5-7b", "llava-v1.5-7b"),
        ("/ckpts/llava-v1.5-tiny/", "llava-v1.5-tiny"),
        ("/ckpts/llava-lora/checkpoint-500", "llava-lora_checkpoint-500"),
        ("checkpoint-3", "checkpoint-3"),
    ],
)
def test_get_model_name_from_path(path, name):
    assert get_model_name_from_path(path) == name


def test_keywords_stopping_criteria_stops_each_row_on_its_own_new_tokens(tokenizer):
    prompt = torch.tensor([[1, 259, 2], [1, 259, 262]])  # row 0's prompt already ends in </s>
    criteria = KeywordsStoppingCriteria(["</s>", "ox"], tokenizer, prompt)
    # Row 1's new "▁b" "ox" decodes to " box": its text ends with "ox" although the ids of the
    # keyword on its own ("▁" "ox") do not occur.
    step = torch.cat([prompt, torch.tensor([[259, 259], [260, 261]])], dim=1)
    assert criteria(step, None).tolist() == [False, True]
    step = torch.cat([prompt, torch.tensor([[259, 2], [259, 259]])], dim=1)
    result = criteria(step, None)
    assert result.dtype == torch.bool and result.shape == (2,)
    assert result.tolist() == [True, False]


def test_keywords_stopping_criteria_ignores_the_prompt(tokenizer):
    prompt = torch.tensor([[1, 2]])
    criteria = KeywordsStoppingCriteria(["</s>"], tokenizer, prompt)
    assert criteria(prompt, None).tolist() == [False]
    assert criteria(torch.tensor([[1, 2, 259]]), None).tolist() == [False]


# ---- processors other than CLIP's: what they do to geometry, and the pad fill -------------------

def test_processor_geometry_reads_clips_shortest_edge_and_crop(image_processor):
    assert processor_geometry(image_processor) == ProcessorGeometry(shortest_edge=56, crop=(56, 56))
    assert processor_input_size(image_processor) == (56, 56)


def test_processor_geometry_reads_siglips_resize_without_a_crop():
    from transformers import SiglipImageProcessor

    processor = SiglipImageProcessor(size={"height": 384, "width": 384})
    assert processor_geometry(processor) == ProcessorGeometry(resize_to=(384, 384))
    assert processor_input_size(processor) == (384, 384)


def test_a_shortest_edge_resize_without_a_crop_has_no_fixed_size_and_is_refused():
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": 56}, do_center_crop=False)
    with pytest.raises(ValueError, match="^image processor CLIPImageProcessor.* resizes by shortest_edge "
                                         "without a centre crop"):
        processor_geometry(processor)


def test_siglip_pad_fill_is_127_and_the_padded_image_is_resized_whole():
    from transformers import SiglipImageProcessor

    processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    assert pad_fill(processor) == (127, 127, 127)
    wide = Image.new("RGB", (64, 32), (255, 255, 255))
    pixels = process_images([wide], processor, SimpleNamespace(image_aspect_ratio="pad"))
    assert pixels.shape == (1, 3, 32, 32)
    # the 64x32 image fills rows 8..23 of the 32x32 input, the fill the rest (the 2x bicubic
    # downscale blurs two rows on either side of each edge)
    fill = torch.full((3, 6, 32), (127 / 255 - 0.5) / 0.5)
    torch.testing.assert_close(pixels[0, :, :6], fill)
    torch.testing.assert_close(pixels[0, :, 26:], fill)
    torch.testing.assert_close(pixels[0, :, 10:22], torch.ones(3, 12, 32))
