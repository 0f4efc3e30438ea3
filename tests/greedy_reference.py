"""Greedy decoding the slow, obvious way: the reference that generation entry points are checked against.

No `generate`, no KV cache, no padding: each step runs a full forward over the prompt plus the tokens
chosen so far and takes the arg-max of the last position (upstream's golden files were cross-checked
against the same loop).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def greedy_new_tokens(
    model, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None, **image_kwargs
) -> list[int]:
    """New token ids of greedy decoding from one prompt, up to and including EOS.

    `input_ids`: (L,) or (1, L), with IMAGE_TOKEN_INDEX where images go; `image_kwargs` (`images`
    (n, 3, H, W), `image_sizes`) are passed to every forward.
    """
    ids = input_ids.reshape(1, -1)
    new: list[int] = []
    for _ in range(max_new_tokens):
        next_id = int(model(input_ids=ids, **image_kwargs).logits[0, -1].argmax())
        new.append(next_id)
        if next_id == eos_token_id:
            break
        ids = torch.cat([ids, torch.tensor([[next_id]], dtype=ids.dtype)], dim=1)
    return new
