"""Chat templates render exactly what upstream LLaVA 1.2.2 rendered (conv_templates.json)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from llava.conversation import Conversation, SeparatorStyle, conv_templates, default_conversation

GOLDEN = json.loads(
    (Path(__file__).parent / "data" / "upstream_golden" / "conv_templates.json").read_text()
)
# How many turns of the golden conversation each recorded rendering used; an odd count
# means an empty assistant turn was appended (the generation prompt).
RENDERING_TURNS = {
    "two_turns": 4,
    "generation_prompt_after_second_question": 3,
    "generation_prompt_first_question": 1,
}
CASES = [
    (name, rendering)
    for name, template in GOLDEN["templates"].items()
    for rendering in RENDERING_TURNS
    if template[rendering]["ok"]
]
USER_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions."
)


def render(template: Conversation, n_turns: int) -> str:
    conv = template.copy()
    for index, turn in enumerate(GOLDEN["conversation"][:n_turns]):
        conv.append_message(conv.roles[index % 2], turn["value"])
    if n_turns % 2:
        conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


NEW_FAMILY_TEMPLATES = {"llama_3", "qwen_2", "qwen_2_5", "gemma", "phi3"}


def test_registry_has_exactly_upstreams_template_names_plus_the_new_families():
    assert set(conv_templates) == set(GOLDEN["templates"]) | NEW_FAMILY_TEMPLATES
    assert not NEW_FAMILY_TEMPLATES & set(GOLDEN["templates"])


@pytest.mark.parametrize("name", sorted(GOLDEN["templates"]))
def test_template_fields_equal_upstream(name):
    expected = GOLDEN["templates"][name]
    template = conv_templates[name]
    assert template.system == expected["system"]
    assert list(template.roles) == expected["roles"]
    assert template.sep_style.name == expected["sep_style"]
    assert template.sep == expected["sep"]
    assert template.sep2 == expected["sep2"]
    assert template.version == expected["version"]
    assert template.offset == expected["offset"]
    assert len(template.messages) == expected["n_preset_messages"]


@pytest.mark.parametrize(("name", "rendering"), CASES)
def test_get_prompt_equals_upstream_rendering_byte_for_byte(name, rendering):
    expected = GOLDEN["templates"][name][rendering]["prompt"]
    assert render(conv_templates[name], RENDERING_TURNS[rendering]) == expected


def test_every_recorded_rendering_is_covered_except_upstreams_plain_errors():
    failing = {
        (name, r) for name, t in GOLDEN["templates"].items() for r in RENDERING_TURNS if not t[r]["ok"]
    }
    assert failing == {
        (name, r)
        for name in ("plain", "v0_plain")
        for r in ("two_turns", "generation_prompt_after_second_question")
    }
    assert len(CASES) == 3 * len(GOLDEN["templates"]) - 4


def test_default_conversation_is_vicuna_v1():
    assert default_conversation.version == GOLDEN["default_conversation_version"]
    assert default_conversation is conv_templates["vicuna_v1"]


def test_vicuna_v1_multi_turn_prompt_by_hand():
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message("USER", "<image>\nWhat is it?")
    conv.append_message("ASSISTANT", "A cat.")
    conv.append_message("USER", "Colour?")
    conv.append_message("ASSISTANT", None)
    assert conv.get_prompt() == (
        USER_SYSTEM + " USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Colour? ASSISTANT:"
    )


def test_plain_renders_each_text_followed_by_newline():
    conv = conv_templates["plain"].copy()
    conv.append_message(conv.roles[0], "<image>")
    conv.append_message(conv.roles[1], "a red box")
    # Upstream raises TypeError here (sep2 is None); answers fall back to sep instead.
    assert conv.get_prompt() == "<image>\na red box\n"


def test_copy_is_independent_and_messages_are_mutable_lists():
    template = conv_templates["v1"]
    conv = template.copy()
    conv.append_message(conv.roles[0], "Q")
    conv.append_message(conv.roles[1], None)
    conv.messages[1][1] = "an answer"
    assert template.messages == []
    assert conv.get_prompt().endswith("USER: Q ASSISTANT: an answer</s>")


def test_tuple_message_renders_its_text_part():
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], ("<image>\nHi", object(), "Pad"))
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt() == USER_SYSTEM + " USER: <image>\nHi ASSISTANT:"
    assert conv.dict()["messages"] == [["USER", "<image>\nHi"], ["ASSISTANT", None]]


def test_dict_lists_the_upstream_keys():
    conv = conv_templates["default"].copy()
    assert conv.dict() == {
        "system": conv.system,
        "roles": ("Human", "Assistant"),
        "messages": [list(m) for m in conv.messages],
        "offset": 2,
        "sep": "###",
        "sep2": None,
    }


def test_llama_2_without_a_first_message_text_is_rejected():
    conv = Conversation(system="", roles=("USER", "ASSISTANT"), messages=[], offset=0,
                        sep_style=SeparatorStyle.LLAMA_2, sep="<s>", sep2="</s>")
    conv.append_message("USER", None)
    with pytest.raises(ValueError, match="first message"):
        conv.get_prompt()


# The newer families' templates, rendered as the hub chat templates render them (BOS left to the
# tokenizer). Two rounds, then the same with a generation prompt after the second question.
U1, A1 = "<image>\nWhat is in the picture?", "a red box and a blue box"
U2, A2 = "Which box is on the left?", "the red box"
LLAVA_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)
FAMILY_RENDERINGS = {
    "llama_3": (
        f"<|start_header_id|>system<|end_header_id|>\n\n{LLAVA_SYSTEM}<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{U1}<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{A1}<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{U2}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        f"{A2}<|eot_id|>",
    ),
    "qwen_2": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{U1}<|im_end|>\n<|im_start|>assistant\n{A1}<|im_end|>\n"
        f"<|im_start|>user\n{U2}<|im_end|>\n<|im_start|>assistant\n",
        f"{A2}<|im_end|>\n",
    ),
    "qwen_2_5": (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{U1}<|im_end|>\n<|im_start|>assistant\n{A1}<|im_end|>\n"
        f"<|im_start|>user\n{U2}<|im_end|>\n<|im_start|>assistant\n",
        f"{A2}<|im_end|>\n",
    ),
    "gemma": (
        f"<start_of_turn>user\n{U1}<end_of_turn>\n<start_of_turn>model\n{A1}<end_of_turn>\n"
        f"<start_of_turn>user\n{U2}<end_of_turn>\n<start_of_turn>model\n",
        f"{A2}<end_of_turn>\n",
    ),
    "phi3": (
        f"<|user|>\n{U1}<|end|>\n<|assistant|>\n{A1}<|end|>\n<|user|>\n{U2}<|end|>\n<|assistant|>\n",
        f"{A2}<|end|>\n",
    ),
}
# The supervised stretch of each answer: its text and the turn-end token, not what follows.
FAMILY_TURN_ENDS = {"llama_3": "<|eot_id|>", "qwen_2": "<|im_end|>", "qwen_2_5": "<|im_end|>",
                    "gemma": "<end_of_turn>", "phi3": "<|end|>"}


def family_chat(name: str, answer2: str | None) -> Conversation:
    conv = conv_templates[name].copy()
    for index, text in enumerate((U1, A1, U2, answer2)):
        conv.append_message(conv.roles[index % 2], text)
    return conv


@pytest.mark.parametrize("name", sorted(FAMILY_RENDERINGS))
def test_family_template_renders_two_rounds_and_the_generation_prompt_as_the_hub_template(name):
    generation_prompt, last_answer = FAMILY_RENDERINGS[name]
    assert family_chat(name, None).get_prompt() == generation_prompt
    assert family_chat(name, A2).get_prompt() == generation_prompt + last_answer


@pytest.mark.parametrize("name", sorted(FAMILY_RENDERINGS))
def test_family_template_answer_spans_are_the_answers_with_their_turn_end(name):
    prompt, spans = family_chat(name, A2).get_prompt_and_answer_spans()
    assert prompt == family_chat(name, A2).get_prompt()
    end = FAMILY_TURN_ENDS[name]
    assert [prompt[a:b] for a, b in spans] == [A1 + end, A2 + end]


@pytest.mark.parametrize("name", sorted(FAMILY_RENDERINGS))
def test_family_template_stop_token_is_its_turn_end(name):
    assert conv_templates[name].sep == FAMILY_TURN_ENDS[name]


def test_gemma_has_no_system_turn_and_refuses_one():
    conv = family_chat("gemma", A2)
    conv.system = "Be brief."
    with pytest.raises(ValueError, match="template 'gemma' has no system turn"):
        conv.get_prompt()


def test_role_header_template_refuses_an_empty_message_before_the_last():
    conv = conv_templates["qwen_2"].copy()
    conv.append_message(conv.roles[0], "Q")
    conv.append_message(conv.roles[1], None)
    conv.append_message(conv.roles[0], "Q2")
    with pytest.raises(ValueError, match="message 1 has no text; only the last message may be empty"):
        conv.get_prompt()


def test_upstream_answer_spans_cover_the_answer_and_its_closing_separator():
    conv = conv_templates["vicuna_v1"].copy()
    for index, text in enumerate(("Q1", "A cat.", "Q2", "A dog.")):
        conv.append_message(conv.roles[index % 2], text)
    prompt, spans = conv.get_prompt_and_answer_spans()
    assert [prompt[a:b] for a, b in spans] == [" A cat.</s>", " A dog.</s>"]


def test_styles_without_answer_spans_say_so():
    with pytest.raises(ValueError, match="template style SINGLE .* has no answer spans"):
        conv_templates["llava_v0"].copy().get_prompt_and_answer_spans()
