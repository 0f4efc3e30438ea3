"""PAD region labels tokenise as the words do inside a caption, for every tokenizer type."""

from __future__ import annotations

import pytest

from llava.tiny_tokenizers import SAMPLE_CORPUS, TOKENIZER_FAMILIES, build_tiny_tokenizer
from patch_align.objectives.label_embedding import tokenize_label

CAPTION = "a red circle and a blue box on the left"


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("label_tokenizers")
    return {kind: build_tiny_tokenizer(kind, root / kind, SAMPLE_CORPUS) for kind in TOKENIZER_FAMILIES}


def contains(sequence: list[int], part: list[int]) -> bool:
    return any(sequence[i : i + len(part)] == part for i in range(len(sequence) - len(part) + 1))


@pytest.mark.parametrize("kind", TOKENIZER_FAMILIES)
@pytest.mark.parametrize("label", ["red circle", "blue box", " left "])
def test_label_ids_are_the_ids_the_words_have_inside_a_caption(kind, label, tokenizers):
    tokenizer = tokenizers[kind]
    caption = tokenizer(CAPTION, add_special_tokens=False).input_ids
    ids = tokenize_label(tokenizer, label)
    assert ids and contains(caption, ids)
    assert tokenizer.decode(ids).strip() == label.strip()
    assert tokenizer.bos_token_id not in ids


@pytest.mark.parametrize("kind", ["llama3", "qwen2", "gemma"])
def test_bare_word_tokens_differ_from_the_in_caption_ones_where_the_space_is_in_the_token(kind, tokenizers):
    # Why the label is tokenised after a space: without it these tokenizers give other ids.
    tokenizer = tokenizers[kind]
    bare = tokenizer("red circle", add_special_tokens=False).input_ids
    assert tokenize_label(tokenizer, "red circle") != bare


@pytest.mark.parametrize("kind", ["llama2", "mistral", "phi3"])
def test_llama_sentencepiece_labels_are_unchanged_by_the_leading_space(kind, tokenizers):
    tokenizer = tokenizers[kind]
    bare = tokenizer("red circle", add_special_tokens=False).input_ids
    assert tokenize_label(tokenizer, "red circle") == bare


@pytest.mark.parametrize("kind", TOKENIZER_FAMILIES)
def test_blank_label_has_no_tokens(kind, tokenizers):
    assert tokenize_label(tokenizers[kind], "  ") == []
