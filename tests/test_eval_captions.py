"""Caption metrics: scores on tiny known cases, tokenisation, and the missing-Java path."""
from __future__ import annotations

import logging
import math
import shutil

import pytest

pytest.importorskip("pycocoevalcap", reason="caption metrics need the 'eval' extra")

from llava.eval import caption_metrics  # noqa: E402
from llava.eval.caption_metrics import score_captions, simple_tokenize, tokenize_captions  # noqa: E402

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


def test_identical_predictions_score_full_bleu_and_finite_cider(without_java):
    references = {1: ["a cat sits on the mat"], 2: ["two dogs run in the green park"]}
    scores = score_captions(references, {1: "a cat sits on the mat", 2: "two dogs run in the green park"})
    assert scores["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ROUGE_L"] == pytest.approx(1.0)
    assert math.isfinite(scores["CIDEr"]) and scores["CIDEr"] > 0


def test_known_tiny_case_bleu_brevity_penalty_and_rouge_l(without_java):
    # Hypothesis (6 tokens) is a prefix of the single reference (7 tokens): every n-gram
    # precision is 1, so BLEU-4 = brevity penalty exp(1 - 7/6). ROUGE-L: LCS 6, P = 1, R = 6/7,
    # F = (1 + 1.2^2) P R / (R + 1.2^2 P).
    scores = score_captions({1: ["a cat sits on the mat today"]}, {1: "a cat sits on the mat"})
    assert scores["Bleu_4"] == pytest.approx(math.exp(1 - 7 / 6), rel=1e-6)
    recall = 6 / 7
    assert scores["ROUGE_L"] == pytest.approx((1 + 1.44) * recall / (recall + 1.44))


def test_mismatched_ids_are_an_error_naming_one(without_java):
    with pytest.raises(ValueError, match="have no prediction, e.g. id 2"):
        score_captions({1: ["a"], 2: ["b"]}, {1: "a"})


@needs_java
@pytest.mark.slow
def test_meteor_runs_with_java_and_scores_identical_captions_high():
    scores = score_captions({1: ["a cat sits on the mat"]}, {1: "a cat sits on the mat"})
    assert scores["tokenizer"] == "ptb"
    assert scores["METEOR"] > 0.9
