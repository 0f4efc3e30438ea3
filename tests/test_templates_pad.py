"""The pad token per template and tokenizer family (`prepare_tokenizer`)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from llava.tiny_tokenizers import SAMPLE_CORPUS, TOKENIZER_FAMILIES, build_tiny_tokenizer
from llava.train.tokenizer_setup import prepare_tokenizer


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pad_tokenizers")
    for kind in TOKENIZER_FAMILIES:
        build_tiny_tokenizer(kind, root / kind, SAMPLE_CORPUS)
    return root


def prepared(tokenizer_dirs, kind: str, version: str):
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dirs / kind))
    prepare_tokenizer(tokenizer, version)
    return tokenizer


@pytest.mark.parametrize(
    ("kind", "version", "pad"),
    [
        ("llama3", "llama_3", "<|finetune_right_pad_id|>"),  # no pad, no unk: the reserved pad token
        ("qwen2", "qwen_2", "<|endoftext|>"),
        ("qwen2", "qwen_2_5", "<|endoftext|>"),
        ("gemma", "gemma", "<pad>"),
        ("phi3", "phi3", "<|endoftext|>"),
    ],
)
def test_family_template_keeps_or_picks_a_pad_that_is_not_its_turn_end(tokenizer_dirs, kind, version, pad):
    tokenizer = prepared(tokenizer_dirs, kind, version)
    assert tokenizer.pad_token == pad
    assert tokenizer("a red box").input_ids.count(tokenizer.pad_token_id) == 0


@pytest.mark.parametrize("kind", ["llama2", "mistral", "gemma", "phi3"])
@pytest.mark.parametrize("version", ["v1", "plain", "llava_llama_2", "mistral_instruct"])
def test_upstream_templates_pad_with_unk_as_upstream_does(tokenizer_dirs, kind, version):
    assert prepared(tokenizer_dirs, kind, version).pad_token == "<unk>"


def test_v0_adds_a_pad_token_only_when_there_is_none(tokenizer_dirs):
    assert prepared(tokenizer_dirs, "llama2", "v0").pad_token == "[PAD]"
    assert prepared(tokenizer_dirs, "gemma", "v0").pad_token == "<pad>"


@pytest.mark.parametrize(
    ("kind", "pad"), [("llama3", "<|finetune_right_pad_id|>"), ("qwen2", "<|endoftext|>")]
)
def test_upstream_templates_on_a_tokenizer_without_unk_get_the_family_pad(tokenizer_dirs, kind, pad):
    # Upstream would set pad to None here (no <unk>) and fail at the first batch.
    assert prepared(tokenizer_dirs, kind, "plain").pad_token == pad


def test_llama_3_pad_falls_back_to_a_reserved_token_and_never_to_eot(tokenizer_dirs, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dirs / "llama3"))
    tokenizer.pad_token = "<|eot_id|>"  # what a careless setup does: pad = eos = the supervised turn end
    prepare_tokenizer(tokenizer, "llama_3")
    assert tokenizer.pad_token == "<|finetune_right_pad_id|>"


@pytest.mark.parametrize(("kind", "version"), [("llama2", "llama_3"), ("qwen2", "gemma"), ("gemma", "phi3")])
def test_family_template_on_another_familys_tokenizer_is_an_error(tokenizer_dirs, kind, version):
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dirs / kind))
    with pytest.raises(ValueError, match=f"--version {version} ends each turn with .* not hold as one token"):
        prepare_tokenizer(tokenizer, version)


def test_unknown_version_is_an_error_listing_the_templates(tokenizer_dirs):
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dirs / "llama2"))
    with pytest.raises(ValueError, match="--version 'qwen3' is not a known conversation template; known: "):
        prepare_tokenizer(tokenizer, "qwen3")
