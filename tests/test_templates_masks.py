"""Label masks of the newer families' templates, token by token, with each family's real tokenizer type.

Each sample is split into its runs of masked and supervised tokens; every run is decoded and must
equal the hand-written text: the supervised runs are exactly each answer and its turn-end token.
"""

from __future__ import annotations

import pytest

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.tiny_tokenizers import SAMPLE_CORPUS, build_tiny_tokenizer
from llava.train.preprocess import LabelAlignmentError, preprocess_multimodal, tokenize_conversation

TEMPLATE_TOKENIZER = {"llama_3": "llama3", "qwen_2": "qwen2", "gemma": "gemma", "phi3": "phi3"}
TURNS = [
    {"from": "human", "value": "What is in the picture?\n<image>"},
    {"from": "gpt", "value": "a red box and a blue box"},
    {"from": "human", "value": "Which box is on the left?"},
    {"from": "gpt", "value": "the red box"},
]
LLAVA_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)
# (supervised?, decoded text) per run; <image> marks IMAGE_TOKEN_INDEX.
EXPECTED_RUNS = {
    "llama_3": [
        (False, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                + LLAVA_SYSTEM + "<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is in the picture?<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n"),
        (True, "a red box and a blue box<|eot_id|>"),
        (False, "<|start_header_id|>user<|end_header_id|>\n\nWhich box is on the left?<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n"),
        (True, "the red box<|eot_id|>"),
    ],
    "qwen_2": [
        (False, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\n<image>\nWhat is in the picture?<|im_end|>\n<|im_start|>assistant\n"),
        (True, "a red box and a blue box<|im_end|>"),
        (False, "\n<|im_start|>user\nWhich box is on the left?<|im_end|>\n<|im_start|>assistant\n"),
        (True, "the red box<|im_end|>"),
        (False, "\n"),
    ],
    "gemma": [
        (False, "<bos><start_of_turn>user\n<image>\nWhat is in the picture?<end_of_turn>\n"
                "<start_of_turn>model\n"),
        (True, "a red box and a blue box<end_of_turn>"),
        (False, "\n<start_of_turn>user\nWhich box is on the left?<end_of_turn>\n<start_of_turn>model\n"),
        (True, "the red box<end_of_turn>"),
        (False, "\n"),
    ],
    "phi3": [
        (False, "<|user|>\n<image>\nWhat is in the picture?<|end|>\n<|assistant|>\n"),
        (True, "a red box and a blue box<|end|>"),
        (False, "\n<|user|>\nWhich box is on the left?<|end|>\n<|assistant|>\n"),
        (True, "the red box<|end|>"),
        (False, "\n"),
    ],
}
TURN_END = {"llama_3": "<|eot_id|>", "qwen_2": "<|im_end|>", "gemma": "<end_of_turn>", "phi3": "<|end|>"}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("template_tokenizers")
    kinds = set(TEMPLATE_TOKENIZER.values())
    return {kind: build_tiny_tokenizer(kind, root / kind, SAMPLE_CORPUS) for kind in kinds}


def decode_runs(tokenizer, input_ids, labels) -> list[tuple[bool, str]]:
    """(supervised?, text) for each run of equally masked tokens; labels must equal the ids where set."""
    runs: list[tuple[bool, list[int]]] = []
    for token, label in zip(input_ids.tolist(), labels.tolist(), strict=True):
        supervised = label != IGNORE_INDEX
        assert not supervised or label == token
        if not runs or runs[-1][0] != supervised:
            runs.append((supervised, []))
        runs[-1][1].append(token)
    return [(supervised, decode_with_images(tokenizer, ids)) for supervised, ids in runs]


def decode_with_images(tokenizer, ids: list[int]) -> str:
    pieces, chunk = [], []
    for token in [*ids, None]:
        if token is None or token == IMAGE_TOKEN_INDEX:
            pieces.append(tokenizer.decode(chunk))
            chunk = []
            if token is not None:
                pieces.append("<image>")
        else:
            chunk.append(token)
    return "".join(pieces)


def tokenize(name, tokenizers, turns, *, has_image, sample_id="s1"):
    tokenizer = tokenizers[TEMPLATE_TOKENIZER[name]]
    turns = preprocess_multimodal(turns) if has_image else turns
    template = conv_templates[name]
    return tokenize_conversation(turns, tokenizer, template, has_image=has_image, sample_id=sample_id)


@pytest.mark.parametrize("name", sorted(EXPECTED_RUNS))
def test_image_sample_masks_everything_but_the_answers_and_their_turn_end(name, tokenizers):
    input_ids, labels = tokenize(name, tokenizers, TURNS, has_image=True)
    assert decode_runs(tokenizers[TEMPLATE_TOKENIZER[name]], input_ids, labels) == EXPECTED_RUNS[name]
    assert int((input_ids == IMAGE_TOKEN_INDEX).sum()) == 1


@pytest.mark.parametrize("name", sorted(EXPECTED_RUNS))
def test_text_only_sample_has_the_same_runs_without_the_image(name, tokenizers):
    turns = [dict(turn, value=turn["value"].replace("\n<image>", "")) for turn in TURNS]
    input_ids, labels = tokenize(name, tokenizers, turns, has_image=False)
    expected = [(s, text.replace("<image>\n", "")) for s, text in EXPECTED_RUNS[name]]
    assert decode_runs(tokenizers[TEMPLATE_TOKENIZER[name]], input_ids, labels) == expected


@pytest.mark.parametrize("name", sorted(EXPECTED_RUNS))
def test_each_supervised_run_ends_on_the_turn_end_id_and_bos_appears_once_at_most(name, tokenizers):
    tokenizer = tokenizers[TEMPLATE_TOKENIZER[name]]
    input_ids, labels = tokenize(name, tokenizers, TURNS, has_image=True)
    end_id = tokenizer.convert_tokens_to_ids(TURN_END[name])
    supervised = (labels != IGNORE_INDEX).tolist()
    run_ends = [i for i, s in enumerate(supervised) if s and not (supervised + [False])[i + 1]]
    assert [int(labels[i]) for i in run_ends] == [end_id, end_id]
    bos_count = input_ids.tolist().count(tokenizer.bos_token_id) if tokenizer.bos_token_id is not None else 0
    assert bos_count == (1 if name in ("llama_3", "gemma") else 0)


@pytest.mark.parametrize("name", sorted(EXPECTED_RUNS))
def test_answer_that_merges_with_the_header_is_an_error_naming_the_sample(name, tokenizers):
    # The answer's leading newline joins the header's newline(s) into one token in every family's
    # vocabulary: the supervision boundary would fall inside that token.
    turns = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "\nfoo"}]
    with pytest.raises(LabelAlignmentError, match="sample bad-42: a supervision boundary falls inside"):
        tokenize(name, tokenizers, turns, has_image=False, sample_id="bad-42")
