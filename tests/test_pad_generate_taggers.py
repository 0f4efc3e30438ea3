"""The taggers: caption noun phrases by rule, tags from a file, CLIP-style multi-label thresholding."""

from __future__ import annotations

import pytest
import torch

from patch_align.pad.generate.taggers import (
    CaptionTagger,
    FileTagger,
    SampleInfo,
    caption_noun_phrases,
    multilabel_tags,
    read_tag_file,
)


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("a red car near a tree", ["red car", "tree"]),
        ("The man riding a horse on the beach, at sunset.", ["man", "horse", "beach", "sunset"]),
        ("stock photo of a big old red car parked in front of 2 houses", ["old red car", "houses"]),
        ("a woman's hat and the dog's ball", ["woman's hat", "dog's ball"]),
        ("close-up view of a yellow flower-pot", ["yellow flower-pot"]),
        ("speed boat on a lake", ["speed boat", "lake"]),
        ("a cat and a cat", ["cat"]),
        ("", []),
    ],
)
def test_caption_noun_phrases_follow_the_documented_rules(caption, expected):
    assert caption_noun_phrases(caption) == expected


def test_caption_tagger_caps_tags_per_image():
    samples = [SampleInfo("1", "a.jpg", "a dog, a cat, a bird and a fish"), SampleInfo("2", "b.jpg", "")]
    assert CaptionTagger(max_tags=2).tag(samples, None) == [["dog", "cat"], []]


def test_file_tagger_reads_tags_by_id_and_gives_none_to_absent_ids(tmp_path):
    path = tmp_path / "tags.jsonl"
    path.write_text('{"id": "1", "tags": ["Dog ", "grass", " "]}\n\n{"id": "2", "tags": []}\n')
    tagger = FileTagger(path, max_tags=5)
    samples = [SampleInfo("1", "a.jpg", ""), SampleInfo("3", "c.jpg", "")]
    assert tagger.tag(samples, None) == [["dog", "grass"], []]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": "1", "tags": ["a"]}\nnot json\n', "line 2: not JSON"),
        ('{"tags": ["a"]}\n', "line 1: expected an object with a string 'id'"),
        ('{"id": "1", "tags": "dog"}\n', "line 1: 'tags' must be a list of strings"),
        ('{"id": "1", "tags": []}\n{"id": "1", "tags": []}\n', "line 2: id 1 appears twice"),
    ],
)
def test_tag_file_errors_name_the_line(tmp_path, content, message):
    path = tmp_path / "tags.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_tag_file(path)


def test_multilabel_tags_keep_entries_at_or_above_threshold_best_first():
    similarity = torch.tensor([[0.1, 0.30, 0.25, 0.40], [0.0, 0.1, 0.2, 0.24]])
    vocabulary = ["sky", "dog", "grass", "ball"]
    assert multilabel_tags(similarity, vocabulary, 0.25, max_tags=10) == [["ball", "dog", "grass"], []]
    assert multilabel_tags(similarity, vocabulary, 0.25, max_tags=2) == [["ball", "dog"], []]
