"""Batched generation for LLaVA checkpoints: many prompts (each with 0..n images) → answers.

Prompts are already rendered by a chat template (this module knows no templates). Rows of a
batch are left-padded with an attention mask, so a prompt's greedy answer does not depend on
which other prompts share its batch: batched greedy output equals one-at-a-time output token
for token. Answers are cut at the first EOS and at the first stop string. A stop string that is
one special token of the tokenizer (a family template's turn end: `<|eot_id|>`, `<|im_end|>`,
`<end_of_turn>`, `<|end|>`) ends generation like EOS does, and is cut from the token ids too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from PIL import Image
from transformers import StoppingCriteriaList

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.mm_utils import KeywordsStoppingCriteria, process_images, tokenizer_image_token
from llava.model.llava_arch import LlavaMetaForCausalLM


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings with upstream's meaning: `temperature == 0` is greedy (or beam search)."""

    temperature: float = 0.0
    top_p: float | None = None
    num_beams: int = 1
    max_new_tokens: int = 128
    stop_strings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if any(not stop for stop in self.stop_strings):
            raise ValueError(f"stop strings must be non-empty, got {self.stop_strings!r}")

    def generate_kwargs(self) -> dict:
        """Keyword arguments for `model.generate` (sampling knobs only when sampling)."""
        kwargs = {"num_beams": self.num_beams, "max_new_tokens": self.max_new_tokens, "use_cache": True}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
            if self.top_p is not None:
                kwargs["top_p"] = self.top_p
        else:
            # No temperature/top_p when greedy: transformers warns about unused sampling knobs.
            kwargs["do_sample"] = False
        return kwargs


def left_pad(sequences: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D id tensors, padding on the left → `(ids (B, L) long, attention_mask (B, L) bool)`."""
    if not sequences:
        raise ValueError("left_pad needs at least one sequence")
    longest = max(seq.shape[0] for seq in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        if seq.shape[0]:
            ids[row, -seq.shape[0]:] = seq
            mask[row, -seq.shape[0]:] = True
    return ids, mask


def trim_at_stop_strings(text: str, stop_strings: Sequence[str]) -> str:
    """`text` cut before the earliest occurrence of any stop string, then stripped of whitespace."""
    cut = len(text)
    for stop in stop_strings:
        position = text.find(stop)
        if position != -1:
            cut = min(cut, position)
    return text[:cut].strip()


def _pad_token_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; cannot pad a batch")
    return tokenizer.eos_token_id


def stop_token_ids(tokenizer, stop_strings: Sequence[str]) -> list[int]:
    """The ids that end an answer: EOS, then each stop string that is one special token, in order."""
    special_ids = {index for index, token in tokenizer.added_tokens_decoder.items() if token.special}
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    for stop in stop_strings:
        encoded = tokenizer(stop, add_special_tokens=False).input_ids
        if len(encoded) == 1 and encoded[0] in special_ids and encoded[0] not in ids:
            ids.append(encoded[0])
    return ids


def _strip_finished(row: list[int], stop_ids: Sequence[int], pad_id: int) -> list[int]:
    """New tokens up to (not including) the first stop id; trailing pads of a row that stopped early go."""
    cut = min((row.index(stop) for stop in stop_ids if stop in row), default=len(row))
    row = row[:cut]
    while row and row[-1] == pad_id:
        row = row[:-1]
    return row


@torch.no_grad()
def generate_token_ids(
    model,
    tokenizer,
    input_ids: Sequence[torch.Tensor],
    pixel_values: Sequence[torch.Tensor | None],
    image_sizes: Sequence[Sequence[tuple[int, int]]],
    settings: GenerationSettings,
    *,
    streamer=None,
) -> list[list[int]]:
    """Generate for ONE batch; returns each row's new token ids (EOS, stop token and padding removed).

    `input_ids`: per row a 1-D id tensor with IMAGE_TOKEN_INDEX where images go.
    `pixel_values`: per row `(n_i, 3, H, W)` for its n_i images, or None for a text-only row.
    `image_sizes`: per row the `(width, height)` px of its images (empty for text-only).
    `streamer`: a transformers streamer (batch of one only), e.g. `TextStreamer`.
    """
    if not len(input_ids) == len(pixel_values) == len(image_sizes):
        raise ValueError(
            f"input_ids ({len(input_ids)}), pixel_values ({len(pixel_values)}) and image_sizes "
            f"({len(image_sizes)}) must have one entry per row"
        )
    pad_id = _pad_token_id(tokenizer)
    ids, mask = left_pad(input_ids, pad_id)
    device = model.device
    present = [pixels for pixels in pixel_values if pixels is not None]
    image_kwargs = {}
    if present:  # only then: a plain language model's generate() rejects an `images` argument
        image_kwargs = {
            "images": torch.cat(present).to(device=device, dtype=model.dtype),
            "image_sizes": [size for row in image_sizes for size in row],
        }
    stopping = None
    if settings.stop_strings:
        # Generation from embeddings returns only new tokens, so the criterion's prompt is empty.
        empty_prompt = torch.zeros((ids.shape[0], 0), dtype=torch.long)
        stopping = StoppingCriteriaList(
            [KeywordsStoppingCriteria(list(settings.stop_strings), tokenizer, empty_prompt)]
        )
    stop_ids = stop_token_ids(tokenizer, settings.stop_strings)
    output = model.generate(
        ids.to(device),
        attention_mask=mask.to(device),
        **image_kwargs,
        pad_token_id=pad_id,
        eos_token_id=stop_ids or None,
        stopping_criteria=stopping,
        streamer=streamer,
        **settings.generate_kwargs(),
    )
    if not isinstance(model, LlavaMetaForCausalLM):
        # A plain language model generates from ids and returns the prompt in front; LLaVA does not.
        output = output[:, ids.shape[1] :]
    return [_strip_finished(row, stop_ids, pad_id) for row in output.tolist()]


def decode_answers(tokenizer, token_ids: Sequence[list[int]], stop_strings: Sequence[str] = ()) -> list[str]:
    """Decode new-token rows (special tokens skipped), cut at stop strings and stripped."""
    texts = tokenizer.batch_decode(list(token_ids), skip_special_tokens=True)
    return [trim_at_stop_strings(text, stop_strings) for text in texts]


def _as_image_list(images: Image.Image | Sequence[Image.Image] | None) -> list[Image.Image]:
    if images is None:
        return []
    if isinstance(images, Image.Image):
        return [images]
    return list(images)


def encode_images(
    images: Sequence[Image.Image], image_processor, image_aspect_ratio: str | None
) -> torch.Tensor | None:
    """PIL images of one prompt → `(n, 3, H, W)` pixel values (None when there are none)."""
    if not images:
        return None
    if image_processor is None:
        raise ValueError("images were given but the model has no image processor (not a multimodal model)")
    config = SimpleNamespace(image_aspect_ratio=image_aspect_ratio)
    return process_images([image.convert("RGB") for image in images], image_processor, config)


def generate_batch_token_ids(
    model,
    tokenizer,
    prompts: Sequence[str],
    images: Sequence[Image.Image | Sequence[Image.Image] | None],
    image_processor,
    settings: GenerationSettings,
    *,
    batch_size: int = 8,
) -> list[list[int]]:
    """New token ids (EOS and padding removed) for every rendered prompt, in the order of `prompts`.

    `images[i]` is the image (or list of images) for `prompts[i]`, or None for text-only;
    prompt i must contain one `<image>` per image. Prompts are grouped by token length
    (less padding), `batch_size` at a time, and the results put back in input order.
    """
    if len(prompts) != len(images):
        raise ValueError(f"got {len(prompts)} prompts but {len(images)} image entries; pass one per prompt")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    aspect = getattr(model.config, "image_aspect_ratio", None)
    rows = []
    for index, (prompt, entry) in enumerate(zip(prompts, images, strict=True)):
        pil_images = _as_image_list(entry)
        n_tokens = prompt.count(DEFAULT_IMAGE_TOKEN)
        if n_tokens != len(pil_images):
            raise ValueError(
                f"prompt {index} has {n_tokens} {DEFAULT_IMAGE_TOKEN} token(s) but {len(pil_images)} image(s)"
            )
        ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")
        rows.append((ids, encode_images(pil_images, image_processor, aspect), [im.size for im in pil_images]))

    order = sorted(range(len(rows)), key=lambda i: rows[i][0].shape[0], reverse=True)
    token_ids: list[list[int]] = [[] for _ in rows]
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        generated = generate_token_ids(
            model,
            tokenizer,
            [rows[i][0] for i in chunk],
            [rows[i][1] for i in chunk],
            [rows[i][2] for i in chunk],
            settings,
        )
        for i, row_ids in zip(chunk, generated, strict=True):
            token_ids[i] = row_ids
    return token_ids


def generate_batch(
    model,
    tokenizer,
    prompts: Sequence[str],
    images: Sequence[Image.Image | Sequence[Image.Image] | None],
    image_processor,
    *,
    temperature: float = 0.0,
    top_p: float | None = None,
    num_beams: int = 1,
    max_new_tokens: int = 128,
    stop_strings: Sequence[str] | None = None,
    batch_size: int = 8,
) -> list[str]:
    """Answer every rendered prompt (see `generate_batch_token_ids`); answers in the order of `prompts`.

    Each answer is decoded without special tokens, cut at the first stop string and stripped.
    """
    settings = GenerationSettings(
        temperature=temperature,
        top_p=top_p,
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        stop_strings=tuple(stop_strings or ()),
    )
    token_ids = generate_batch_token_ids(
        model, tokenizer, prompts, images, image_processor, settings, batch_size=batch_size
    )
    return decode_answers(tokenizer, token_ids, settings.stop_strings)
