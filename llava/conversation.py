"""Chat templates: how a list of (role, text) turns becomes one prompt string.

Names, fields and renderings follow upstream LLaVA 1.2.2 byte for byte, because
checkpoints were trained on exactly these strings and eval harnesses build prompts
through `conv_templates[name].copy()`.

The templates of newer LLM families (`llama_3`, `qwen_2`, `qwen_2_5`, `gemma`, `phi3`) use the
ROLE_HEADER style: each turn is a role header, its text and the family's turn-end token
(`sep`), then `sep2` (a newline for ChatML, Gemma and Phi-3). They render the hub chat templates
without the BOS token, which the tokenizer adds (the string holds what is tokenised).
"""
from __future__ import annotations

import dataclasses
from enum import Enum, auto
from typing import Any


class SeparatorStyle(Enum):
    """How turns are joined (see `Conversation.get_prompt`)."""

    SINGLE = auto()
    TWO = auto()
    MPT = auto()
    PLAIN = auto()
    LLAMA_2 = auto()
    ROLE_HEADER = auto()


# A message is the turn text, None for "the model answers next", or upstream's gradio
# tuple (text, image, image_mode) of which only the text matters for the prompt.
Message = Any


def message_text(message: Message) -> str | None:
    """The text of a message: the string itself, the first element of a tuple, or None."""
    if isinstance(message, tuple):
        return message[0]
    return message


@dataclasses.dataclass
class Conversation:
    """A chat template plus the turns appended so far.

    `messages` holds mutable `[role, text]` lists so callers can fill in an answer later
    (`conv.messages[1][1] = answer`). `offset` counts the preset example turns at the
    start of `messages` that a UI would hide.

    ROLE_HEADER templates (ours, not upstream's) also read `role_format` (a turn's header,
    `{role}` filled in) and `system_format` (the system turn before its `sep`, `{system}` filled
    in; None for a family without a system turn); `sep` is the turn-end token, `sep2` what
    follows it.
    """

    system: str
    roles: tuple[str, str]
    messages: list[list[Message]]
    offset: int
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: str | None = None
    version: str = "Unknown"
    skip_next: bool = False
    role_format: str = "{role}"
    system_format: str | None = "{system}"

    def get_prompt(self) -> str:
        """Render system prompt and all messages as one string in this template's format.

        A message whose text is None (or empty) renders as the bare role marker, which is
        the generation prompt. PLAIN renders each text followed by its separator; where
        upstream fails because `sep2` is None, `sep` is used for answers as well.
        """
        texts = [(role, message_text(message)) for role, message in self.messages]
        if self.sep_style is SeparatorStyle.SINGLE:
            return self._render_role_colon(texts, (self.sep, self.sep))
        if self.sep_style is SeparatorStyle.TWO:
            return self._render_role_colon(texts, (self.sep, self.sep2))
        if self.sep_style is SeparatorStyle.MPT:
            return self._render_mpt(texts)
        if self.sep_style is SeparatorStyle.LLAMA_2:
            return self._render_llama_2(texts)
        if self.sep_style is SeparatorStyle.PLAIN:
            return self._render_plain(texts)
        if self.sep_style is SeparatorStyle.ROLE_HEADER:
            return self._render_role_header(texts)[0]
        raise ValueError(f"Unknown separator style: {self.sep_style!r}")

    def get_prompt_and_answer_spans(self) -> tuple[str, list[tuple[int, int]]]:
        """The prompt and the character span `[start, end)` of each assistant answer to supervise.

        ROLE_HEADER: the span is the answer text plus the turn-end token (`sep`), recorded while
        rendering, so it cannot drift from the prompt; headers, `sep2` and the system turn stay
        unsupervised (LLaVA-NeXT also supervises the headers and structural tokens: we do not, the
        model never has to produce them, the prompt always supplies them). TWO, LLAMA_2, MPT
        (upstream's): an answer starts where the generation prompt for it ends and stops where the
        prompt rendered through that answer ends; both must be prefixes of the full prompt, as
        upstream's round arithmetic assumes (the answer's closing separator is supervised).
        Raises ValueError for the other styles (nothing to supervise per turn) or a rendering whose
        prefixes are not prefixes of the whole.
        """
        texts = [(role, message_text(message)) for role, message in self.messages]
        if self.sep_style is SeparatorStyle.ROLE_HEADER:
            return self._render_role_header(texts)
        if self.sep_style not in (SeparatorStyle.TWO, SeparatorStyle.LLAMA_2, SeparatorStyle.MPT):
            raise ValueError(
                f"template style {self.sep_style.name} (version {self.version!r}) has no answer spans"
            )
        prompt = self.get_prompt()
        spans = []
        for position, (role, _) in enumerate(texts):
            if role != self.roles[1]:
                continue
            before = self.copy()
            before.messages = before.messages[:position] + [[self.roles[1], None]]
            through = self.copy()
            through.messages = through.messages[: position + 1]
            start, end = before.get_prompt(), through.get_prompt()
            if not (prompt.startswith(start) and prompt.startswith(end)):
                raise ValueError(
                    f"template {self.version!r} does not render turn {position} as a prefix of the whole"
                )
            spans.append((len(start), len(end)))
        return prompt, spans

    def _render_role_colon(self, texts: list[tuple[str, str | None]], seps: tuple[str, str | None]) -> str:
        parts = [self.system, seps[0]]
        for index, (role, text) in enumerate(texts):
            if text:
                parts.append(f"{role}: {text}{seps[index % 2]}")
            else:
                parts.append(f"{role}:")
        return "".join(parts)

    def _render_mpt(self, texts: list[tuple[str, str | None]]) -> str:
        parts = [self.system, self.sep]
        for role, text in texts:
            parts.append(f"{role}{text}{self.sep}" if text else role)
        return "".join(parts)

    def _render_llama_2(self, texts: list[tuple[str, str | None]]) -> str:
        if texts and not texts[0][1]:
            raise ValueError("LLAMA_2 template: the first message must have text")
        parts = []
        for index, (_, text) in enumerate(texts):
            if not text:
                continue
            if index == 0 and self.system:
                text = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n{text}"
            if index % 2 == 0:
                parts.append(f"{self.sep}[INST] {text} [/INST]")
            else:
                parts.append(f" {text} {self.sep2}")
        # The first [INST] opens the prompt without a leading separator (the tokenizer adds BOS).
        return "".join(parts).removeprefix(self.sep)

    def _render_role_header(
        self, texts: list[tuple[str, str | None]]
    ) -> tuple[str, list[tuple[int, int]]]:
        """The prompt and the spans of the assistant answers (text + turn-end token)."""
        after_turn = self.sep2 or ""
        parts: list[str] = []
        if self.system:
            if self.system_format is None:
                raise ValueError(f"template {self.version!r} has no system turn; its system must be empty")
            parts.append(self.system_format.format(system=self.system) + self.sep + after_turn)
        spans = []
        length = sum(map(len, parts))
        for index, (role, text) in enumerate(texts):
            header = self.role_format.format(role=role)
            parts.append(header)
            length += len(header)
            if not text:
                if index != len(texts) - 1:
                    raise ValueError(
                        f"template {self.version!r}: message {index} has no text; only the last message "
                        "may be empty (the generation prompt)"
                    )
                continue
            answer = text + self.sep
            if role == self.roles[1]:
                spans.append((length, length + len(answer)))
            parts.append(answer + after_turn)
            length += len(answer) + len(after_turn)
        return "".join(parts), spans

    def _render_plain(self, texts: list[tuple[str, str | None]]) -> str:
        seps = (self.sep, self.sep if self.sep2 is None else self.sep2)
        parts = [self.system]
        for index, (_, text) in enumerate(texts):
            if text:
                parts.append(text + seps[index % 2])
        return "".join(parts)

    def append_message(self, role: str, message: Message) -> None:
        """Append one turn; `message=None` marks the turn the model is to generate."""
        self.messages.append([role, message])

    def copy(self) -> Conversation:
        """An independent copy: appending to or editing the copy leaves this one unchanged."""
        return dataclasses.replace(self, messages=[list(pair) for pair in self.messages])

    def dict(self) -> dict[str, Any]:
        """A JSON-friendly view (images in tuple messages are dropped, text kept)."""
        return {
            "system": self.system,
            "roles": self.roles,
            "messages": [[role, message_text(message)] for role, message in self.messages],
            "offset": self.offset,
            "sep": self.sep,
            "sep2": self.sep2,
        }


_HUMAN_CHAT_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
_USER_CHAT_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_MMTAG_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant is able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
    "The visual content will be provided with the following format: <Image>visual content</Image>."
)
_LLAMA_2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, "
    "while being safe.  Your answers should not include any harmful, unethical, racist, sexist, "
    "toxic, dangerous, or illegal content. Please ensure that your responses are socially unbiased "
    "and positive in nature.\n\nIf a question does not make any sense, or is not factually coherent, "
    "explain why instead of answering something not correct. If you don't know the answer to a "
    "question, please don't share false information."
)
_LLAVA_LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)
_CHATML_USER = "<|im_start|>user\n"
_CHATML_ASSISTANT = "<|im_start|>assistant\n"

# The one-shot example upstream's v0 template carries (offset 2 hides it in a UI).
_V0_EXAMPLE_QUESTION = "What are the key differences between renewable and non-renewable energy sources?"
_V0_EXAMPLE_ANSWER = (
    "Renewable energy sources are those that can be replenished naturally in a relatively short amount "
    "of time, such as solar, wind, hydro, geothermal, and biomass. Non-renewable energy sources, on the "
    "other hand, are finite and will eventually be depleted, such as coal, oil, and natural gas. Here are "
    "some key differences between renewable and non-renewable energy sources:\n"
    "1. Availability: Renewable energy sources are virtually inexhaustible, while non-renewable energy "
    "sources are finite and will eventually run out.\n"
    "2. Environmental impact: Renewable energy sources have a much lower environmental impact than "
    "non-renewable sources, which can lead to air and water pollution, greenhouse gas emissions, and "
    "other negative effects.\n"
    "3. Cost: Renewable energy sources can be more expensive to initially set up, but they typically "
    "have lower operational costs than non-renewable sources.\n"
    "4. Reliability: Renewable energy sources are often more reliable and can be used in more remote "
    "locations than non-renewable sources.\n"
    "5. Flexibility: Renewable energy sources are often more flexible and can be adapted to different "
    "situations and needs, while non-renewable sources are more rigid and inflexible.\n"
    "6. Sustainability: Renewable energy sources are more sustainable over the long term, while "
    "non-renewable sources are not, and their depletion can lead to economic and social instability.\n"
)

conv_vicuna_v0 = Conversation(
    system=_HUMAN_CHAT_SYSTEM,
    roles=("Human", "Assistant"),
    messages=[["Human", _V0_EXAMPLE_QUESTION], ["Assistant", _V0_EXAMPLE_ANSWER]],
    offset=2,
    sep_style=SeparatorStyle.SINGLE,
    sep="###",
)
conv_vicuna_v1 = Conversation(
    system=_USER_CHAT_SYSTEM,
    roles=("USER", "ASSISTANT"),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
    version="v1",
)
conv_llama_2 = Conversation(
    system=_LLAMA_2_SYSTEM,
    roles=("USER", "ASSISTANT"),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.LLAMA_2,
    sep="<s>",
    sep2="</s>",
    version="llama_v2",
)
conv_llava_llama_2 = dataclasses.replace(conv_llama_2, system=_LLAVA_LLAMA_2_SYSTEM, messages=[])
conv_mistral_instruct = Conversation(
    system="",
    roles=("USER", "ASSISTANT"),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.LLAMA_2,
    sep="",
    sep2="</s>",
    version="llama_v2",
)
conv_chatml_direct = Conversation(
    system="<|im_start|>system\nAnswer the questions.",
    roles=(_CHATML_USER, _CHATML_ASSISTANT),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.MPT,
    sep="<|im_end|>",
    version="mpt",
)
conv_mpt = Conversation(
    system=(
        "<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
        "The assistant gives helpful and honest answers."
    ),
    roles=(_CHATML_USER, _CHATML_ASSISTANT),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.MPT,
    sep="<|im_end|>",
    version="mpt",
)
conv_llava_plain = Conversation(
    system="",
    roles=("", ""),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.PLAIN,
    sep="\n",
)
conv_llava_v0 = Conversation(
    system=_HUMAN_CHAT_SYSTEM,
    roles=("Human", "Assistant"),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.SINGLE,
    sep="###",
)
conv_llava_v0_mmtag = Conversation(
    system=_MMTAG_SYSTEM,
    roles=("Human", "Assistant"),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.SINGLE,
    sep="###",
    version="v0_mmtag",
)
conv_llava_v1 = dataclasses.replace(conv_vicuna_v1, system=_HUMAN_CHAT_SYSTEM, messages=[])
conv_llava_v1_mmtag = dataclasses.replace(
    conv_vicuna_v1, system=_MMTAG_SYSTEM, messages=[], version="v1_mmtag"
)


# The newer families' chat templates (backbones reference, section 4), without BOS.
conv_llama_3 = Conversation(
    system=_LLAVA_LLAMA_2_SYSTEM,  # LLaVA-NeXT's llava_llama_3 system prompt
    roles=("user", "assistant"),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.ROLE_HEADER,
    sep="<|eot_id|>",
    sep2="",
    version="llama_3",
    role_format="<|start_header_id|>{role}<|end_header_id|>\n\n",
    system_format="<|start_header_id|>system<|end_header_id|>\n\n{system}",
)
conv_qwen_2 = Conversation(
    system="You are a helpful assistant.",
    roles=("user", "assistant"),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.ROLE_HEADER,
    sep="<|im_end|>",
    sep2="\n",
    version="qwen_2",
    role_format="<|im_start|>{role}\n",
    system_format="<|im_start|>system\n{system}",
)
conv_qwen_2_5 = dataclasses.replace(
    conv_qwen_2,
    system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    messages=[],
)
conv_gemma = Conversation(
    system="",
    roles=("user", "model"),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.ROLE_HEADER,
    sep="<end_of_turn>",
    sep2="\n",
    version="gemma",
    role_format="<start_of_turn>{role}\n",
    system_format=None,
)
conv_phi3 = Conversation(
    system="",  # Phi-3's hub template has no default system prompt
    roles=("user", "assistant"),
    messages=[],
    offset=0,
    sep_style=SeparatorStyle.ROLE_HEADER,
    sep="<|end|>",
    sep2="\n",
    version="phi3",
    role_format="<|{role}|>\n",
    system_format="<|system|>\n{system}",
)

default_conversation = conv_vicuna_v1

# Aliases point at the same object, as upstream's do; callers must `.copy()` before appending.
conv_templates: dict[str, Conversation] = {
    "default": conv_vicuna_v0,
    "v0": conv_vicuna_v0,
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "llama_2": conv_llama_2,
    "mistral_instruct": conv_mistral_instruct,
    "chatml_direct": conv_chatml_direct,
    "mistral_direct": conv_chatml_direct,
    "plain": conv_llava_plain,
    "v0_plain": conv_llava_plain,
    "llava_v0": conv_llava_v0,
    "v0_mmtag": conv_llava_v0_mmtag,
    "llava_v1": conv_llava_v1,
    "v1_mmtag": conv_llava_v1_mmtag,
    "llava_llama_2": conv_llava_llama_2,
    "mpt": conv_mpt,
    "llama_3": conv_llama_3,
    "qwen_2": conv_qwen_2,
    "qwen_2_5": conv_qwen_2_5,
    "gemma": conv_gemma,
    "phi3": conv_phi3,
}
