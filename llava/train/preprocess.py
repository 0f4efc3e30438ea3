"""LLaVA conversation turns → token ids and a label mask that supervises only the answers.

Upstream derives the mask from the lengths of separately tokenised rounds and, when the
arithmetic is off by a token, masks the whole sample with a printed warning. Here the
mask comes from the tokens themselves: the prompt is tokenised up to each point where
supervision starts or stops, each of those prefixes must be an exact prefix of the full
prompt's tokens, and the token count of the prefix is the boundary. Any disagreement is
a `LabelAlignmentError` naming the sample, never a silently masked sample.
"""
from __future__ import annotations

from typing import Any

import torch

from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_TOKEN,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
)
from llava.conversation import Conversation, SeparatorStyle
from llava.mm_utils import tokenizer_image_token

_SPEAKER_TO_ROLE_INDEX = {"human": 0, "gpt": 1}
_CHAT_STYLES = (SeparatorStyle.TWO, SeparatorStyle.LLAMA_2, SeparatorStyle.MPT, SeparatorStyle.ROLE_HEADER)


class LabelAlignmentError(ValueError):
    """The tokens of a sample's prompt and its supervised spans do not line up."""


def preprocess_multimodal(
    conversations: list[dict],
    *,
    is_multimodal: bool = True,
    mm_use_im_start_end: bool = False,
    use_mmtag: bool = False,
) -> list[dict]:
    """Normalise where `<image>` sits in each turn, as upstream's training data expects.

    In every turn whose value contains `<image>`, the token is removed and put back at the
    front as `"<image>\\n" + rest.strip()` (just `"<image>"` when nothing else is left).
    `use_mmtag` (templates whose version contains "mmtag") wraps it as
    `<Image><image></Image>`; `mm_use_im_start_end` wraps it as `<im_start><image><im_end>`.
    Returns new turn dicts; the input is not modified. With `is_multimodal=False` the
    turns are returned unchanged (as copies).
    """
    if not is_multimodal:
        return [dict(turn) for turn in conversations]
    image_replacement = DEFAULT_IMAGE_TOKEN
    if mm_use_im_start_end:
        image_replacement = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
    normalised = []
    for turn in conversations:
        value = turn["value"]
        if DEFAULT_IMAGE_TOKEN in value:
            rest = value.replace(DEFAULT_IMAGE_TOKEN, "").strip()
            value = f"{DEFAULT_IMAGE_TOKEN}\n{rest}".strip()
            if use_mmtag:
                value = value.replace(DEFAULT_IMAGE_TOKEN, f"<Image>{DEFAULT_IMAGE_TOKEN}</Image>")
        value = value.replace(DEFAULT_IMAGE_TOKEN, image_replacement)
        normalised.append({**turn, "value": value})
    return normalised


def tokenize_conversation(
    conversations: list[dict],
    tokenizer: Any,
    template: Conversation,
    *,
    has_image: bool,
    sample_id: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and labels for one sample; no truncation.

    `conversations` are LLaVA JSON turns `{"from": "human"|"gpt", "value": str}` after
    `preprocess_multimodal`. A leading non-human turn is dropped (as upstream does); the
    rest must alternate human, gpt, human, ...

    - PLAIN (pretraining): exactly one human turn containing `<image>` and one gpt turn.
      The prompt is `"<image>" + caption + template.sep`; BOS and the image index are
      masked, the caption and the trailing separator are supervised.
    - TWO, LLAMA_2, MPT: the prompt is `template.get_prompt()` over the turns; each
      assistant answer with its closing separator (`</s>` for v1) is supervised,
      everything else (system, user turns, role markers) is masked.
    - ROLE_HEADER (llama_3, qwen_2, gemma, phi3): each answer and its turn-end token
      (`<|eot_id|>`, `<|im_end|>`, `<end_of_turn>`, `<|end|>`) are supervised; headers, the
      newline after the turn end, system and user turns are masked.

    With `has_image` (and always for PLAIN) the prompt goes through `tokenizer_image_token`
    (each `<image>` → `IMAGE_TOKEN_INDEX`, always masked), otherwise through the tokenizer
    directly, as upstream does for text-only samples.

    Returns `(input_ids, labels)`, both `(L,)` int64, labels `IGNORE_INDEX` where masked.
    Raises `LabelAlignmentError` (message names `sample_id`) when a supervision boundary
    falls inside a token or nothing is supervised; `ValueError` for malformed turns or an
    unsupported template style.
    """
    turns = _alternating_turns(conversations, sample_id)
    # Plain samples always carry an image: its placeholder must become IMAGE_TOKEN_INDEX.
    splice_image_tokens = has_image or template.sep_style is SeparatorStyle.PLAIN
    if template.sep_style is SeparatorStyle.PLAIN:
        prompt, spans = _plain_prompt_and_spans(turns, template, sample_id)
    elif template.sep_style in _CHAT_STYLES:
        prompt, spans = _chat_prompt_and_spans(turns, template, sample_id)
    else:
        raise ValueError(
            f"sample {sample_id}: template style {template.sep_style.name} (version "
            f"{template.version!r}) is not supported for training; use plain, v1, llama_2, mpt or a "
            "ROLE_HEADER template (llama_3, qwen_2, qwen_2_5, gemma, phi3)"
        )

    def encode(text: str) -> list[int]:
        if splice_image_tokens:
            return tokenizer_image_token(text, tokenizer)
        return tokenizer(text).input_ids

    input_ids = encode(prompt)
    labels = [IGNORE_INDEX] * len(input_ids)
    boundary_cache: dict[int, int] = {len(prompt): len(input_ids)}
    for char_start, char_end in spans:
        token_start, token_end = (
            _token_boundary(prompt, char, input_ids, encode, boundary_cache, sample_id)
            for char in (char_start, char_end)
        )
        labels[token_start:token_end] = input_ids[token_start:token_end]
    input_tensor = torch.tensor(input_ids, dtype=torch.long)
    label_tensor = torch.tensor(labels, dtype=torch.long)
    label_tensor[input_tensor == IMAGE_TOKEN_INDEX] = IGNORE_INDEX
    if bool((label_tensor == IGNORE_INDEX).all()):
        raise LabelAlignmentError(
            f"sample {sample_id}: no token is supervised (answers {[prompt[a:b] for a, b in spans]!r})"
        )
    return input_tensor, label_tensor


def _alternating_turns(conversations: list[dict], sample_id: str | None) -> list[tuple[int, str]]:
    """`(role_index, value)` per turn (0 human, 1 gpt), leading non-human turn dropped."""
    turns = []
    for position, turn in enumerate(conversations):
        speaker = turn.get("from")
        if speaker not in _SPEAKER_TO_ROLE_INDEX:
            raise ValueError(f"sample {sample_id}: turn {position} has unknown 'from' {speaker!r}")
        if not isinstance(turn.get("value"), str):
            raise ValueError(f"sample {sample_id}: turn {position} has no string 'value'")
        turns.append((_SPEAKER_TO_ROLE_INDEX[speaker], turn["value"]))
    if turns and turns[0][0] != 0:
        turns = turns[1:]
    for position, (role_index, _) in enumerate(turns):
        if role_index != position % 2:
            raise ValueError(
                f"sample {sample_id}: turns must alternate human/gpt, but turn {position} "
                f"(after dropping a leading gpt turn) is from {'gpt' if role_index else 'human'}"
            )
    return turns


def _plain_prompt_and_spans(
    turns: list[tuple[int, str]], template: Conversation, sample_id: str | None
) -> tuple[str, list[tuple[int, int]]]:
    if len(turns) != 2 or DEFAULT_IMAGE_TOKEN not in turns[0][1]:
        raise ValueError(
            f"sample {sample_id}: the plain template needs one human turn containing "
            f"{DEFAULT_IMAGE_TOKEN} and one gpt turn, got {len(turns)} turns"
        )
    # Pretraining learns captioning: the question text is dropped, only the image stays.
    prompt = DEFAULT_IMAGE_TOKEN + turns[1][1] + template.sep
    return prompt, [(len(DEFAULT_IMAGE_TOKEN), len(prompt))]


def _chat_prompt_and_spans(
    turns: list[tuple[int, str]], template: Conversation, sample_id: str | None
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered prompt and the character span `[start, end)` of each supervised answer.

    The template renders and locates its answers itself (`Conversation.get_prompt_and_answer_spans`).
    """
    conv = template.copy()
    conv.messages = []
    for role_index, value in turns:
        conv.append_message(conv.roles[role_index], value)
    try:
        return conv.get_prompt_and_answer_spans()
    except ValueError as err:
        raise LabelAlignmentError(f"sample {sample_id}: {err}") from err


def _token_boundary(
    prompt: str,
    char_index: int,
    input_ids: list[int],
    encode: Any,
    cache: dict[int, int],
    sample_id: str | None,
) -> int:
    """Number of tokens of `input_ids` that exactly cover `prompt[:char_index]`."""
    if char_index not in cache:
        prefix_ids = encode(prompt[:char_index])
        if input_ids[: len(prefix_ids)] != prefix_ids:
            raise LabelAlignmentError(
                f"sample {sample_id}: a supervision boundary falls inside a token: the tokens of "
                f"...{prompt[max(0, char_index - 30):char_index]!r} are not a prefix of the tokens of "
                f"the full prompt (which continues {prompt[char_index:char_index + 30]!r}...)"
            )
        cache[char_index] = len(prefix_ids)
    return cache[char_index]
