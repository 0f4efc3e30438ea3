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


def test_registry_has_exactly_upstreams_template_names():
    assert set(conv_templates) == set(GOLDEN["templates"])


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
