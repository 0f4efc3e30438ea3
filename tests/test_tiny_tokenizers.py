"""The tiny tokenizers of each LLM family: real tokenizer folders with the family's special tokens."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from llava.tiny_tokenizers import SAMPLE_CORPUS, TOKENIZER_FAMILIES, build_tiny_tokenizer

# kind → (class AutoTokenizer loads, bos, eos, pad, unk, BOS added automatically)
EXPECTED = {
    "llama2": ("LlamaTokenizer", "<s>", "</s>", None, "<unk>", True),
    "mistral": ("LlamaTokenizer", "<s>", "</s>", None, "<unk>", True),
    "llama3": ("TokenizersBackend", "<|begin_of_text|>", "<|eot_id|>", None, None, True),
    "qwen2": ("Qwen2Tokenizer", None, "<|im_end|>", "<|endoftext|>", None, False),
    "gemma": ("GemmaTokenizer", "<bos>", "<eos>", "<pad>", "<unk>", True),
    "phi3": ("LlamaTokenizer", "<s>", "<|endoftext|>", "<|endoftext|>", "<unk>", False),
}
CHAT_TOKENS = {
    "llama2": (),
    "mistral": (),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>"),
    "qwen2": ("<|im_start|>", "<|im_end|>", "<|endoftext|>"),
    "gemma": ("<start_of_turn>", "<end_of_turn>"),
    "phi3": ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
}


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_tokenizers")
    for kind in TOKENIZER_FAMILIES:
        build_tiny_tokenizer(kind, root / kind, SAMPLE_CORPUS)
    return root


@pytest.mark.parametrize("kind", TOKENIZER_FAMILIES)
def test_folder_loads_with_the_family_class_and_special_tokens(kind, tokenizer_dirs):
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dirs / kind))
    class_name, bos, eos, pad, unk, _ = EXPECTED[kind]
    assert type(tokenizer).__name__ == class_name
    specials = (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token)
    assert specials == (bos, eos, pad, unk)
    assert tokenizer.padding_side == "right"


@pytest.mark.parametrize("kind", TOKENIZER_FAMILIES)
def test_auto_bos_follows_the_family(kind, tokenizer_dirs):
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dirs / kind))
    ids = tokenizer("a red box").input_ids
    adds_bos = EXPECTED[kind][5]
    assert (ids[0] == tokenizer.bos_token_id) is adds_bos
    assert ids.count(tokenizer.bos_token_id) == (1 if adds_bos else 0)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a red box"


@pytest.mark.parametrize("kind", TOKENIZER_FAMILIES)
def test_chat_tokens_are_single_special_ids_after_the_trained_vocabulary(kind, tokenizer_dirs):
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dirs / kind))
    for token in CHAT_TOKENS[kind]:
        ids = tokenizer(f"hi{token}there", add_special_tokens=False).input_ids
        token_id = tokenizer.convert_tokens_to_ids(token)
        assert ids.count(token_id) == 1, token
        assert tokenizer.decode(ids, skip_special_tokens=True) == "hithere", token  # special, skipped
        assert token_id >= 300, token  # appended after the trained pieces, as hub files number them


def test_gemma_keeps_gemmas_special_ids_and_no_dummy_prefix(tokenizer_dirs):
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dirs / "gemma"))
    ids = [tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id]
    assert ids == [0, 1, 2, 3]
    first = tokenizer.convert_ids_to_tokens(tokenizer("red", add_special_tokens=False).input_ids)
    assert not first[0].startswith("▁")


@pytest.mark.parametrize("kind", ["llama3", "qwen2"])
def test_byte_level_kinds_mark_a_leading_space_in_the_token(kind, tokenizer_dirs):
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dirs / kind))
    bare = tokenizer("red", add_special_tokens=False).input_ids
    spaced = tokenizer(" red", add_special_tokens=False).input_ids
    assert bare != spaced
    assert tokenizer.convert_ids_to_tokens(spaced)[0].startswith("Ġ")


@pytest.mark.parametrize("kind", ["qwen2", "gemma"])
def test_same_corpus_gives_the_same_files(kind, tokenizer_dirs, tmp_path):
    build_tiny_tokenizer(kind, tmp_path / kind, SAMPLE_CORPUS)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / kind / name).read_bytes() == (tokenizer_dirs / kind / name).read_bytes()


def test_unknown_kind_and_empty_corpus_are_errors_naming_them(tmp_path):
    with pytest.raises(ValueError, match="unknown tokenizer kind 'gpt2'; known: llama2, mistral"):
        build_tiny_tokenizer("gpt2", tmp_path / "x", SAMPLE_CORPUS)
    with pytest.raises(ValueError, match="cannot train a qwen2 tokenizer .* the corpus is empty"):
        build_tiny_tokenizer("qwen2", tmp_path / "y", ["", ""])
