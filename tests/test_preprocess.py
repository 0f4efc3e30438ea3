"""Token ids and label masks of training samples, checked against upstream LLaVA's dataset items."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import Conversation, SeparatorStyle, conv_templates
from llava.train.preprocess import LabelAlignmentError, preprocess_multimodal, tokenize_conversation

GOLDEN = Path(__file__).parent / "data" / "upstream_golden"
FIXTURES = GOLDEN / "fixtures-437"
GOLDEN_ITEMS = json.loads((GOLDEN / "preprocess.json").read_text())
GOLDEN_SAMPLE_KEYS = [key for key, item in GOLDEN_ITEMS.items() if "sample" in item]
PRETRAIN = json.loads((FIXTURES / "pretrain.json").read_text())
FINETUNE = json.loads((FIXTURES / "finetune.json").read_text())
ASSISTANT_COLON = ["▁", "A", "S", "S", "I", "S", "T", "A", "N", "T", ":"]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(FIXTURES / "llm")


def tokenize_sample(sample: dict, tokenizer, template_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    turns = preprocess_multimodal(sample["conversations"])
    return tokenize_conversation(
        turns, tokenizer, conv_templates[template_name], has_image="image" in sample, sample_id=sample["id"]
    )


def supervised_runs(labels: torch.Tensor) -> list[list[int]]:
    """The label values of each contiguous supervised stretch, in order."""
    runs: list[list[int]] = []
    previous_masked = True
    for label in labels.tolist():
        if label != IGNORE_INDEX:
            if previous_masked:
                runs.append([])
            runs[-1].append(label)
        previous_masked = label == IGNORE_INDEX
    return runs


def test_golden_has_the_four_upstream_items():
    assert GOLDEN_SAMPLE_KEYS == [
        "pretrain_0_plain",
        "finetune_0_v1_single_turn",
        "finetune_1_v1_multi_turn",
        "finetune_24_v1_text_only",
    ]


@pytest.mark.parametrize("key", GOLDEN_SAMPLE_KEYS)
def test_ids_and_labels_equal_upstream(key, tokenizer):
    item = GOLDEN_ITEMS[key]
    data = PRETRAIN if item["data_file"] == "pretrain.json" else FINETUNE
    assert data[item["index"]] == item["sample"]
    input_ids, labels = tokenize_sample(item["sample"], tokenizer, item["version"])
    expected = torch.load(GOLDEN / "preprocess.pt", weights_only=True)[key]
    assert input_ids.dtype == labels.dtype == torch.long
    assert torch.equal(input_ids, expected["input_ids"])
    assert torch.equal(labels, expected["labels"])


@pytest.mark.parametrize("sample", PRETRAIN, ids=[s["id"] for s in PRETRAIN])
def test_every_pretrain_sample_supervises_exactly_its_caption_and_newline(sample, tokenizer):
    input_ids, labels = tokenize_sample(sample, tokenizer, "plain")
    assert input_ids[:2].tolist() == [tokenizer.bos_token_id, IMAGE_TOKEN_INDEX]
    assert labels[:2].tolist() == [IGNORE_INDEX, IGNORE_INDEX]
    (caption,) = supervised_runs(labels)
    assert tokenizer.decode(caption) == sample["conversations"][1]["value"] + "\n"


@pytest.mark.parametrize("sample", FINETUNE, ids=[s["id"] for s in FINETUNE])
def test_every_finetune_sample_supervises_exactly_its_answers_with_eos(sample, tokenizer):
    input_ids, labels = tokenize_sample(sample, tokenizer, "v1")
    answers = [turn["value"] + "</s>" for turn in sample["conversations"] if turn["from"] == "gpt"]
    assert [tokenizer.decode(run) for run in supervised_runs(labels)] == answers
    assert (IMAGE_TOKEN_INDEX in input_ids.tolist()) == ("image" in sample)


def test_single_turn_v1_masks_up_to_the_assistant_colon_token_by_token(tokenizer):
    input_ids, labels = tokenize_sample(FINETUNE[0], tokenizer, "v1")
    tokens = tokenizer.convert_ids_to_tokens([max(i, 0) for i in input_ids.tolist()])
    first = int((labels != IGNORE_INDEX).nonzero()[0])
    assert first == 161 and len(input_ids) == 178
    assert tokens[first - len(ASSISTANT_COLON):first] == ASSISTANT_COLON
    assert (labels[:first] == IGNORE_INDEX).all()
    assert tokens[first:] == [
        "▁a", "▁", "y", "e", "l", "l", "o", "w", "▁box", "▁and", "▁a", "▁b", "l", "u", "e", "▁box", "</s>"
    ]
    assert torch.equal(labels[first:], input_ids[first:])


def test_multi_turn_v1_masks_the_second_question_and_supervises_both_answers(tokenizer):
    input_ids, labels = tokenize_sample(FINETUNE[1], tokenizer, "v1")
    supervised = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
    assert supervised == list(range(161, 176)) + list(range(208, 216))
    tokens = tokenizer.convert_ids_to_tokens(input_ids[176:208].tolist())
    # The second round opens right after </s> with no "▁" (transformers 5 / legacy=False).
    assert tokens[:5] == ["U", "S", "E", "R", ":"]
    assert tokens[-len(ASSISTANT_COLON) + 1:] == ASSISTANT_COLON[1:]
    assert tokenizer.convert_ids_to_tokens(input_ids[208:].tolist()) == [
        "▁a", "▁", "g", "re", "e", "n", "▁box", "</s>"
    ]


def test_text_only_v1_has_no_image_index_and_supervises_blue_eos(tokenizer):
    sample = FINETUNE[24]
    assert "image" not in sample
    input_ids, labels = tokenize_sample(sample, tokenizer, "v1")
    assert IMAGE_TOKEN_INDEX not in input_ids.tolist()
    assert tokenizer.convert_ids_to_tokens(input_ids[labels != IGNORE_INDEX].tolist()) == [
        "▁b", "l", "u", "e", "</s>"
    ]
    assert (labels[:163] == IGNORE_INDEX).all() and len(input_ids) == 168


def test_boundary_inside_a_token_raises_with_the_sample_id(tokenizer):
    # ">\n" is one piece of the fixture vocabulary: a role ending in ">" followed by an answer
    # starting with "\n" puts the supervision boundary inside that token.
    template = Conversation(system="", roles=("<user>", "<bot>"), messages=[], offset=0,
                            sep_style=SeparatorStyle.MPT, sep="</s>")
    turns = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "\nhello"}]
    with pytest.raises(LabelAlignmentError, match="sample crafted-7: a supervision boundary falls inside"):
        tokenize_conversation(turns, tokenizer, template, has_image=False, sample_id="crafted-7")


@pytest.mark.parametrize(
    "turns",
    [
        [{"from": "human", "value": "hi"}, {"from": "gpt", "value": ""}],
        [{"from": "human", "value": "hi"}],
    ],
    ids=["empty-answer", "no-answer"],
)
def test_sample_without_supervised_tokens_raises(turns, tokenizer):
    with pytest.raises(LabelAlignmentError, match="sample s9: no token is supervised"):
        tokenize_conversation(turns, tokenizer, conv_templates["v1"], has_image=False, sample_id="s9")


def test_leading_gpt_turn_is_dropped(tokenizer):
    turns = [{"from": "gpt", "value": "ignored"}, *FINETUNE[24]["conversations"]]
    template = conv_templates["v1"]
    with_leading = tokenize_conversation(turns, tokenizer, template, has_image=False)
    without = tokenize_conversation(FINETUNE[24]["conversations"], tokenizer, template, has_image=False)
    assert all(torch.equal(a, b) for a, b in zip(with_leading, without, strict=True))


def test_non_alternating_turns_are_rejected_with_the_sample_id(tokenizer):
    turns = [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]
    with pytest.raises(ValueError, match="sample bad-3: turns must alternate"):
        tokenize_conversation(turns, tokenizer, conv_templates["v1"], has_image=False, sample_id="bad-3")


def test_unknown_speaker_is_rejected(tokenizer):
    with pytest.raises(ValueError, match="sample x: turn 0 has unknown 'from' 'system'"):
        tokenize_conversation([{"from": "system", "value": "a"}], tokenizer, conv_templates["v1"],
                              has_image=False, sample_id="x")


def test_plain_needs_an_image_turn_and_a_caption(tokenizer):
    turns = [{"from": "human", "value": "no image here"}, {"from": "gpt", "value": "a box"}]
    with pytest.raises(ValueError, match="sample p1: the plain template needs"):
        tokenize_conversation(turns, tokenizer, conv_templates["plain"], has_image=True, sample_id="p1")


def test_single_style_templates_are_refused_for_training(tokenizer):
    turns = FINETUNE[24]["conversations"]
    with pytest.raises(ValueError, match="template style SINGLE"):
        tokenize_conversation(turns, tokenizer, conv_templates["llava_v0"], has_image=False, sample_id="t")


def test_llama_2_supervises_answer_space_and_eos(tokenizer):
    turns = [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "a box"}]
    template = conv_templates["llava_llama_2"]
    input_ids, labels = tokenize_conversation(turns, tokenizer, template, has_image=True)
    assert tokenizer.convert_ids_to_tokens(input_ids[labels != IGNORE_INDEX].tolist()) == [
        "▁a", "▁box", "▁", "</s>"
    ]
    assert tokenizer.convert_ids_to_tokens(input_ids[-5:-4].tolist()) == ["<0x5D>"]  # the "]" of [/INST]


def test_mpt_supervises_answer_and_im_end(tokenizer):
    turns = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "a box"},
             {"from": "human", "value": "more"}, {"from": "gpt", "value": "the box"}]
    _, labels = tokenize_conversation(turns, tokenizer, conv_templates["mpt"], has_image=False)
    assert [tokenizer.decode(run) for run in supervised_runs(labels)] == [
        "a box<|im_end|>", "the box<|im_end|>"
    ]


def test_preprocess_multimodal_moves_the_image_token_to_the_front():
    turns = [{"from": "human", "value": "What is this? <image>"}, {"from": "gpt", "value": "a box"}]
    moved = preprocess_multimodal(turns)
    assert moved == [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "a box"}]
    assert turns[0]["value"] == "What is this? <image>"  # input untouched


def test_preprocess_multimodal_variants():
    turns = [{"from": "human", "value": "<image>"}]
    assert preprocess_multimodal(turns)[0]["value"] == "<image>"
    assert preprocess_multimodal(turns, mm_use_im_start_end=True)[0]["value"] == "<im_start><image><im_end>"
    tagged = preprocess_multimodal([{"from": "human", "value": "Hi <image>"}], use_mmtag=True)
    assert tagged[0]["value"] == "<Image><image></Image>\nHi"
    assert preprocess_multimodal([{"from": "human", "value": "Hi <image>"}], is_multimodal=False) == [
        {"from": "human", "value": "Hi <image>"}
    ]
