"""LLM-side targets of the SEA vocabulary: each word's mean token input embedding.

Words are tokenised once, as labels in running text (`objectives.label_embedding.tokenize_label`,
shared with the patch-cosine objective), and their targets come from its ZeRO-3-safe,
cached `LabelEmbeddingCache`, so both objectives aim at the same point for the same word.
"""

from __future__ import annotations

import torch
from torch import nn

from patch_align.objectives.label_embedding import LabelEmbeddingCache, pad_token_ids, tokenize_label


class VocabularyTargets:
    """`targets(embedding, word_ids)`: word ids (P,) → (P, D) float32 mean input embeddings, no grad."""

    def __init__(self, tokenizer, words: list[str]) -> None:
        tokenised = [tokenize_label(tokenizer, word) for word in words]
        empty = [word for word, ids in zip(words, tokenised, strict=True) if not ids]
        if empty:
            raise ValueError(f"SEA vocabulary words with no tokens under the LLM tokenizer: {empty[:10]}")
        self.token_ids, self.token_mask = pad_token_ids(tokenised)  # (V, L) each
        self._cache = LabelEmbeddingCache()

    def __call__(self, embedding: nn.Module, word_ids: torch.Tensor) -> torch.Tensor:
        word_ids = word_ids.cpu().long()
        if word_ids.numel() and (word_ids.min() < 0 or word_ids.max() >= self.token_ids.shape[0]):
            raise ValueError(f"SEA word ids must lie in [0, {self.token_ids.shape[0]}), got "
                             f"[{int(word_ids.min())}, {int(word_ids.max())}]")
        ids, mask = self.token_ids[word_ids], self.token_mask[word_ids]
        # Trim to the longest word present, so a batch of short words embeds no padding columns.
        width = max(int(mask.sum(dim=1).max()) if mask.shape[0] else 1, 1)
        device = embedding.weight.device
        return self._cache(embedding, ids[:, :width].to(device), mask[:, :width].to(device))
