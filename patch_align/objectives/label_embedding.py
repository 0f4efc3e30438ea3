"""Label targets in the LLM's input-embedding space: the mean of a label's token embeddings.

Tokenisation (our choice; the paper is silent): a label is tokenised as a word in running
text, after a space: `tokenizer(" " + label.strip(), add_special_tokens=False)`, no BOS, no
EOS. So "red box" yields exactly the ids that "red box" has inside a caption such as
"a red box and ..." for every tokenizer type: byte-level BPE (Llama-3, Qwen2) marks the
space in the word's token ("Ġred"), which the bare word would lack; Gemma's SentencePiece
turns the space into its word-start marker ("▁red") and adds no dummy prefix itself;
LLaMA's SentencePiece (Metaspace, prepend "first") gives " red" and "red" the same ids,
so its labels are unchanged (tests check each kind).

The embeddings are computed through the embedding *module* (`model.get_input_embeddings()`),
never by reading its weight tensor: under DeepSpeed ZeRO-3 the weight is partitioned (shape
(0,)) and only the module's forward hooks gather it. Targets carry no gradient (our choice):
the loss moves the vision tokens towards the words, never the vocabulary towards the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def tokenize_label(tokenizer, label: str) -> list[int]:
    """Token ids of `label` as a word in running text (no special tokens); [] when it has none."""
    label = label.strip()
    if not label:
        return []
    # The space a caption puts before the word: byte-level and Gemma tokenizers keep it in the token.
    return list(tokenizer(" " + label, add_special_tokens=False).input_ids)


def pad_token_ids(
    token_lists: Sequence[Sequence[int]], device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged token-id lists → `(ids, mask)`: (R, L_max) zero-padded long ids, (R, L_max) bool real tokens."""
    width = max((len(ids) for ids in token_lists), default=0)
    ids = torch.zeros((len(token_lists), width), dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.bool)
    for row, tokens in enumerate(token_lists):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = True
    return ids.to(device), mask.to(device)


def mean_label_embeddings(
    embedding: nn.Module, label_ids: torch.Tensor, label_mask: torch.Tensor
) -> torch.Tensor:
    """Mean input embedding of each label's tokens: (R, D) float32.

    `label_ids` (R, L) long, padded; `label_mask` (R, L) bool marks real tokens (every row
    needs at least one). Runs the embedding module (ZeRO-3 safe) without gradient.
    """
    if label_ids.shape != label_mask.shape:
        raise ValueError(
            f"label_ids {tuple(label_ids.shape)} and label_mask {tuple(label_mask.shape)} differ"
        )
    counts = label_mask.sum(dim=1, keepdim=True)
    if label_ids.shape[0] and int(counts.min()) == 0:
        raise ValueError("every label needs at least one token (empty labels are dropped by the dataset)")
    with torch.no_grad():
        embedded = embedding(label_ids).float()  # (R, L, D)
        summed = (embedded * label_mask.unsqueeze(-1).to(embedded.dtype)).sum(dim=1)
    return summed / counts.to(summed.dtype)


def _is_partitioned(weight: torch.Tensor) -> bool:
    """True for a DeepSpeed ZeRO-3 parameter (its data lives in shards across ranks)."""
    return hasattr(weight, "ds_id")


class LabelEmbeddingCache:
    """`mean_label_embeddings` with a per-label cache, used only while the table is frozen.

    A label's target is cached (by its token ids) when the embedding weight does not require
    grad, e.g. stage 1, where the LLM is frozen. As soon as the table trains (`requires_grad`, e.g.
    `--mm_use_im_start_end` makes it trainable), or the module or its shape changes (token
    resizing), the cache is emptied and targets are recomputed each step from the current weights.
    Under ZeRO-3 the embedding module is called on every step, even when every label is
    cached (with zero ids then), so that all ranks join the same parameter gathers.
    """

    def __init__(self) -> None:
        self._targets: dict[tuple[int, ...], torch.Tensor] = {}
        self._table_key: tuple | None = None

    def __len__(self) -> int:
        return len(self._targets)

    def __call__(
        self, embedding: nn.Module, label_ids: torch.Tensor, label_mask: torch.Tensor
    ) -> torch.Tensor:
        """Same contract as `mean_label_embeddings`: (R, L) ids + mask → (R, D) float32."""
        weight = embedding.weight
        partitioned = _is_partitioned(weight)
        shape = tuple(getattr(weight, "ds_shape", weight.shape))
        table_key = (id(embedding), shape, weight.device)
        if weight.requires_grad or table_key != self._table_key:
            self._targets.clear()
            self._table_key = table_key
        if weight.requires_grad:
            return mean_label_embeddings(embedding, label_ids, label_mask)

        # one host copy for the whole batch, not one per label (this runs every micro-batch)
        keys = [
            tuple(i for i, keep in zip(row, row_mask, strict=True) if keep)
            for row, row_mask in zip(label_ids.tolist(), label_mask.tolist(), strict=True)
        ]
        missing = sorted({k for k in keys if k not in self._targets})
        if missing or partitioned:
            ids, mask = pad_token_ids(missing, label_ids.device)
            for key, target in zip(missing, mean_label_embeddings(embedding, ids, mask), strict=True):
                self._targets[key] = target
        if not keys:
            dim = embedding.embedding_dim
            return torch.zeros((0, dim), dtype=torch.float32, device=label_ids.device)
        return torch.stack([self._targets[k] for k in keys]).to(label_ids.device)
