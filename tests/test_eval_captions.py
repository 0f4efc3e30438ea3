"""Caption metrics: scores on tiny known cases, tokenisation, and the missing-Java path."""
from __future__ import annotations

import json
import logging
import math
import os
import shutil

import pytest

try:
    import pycocoevalcap.cider.cider  # noqa: F401
except ImportError as error:
    if os.environ.get("CI") == "true":  # CI installs every extra it tests: a missing one fails the job
        raise ImportError("CI=true but pycocoevalcap (the 'eval' extra) is not installed") from error
    pytest.skip("caption metrics need the 'eval' extra: pip install 'patch-align[eval]' "
                "(skipped here; with CI=true this is an error)", allow_module_level=True)

from llava.eval import caption_metrics  # noqa: E402
from llava.eval.caption_metrics import (  # noqa: E402
    read_references,
    score_captions,
    simple_tokenize,
    tokenize_captions,
)

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="java not installed")


@pytest.fixture
def without_java(monkeypatch):
    monkeypatch.setattr(caption_metrics.shutil, "which", lambda name: None)


def test_simple_tokenize_lowercases_splits_clitics_and_drops_punctuation():
    assert simple_tokenize("A man's hat, don't you see? Black-and-white 2.5") == [
        "a", "man", "'s", "hat", "do", "n't", "you", "see", "black-and-white", "2.5"]


@needs_java
def test_simple_tokenize_agrees_with_the_ptb_tokenizer_on_an_ordinary_caption():
    caption = "A man's hat, don't you see? Black-and-white 2.5"
    assert tokenize_captions({1: [caption]}, use_java=True) == {1: [" ".join(simple_tokenize(caption))]}


def test_missing_java_skips_meteor_and_falls_back_to_simple_tokenizer(without_java, caplog):
    with caplog.at_level(logging.WARNING, logger="llava.eval.caption_metrics"):
        scores = score_captions({1: ["a dog runs"]}, {1: "a dog runs"})
    assert "METEOR" not in scores
    assert scores["tokenizer"] == "simple"
    assert "no `java` was found" in scores["skipped"]["METEOR"]
    assert "SPICE" in scores["skipped"]
    assert any("METEOR skipped" in message for message in caplog.messages)


def test_identical_predictions_score_full_bleu_rouge_and_cider_ten(without_java):
    # CIDEr-D per image: 10 × mean over n = 1..4 of the tf-idf cosine of the n-gram vectors (clipped,
    # Gaussian length penalty). Identical captions with n-grams of every order not shared by the
    # other image ("the" is, and weighs 0) have cosine 1 for each n and no length penalty: 10.
    references = {1: ["a cat sits on the mat"], 2: ["two dogs run in the green park"]}
    scores = score_captions(references, {1: "a cat sits on the mat", 2: "two dogs run in the green park"})
    assert scores["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ROUGE_L"] == pytest.approx(1.0)
    assert scores["CIDEr"] == pytest.approx(10.0, rel=1e-12)


def test_cider_of_a_hand_computed_two_image_corpus(without_java):
    # Every reference n-gram occurs in one image of two: idf = log 2 for all of them (and for the
    # prediction's unseen "dog", "red dog"). Image 1, "red dog" vs "red cat": unigram cosine
    # L²/(√2L · √2L) = 1/2, bigram 0, no 3-/4-grams, equal lengths: 10 · (1/2)/4 = 1.25.
    # Image 2, identical two-word captions: cosines 1, 1, 0, 0: 10 · 2/4 = 5. Corpus: mean = 3.125.
    scores = score_captions({1: ["red cat"], 2: ["blue car"]}, {1: "red dog", 2: "blue car"})
    assert scores["CIDEr"] == pytest.approx(3.125, rel=1e-12)


def test_cider_of_a_one_image_corpus_is_zero_whatever_the_caption(without_java):
    # idf = log(#images / document frequency) = log(1/1) = 0 for every n-gram of a one-image corpus.
    scores = score_captions({1: ["a cat sits on the mat"]}, {1: "a cat sits on the mat"})
    assert scores["CIDEr"] == 0.0


def test_known_tiny_case_bleu_brevity_penalty_and_rouge_l(without_java):
    # Hypothesis (6 tokens) is a prefix of the single reference (7 tokens): every n-gram
    # precision is 1, so BLEU-4 = brevity penalty exp(1 - 7/6). ROUGE-L: LCS 6, P = 1, R = 6/7,
    # F = (1 + 1.2^2) P R / (R + 1.2^2 P).
    scores = score_captions({1: ["a cat sits on the mat today"]}, {1: "a cat sits on the mat"})
    assert scores["Bleu_4"] == pytest.approx(math.exp(1 - 7 / 6), rel=1e-6)
    recall = 6 / 7
    assert scores["ROUGE_L"] == pytest.approx((1 + 1.44) * recall / (recall + 1.44))


def test_references_file_is_read_with_string_ids_and_checked_naming_file_and_id(tmp_path):
    (tmp_path / "refs.json").write_text(json.dumps({"7": ["a cat"], 8: ["a dog", "a puppy"]}))
    assert read_references(tmp_path / "refs.json") == {"7": ["a cat"], "8": ["a dog", "a puppy"]}
    for bad, shown in (([], r"\[\]"), ("a cat", r"'a cat'"), (["a cat", None], r"\['a cat', None\]")):
        (tmp_path / "bad.json").write_text(json.dumps({"7": ["a cat"], "9": bad}))
        with pytest.raises(ValueError, match=rf"bad\.json: references of id '9' must be a non-empty "
                                             rf"list of strings, got {shown}"):
            read_references(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text(json.dumps([["a cat"]]))
    with pytest.raises(ValueError, match=r"list\.json: expected a JSON object mapping question id"):
        read_references(tmp_path / "list.json")


def test_mismatched_ids_are_an_error_naming_one(without_java):
    with pytest.raises(ValueError, match="have no prediction, e.g. id 2"):
        score_captions({1: ["a"], 2: ["b"]}, {1: "a"})


@needs_java
@pytest.mark.slow
def test_meteor_runs_with_java_and_scores_identical_captions_high():
    scores = score_captions({1: ["a cat sits on the mat"]}, {1: "a cat sits on the mat"})
    assert scores["tokenizer"] == "ptb"
    assert scores["METEOR"] > 0.9
