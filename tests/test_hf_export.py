"""llava-hf export (issue 14): transformers' own classes on the exported folder give our outputs.

The checkpoints are upstream's tiny ones (tests/data/upstream_golden): full (`pad`), the same full
model with `square` images, LoRA + base and projector + base. For each, transformers'
`LlavaForConditionalGeneration` + `AutoProcessor` (the chat template rendering the prompt) must give
our logits within 1e-4 (fp32) and our greedy tokens, one prompt at a time and batched.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from llava.conversation import conv_templates
from llava.eval.run_llava import image_query, single_turn_prompt
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.model.hf_layout import (
    HF_PREFIX_PROJECTOR,
    HF_PREFIX_TEXT,
    HF_PREFIX_TOWER,
    HfLayoutError,
    chat_template_for,
    export_checkpoint,
    hf_image_processor,
)

QUESTIONS = ("What is in the picture?", "Which box is on the left?")
NEW_TOKENS = 6


def image_files(golden_dir: Path) -> list[Path]:
    return sorted((golden_dir / "fixtures-437" / "images").iterdir())[:2]


def checkpoint(golden_dir: Path, tmp: Path, kind: str) -> tuple[str, str | None]:
    """(model_path, model_base) of one checkpoint kind; `square` is the full one with square images."""
    base = str(golden_dir / "fixtures-437" / "llm")
    if kind == "full_pad":
        return str(golden_dir / "llava-v1.5-tiny"), None
    if kind == "full_square":
        folder = tmp / "llava-v1.5-tiny-square"
        shutil.copytree(golden_dir / "llava-v1.5-tiny", folder)
        config = json.loads((folder / "config.json").read_text())
        config["image_aspect_ratio"] = "square"
        (folder / "config.json").write_text(json.dumps(config))
        return str(folder), None
    if kind == "lora":
        return str(golden_dir / "llava-v1.5-tiny-lora"), base
    return str(golden_dir / "llava-tiny-pretrain"), base


class Ours:
    """Our model on the prompts: logits (1, T, V) and greedy new tokens, one prompt at a time."""

    def __init__(self, model_path: str, model_base: str | None, images: list[Image.Image]):
        self.tokenizer, self.model, self.image_processor, _ = load_pretrained_model(
            model_path, model_base, None, device="cpu"
        )
        self.model.eval()
        self.prompts = [single_turn_prompt("vicuna_v1", image_query(q, 1)) for q in QUESTIONS]
        self.logits, self.tokens = [], []
        for prompt, image in zip(self.prompts, images, strict=True):
            ids = tokenizer_image_token(prompt, self.tokenizer, return_tensors="pt")[None]
            pixels = process_images([image], self.image_processor, self.model.config)
            with torch.no_grad():
                self.logits.append(self.model(input_ids=ids, images=pixels).logits[0])
                self.tokens.append(self.model.generate(
                    ids, images=pixels, max_new_tokens=NEW_TOKENS, do_sample=False)[0].tolist())


def messages(question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


@pytest.fixture(scope="module", params=["full_pad", "full_square", "lora", "projector"])
def exported(request, golden_dir, tmp_path_factory):
    """(kind, export folder, Ours) for each checkpoint kind."""
    tmp = tmp_path_factory.mktemp(request.param)
    model_path, model_base = checkpoint(golden_dir, tmp, request.param)
    summary = export_checkpoint(model_path, model_base, tmp / "hf")
    images = [Image.open(p).convert("RGB") for p in image_files(golden_dir)]
    return request.param, summary, Ours(model_path, model_base, images), images


def test_transformers_llava_gives_our_logits_and_greedy_tokens_one_prompt_at_a_time(exported):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    kind, summary, ours, images = exported
    assert summary.image_aspect_ratio == ("square" if kind in ("full_square", "projector") else "pad")
    processor = AutoProcessor.from_pretrained(str(summary.out))
    model = LlavaForConditionalGeneration.from_pretrained(str(summary.out), dtype=torch.float32).eval()
    vocab = ours.logits[0].shape[-1]
    cases = zip(QUESTIONS, images, ours.prompts, ours.logits, ours.tokens, strict=True)
    for question, image, prompt, logits, tokens in cases:
        rendered = processor.apply_chat_template(messages(question), add_generation_prompt=True,
                                                 tokenize=False)
        assert rendered == prompt
        inputs = processor(images=[image], text=[rendered], return_tensors="pt")
        with torch.no_grad():
            theirs = model(**inputs).logits[0]
            generated = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        assert theirs.shape == (logits.shape[0], summary.vocab_after)
        assert (theirs[:, :vocab] - logits).abs().max().item() <= 1e-4
        # the added rows never win: their logit is the mean of the real tokens' logits
        assert (theirs[:, vocab:].max(dim=-1).values <= theirs[:, :vocab].max(dim=-1).values).all()
        new = generated[0, inputs["input_ids"].shape[1]:].tolist()
        eos = processor.tokenizer.eos_token_id
        assert until_eos(new, eos) == until_eos(tokens, eos)


def test_transformers_llava_gives_our_logits_and_tokens_for_a_left_padded_batch(exported):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    _, summary, ours, images = exported
    processor = AutoProcessor.from_pretrained(str(summary.out))
    assert processor.tokenizer.padding_side == "left"
    model = LlavaForConditionalGeneration.from_pretrained(str(summary.out), dtype=torch.float32).eval()
    texts = [processor.apply_chat_template(messages(q), add_generation_prompt=True, tokenize=False)
             for q in QUESTIONS]
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    assert inputs["attention_mask"].sum(dim=1).tolist() != [inputs["input_ids"].shape[1]] * 2  # padded
    with torch.no_grad():
        logits = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    vocab = ours.logits[0].shape[-1]
    eos = processor.tokenizer.eos_token_id
    for row, (expected, tokens) in enumerate(zip(ours.logits, ours.tokens, strict=True)):
        real = inputs["attention_mask"][row].bool()
        assert (logits[row][real][:, :vocab] - expected).abs().max().item() <= 1e-4
        new = generated[row, inputs["input_ids"].shape[1]:].tolist()
        assert until_eos(new, eos) == until_eos(tokens, eos)


def test_image_text_to_text_pipeline_answers_as_our_model_does(exported):
    from transformers import pipeline

    _, summary, ours, images = exported
    pipe = pipeline("image-text-to-text", model=str(summary.out), device="cpu", dtype=torch.float32)
    chat = [{"role": "user", "content": [{"type": "image", "image": images[0]},
                                         {"type": "text", "text": QUESTIONS[0]}]}]
    answer = pipe(text=chat, max_new_tokens=NEW_TOKENS, return_full_text=False,
                  generate_kwargs={"do_sample": False})
    assert answer[0]["generated_text"] == ours.tokenizer.decode(ours.tokens[0], skip_special_tokens=True)


def test_exported_config_has_every_field_vllms_llava_loader_reads(golden_dir, tmp_path):
    """vLLM's llava.py: `architectures` picks the class; it builds the CLIP tower from `vision_config` up to
    `vision_feature_layer`, the LLM from `text_config` (its `architectures`), the projector from
    `projector_hidden_act` / `multimodal_projector_bias`, counts image tokens from image_size, patch_size
    and the strategy, and merges them at `image_token_index`."""
    summary = export_checkpoint(str(golden_dir / "llava-v1.5-tiny"), None, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    assert config["model_type"] == "llava"
    vision, text = config["vision_config"], config["text_config"]
    assert vision["model_type"] == "clip_vision_model"
    tower = (vision["image_size"], vision["patch_size"], vision["hidden_size"], vision["num_hidden_layers"])
    assert tower == (56, 14, 32, 3)
    assert text["model_type"] == "llama" and text["architectures"] == ["LlamaForCausalLM"]
    assert (text["hidden_size"], text["vocab_size"]) == (64, 384)
    assert config["image_token_index"] == summary.image_token_index == 320
    tokenizer = json.loads((tmp_path / "hf" / "tokenizer.json").read_text())
    assert {"id": 320, "content": "<image>", "special": True}.items() <= next(
        t for t in tokenizer["added_tokens"] if t["content"] == "<image>").items()
    assert config["vision_feature_layer"] == -2
    assert config["vision_feature_select_strategy"] == "default"
    assert config["projector_hidden_act"] == "gelu" and config["multimodal_projector_bias"] is True
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    processor = json.loads((tmp_path / "hf" / "processor_config.json").read_text())
    assert (processor["patch_size"], processor["num_additional_image_tokens"]) == (14, 1)
    assert config["image_seq_length"] == patches + processor["num_additional_image_tokens"] - 1 == 16
    preprocessor = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert preprocessor["image_processor_type"] == "LlavaImageProcessor" and preprocessor["do_pad"] is True


def test_weights_are_in_the_published_llava_hf_layout_and_load_with_no_key_missing(golden_dir, tmp_path):
    """The files hold the keys of the published llava-hf checkpoints (what transformers 4.x and vLLM's
    loader read, and transformers 5 writes); transformers 5.24 maps them onto its model exactly."""
    from safetensors import safe_open
    from transformers import LlavaForConditionalGeneration

    export_checkpoint(str(golden_dir / "llava-v1.5-tiny"), None, tmp_path / "hf")
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    prefixes = ("language_model.model.", "language_model.lm_head.", "multi_modal_projector.linear_",
                "vision_tower.vision_model.")
    assert all(key.startswith(prefixes) for key in keys)
    assert {p for p in prefixes if any(k.startswith(p) for k in keys)} == set(prefixes)
    assert {"language_model.model.embed_tokens.weight", "multi_modal_projector.linear_2.bias"} <= set(keys)
    model, info = LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "hf"),
                                                                output_loading_info=True)
    assert info["missing_keys"] == info["unexpected_keys"] == set()
    assert {HF_PREFIX_TEXT, HF_PREFIX_PROJECTOR, HF_PREFIX_TOWER, "lm_head."} == {
        p for p in (HF_PREFIX_TEXT, HF_PREFIX_PROJECTOR, HF_PREFIX_TOWER, "lm_head.")
        if any(k.startswith(p) for k in model.state_dict())}


@pytest.mark.parametrize("size", [(81, 60), (59, 80), (56, 56), (33, 100), (100, 33), (57, 58)])
@pytest.mark.parametrize("pad", [True, False])
def test_llava_image_processor_gives_our_pixels_exactly(golden_dir, size, pad):
    """`do_pad` pads to the longer edge with int(mean * 255), the image at floor offsets, as expand2square."""
    from types import SimpleNamespace

    from transformers import CLIPImageProcessor

    tower_processor = CLIPImageProcessor.from_pretrained(str(golden_dir / "fixtures-437" / "clip"))
    generator = torch.Generator().manual_seed(size[0] * 1000 + size[1])
    noise = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    image = Image.fromarray(noise.numpy(), "RGB")
    config = SimpleNamespace(image_aspect_ratio="pad" if pad else "square")
    ours = process_images([image], tower_processor, config)
    theirs = hf_image_processor(tower_processor, pad)(images=[image], return_tensors="pt")["pixel_values"]
    assert torch.equal(ours, theirs)


CONVERSATIONS = {
    "one image": [("user", ["image"], "What is it?")],
    "two images": [("user", ["image", "image"], "Compare them.")],
    "text only": [("user", [], "Name a colour.")],
    "two turns": [("user", ["image"], "What is it?"), ("assistant", [], "A box."), ("user", [], "And?")],
    "answered": [("user", ["image"], "What is it?"), ("assistant", [], "A red box.")],
}


def hf_messages(turns) -> list[dict]:
    return [{"role": role, "content": [{"type": t} for t in images] + [{"type": "text", "text": text}]}
            for role, images, text in turns]


@pytest.mark.parametrize("conv_mode", ["vicuna_v1", "llava_v1", "plain"])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_chat_template_renders_our_conversation_template_byte_for_byte(golden_dir, conv_mode, name):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(golden_dir / "fixtures-437" / "llm"))
    turns = CONVERSATIONS[name]
    conv = conv_templates[conv_mode].copy()
    for role, images, text in turns:
        conv.append_message(conv.roles[0 if role == "user" else 1], image_query(text, len(images)))
    generating = turns[-1][0] == "user"
    if generating:
        conv.append_message(conv.roles[1], None)
    rendered = tokenizer.apply_chat_template(
        hf_messages(turns), chat_template=chat_template_for(conv_templates[conv_mode]), tokenize=False,
        add_generation_prompt=generating,
    )
    assert rendered == conv.get_prompt()


def test_a_system_message_replaces_the_templates_system_prompt(golden_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(golden_dir / "fixtures-437" / "llm"))
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rendered = tokenizer.apply_chat_template(
        chat, chat_template=chat_template_for(conv_templates["vicuna_v1"]), tokenize=False,
        add_generation_prompt=True)
    assert rendered == "Be brief. USER: Hi ASSISTANT:"


def test_a_template_style_without_a_chat_template_is_refused_by_name():
    with pytest.raises(HfLayoutError, match="separator style MPT"):
        chat_template_for(conv_templates["mpt"])


def test_exported_tokenizer_gives_upstreams_ids_after_the_image(golden_dir, tmp_path):
    """Upstream tokenises the text after `<image>` on its own (a dummy-prefix "▁" starts it); the plain
    llava-hf tokenizer would drop that token. The export keeps it, and only after an image."""
    from transformers import AutoTokenizer

    export_checkpoint(str(golden_dir / "llava-v1.5-tiny"), None, tmp_path / "hf")
    theirs = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    ours = AutoTokenizer.from_pretrained(str(golden_dir / "llava-v1.5-tiny"))
    prompt = single_turn_prompt("vicuna_v1", "<image>\nWhat is it?") + " A box.</s>USER: And?"
    expected = [320 if i == -200 else i for i in tokenizer_image_token(prompt, ours)]
    assert theirs(prompt).input_ids == expected
    plain = ours(prompt.replace("<image>", "")).input_ids  # no image: nothing added anywhere
    assert theirs(prompt.replace("<image>", "")).input_ids == plain


def test_an_image_token_added_unnormalized_as_the_conversion_script_does_gets_upstreams_ids(golden_dir):
    """A llava-hf tokenizer from transformers' script (`<image>` with normalized=False) re-exports with the
    same id and upstream's ids: the normalizer only sees a normalized `<image>`."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    from llava.model.hf_layout import add_image_token

    tokenizer = AutoTokenizer.from_pretrained(str(golden_dir / "llava-v1.5-tiny"))
    tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken("<image>", normalized=False)]})
    prompt = single_turn_prompt("vicuna_v1", "<image>\nWhat is it?")
    expected = [320 if i == -200 else i for i in tokenizer_image_token(prompt, tokenizer)]
    assert tokenizer(prompt).input_ids != expected  # the script's tokenizer: no "▁" after the image
    assert add_image_token(tokenizer) == 320 and len(tokenizer) == 321
    assert tokenizer(prompt).input_ids == expected
