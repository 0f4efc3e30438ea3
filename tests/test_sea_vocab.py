"""SEA vocabulary: the rule-based noun/attribute tagger, frequency cut-offs, extra words, the CLI."""

import json
from collections import Counter

import pytest

from patch_align.cli import main
from patch_align.sea.vocab import (
    build_vocabulary,
    candidate_words,
    captions_from_llava_json,
    read_word_list,
)


def test_tagger_keeps_nouns_and_attributes_and_drops_function_words_verbs_and_adverbs():
    caption = "A small red car is parked quickly near the old building, while a man is riding 2 bikes."
    assert candidate_words(caption) == ["small", "red", "car", "old", "building", "man", "bikes"]


def test_ing_word_is_a_noun_only_after_a_determiner():
    assert candidate_words("the painting shows people painting walls") == ["painting", "people", "walls"]


def test_suffix_rules_keep_short_words_listed_attributes_and_known_nouns():
    assert candidate_words("bed seed speed striped family friendly") == ["bed", "seed", "speed", "striped",
                                                                         "family"]


def test_vocabulary_orders_by_frequency_then_alphabet_and_applies_cut_offs():
    counts = Counter({"dog": 5, "cat": 5, "red": 9, "sky": 2})
    assert build_vocabulary(counts, min_count=3) == ["red", "cat", "dog"]
    assert build_vocabulary(counts, min_count=3, max_words=2) == ["red", "cat"]
    assert build_vocabulary(counts, min_count=3, max_words=2, extra_words=["sky", "red", "tree"]) == [
        "red", "cat", "sky", "tree"]
    with pytest.raises(ValueError, match="--min-count"):
        build_vocabulary(counts, min_count=0)


def test_word_list_skips_comments_and_names_duplicate_lines(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("# extra words\ncat\n\ndog\ncat\n")
    with pytest.raises(ValueError, match=r"words.txt:5: duplicate word 'cat' \(first on line 2\)"):
        read_word_list(path)
    path.write_text("# extra words\ncat\n\ndog\n")
    assert read_word_list(path) == ["cat", "dog"]


def test_captions_are_the_assistant_turns_and_bad_records_are_named(tmp_path):
    data = tmp_path / "data.json"
    data.write_text(json.dumps([
        {"id": "a", "image": "a.png",
         "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                           {"from": "gpt", "value": "a red car"}]},
        {"id": "b", "image": "b.png"},
    ]))
    with pytest.raises(ValueError, match=r"record 1 \(id 'b'\): needs a non-empty 'conversations' list"):
        captions_from_llava_json(data)


def test_vocab_cli_writes_frequent_words_then_extra_words(tmp_path, capsys):
    data = tmp_path / "data.json"
    turns = ["a red car on the road", "a red bus", "the car is red"]
    data.write_text(json.dumps([{"id": str(i), "conversations": [{"from": "gpt", "value": t}]}
                                for i, t in enumerate(turns)]))
    extra = tmp_path / "extra.txt"
    extra.write_text("tree\n")
    out = tmp_path / "vocab.txt"
    assert main(["sea", "vocab", "--data", str(data), "--min-count", "2", "--extra-words", str(extra),
                 "--out", str(out)]) == 0
    assert out.read_text() == "red\ncar\ntree\n"
    assert "3 words" in capsys.readouterr().out
    assert main(["sea", "vocab", "--data", str(tmp_path / "missing.json"), "--out", str(out)]) == 2
