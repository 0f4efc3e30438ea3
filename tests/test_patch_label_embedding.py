"""Specification of label targets: mean input embeddings, cached only while the table is frozen."""

import pytest
import torch
from torch import nn

from patch_align.objectives.label_embedding import LabelEmbeddingCache, mean_label_embeddings

IDS = torch.tensor([[1, 2, 0], [3, 0, 0]])
MASK = torch.tensor([[True, True, False], [True, False, False]])


def table() -> nn.Embedding:
    embedding = nn.Embedding(4, 2)
    with torch.no_grad():
        embedding.weight.copy_(torch.tensor([[9.0, 9.0], [1.0, 0.0], [0.0, 3.0], [2.0, 2.0]]))
    return embedding.requires_grad_(False)


def test_target_is_mean_of_the_label_token_embeddings_ignoring_padding():
    targets = mean_label_embeddings(table(), IDS, MASK)
    assert targets.tolist() == [[0.5, 1.5], [2.0, 2.0]]
    assert targets.dtype == torch.float32 and not targets.requires_grad


def test_frozen_table_is_cached_and_not_called_again():
    embedding, cache = table(), LabelEmbeddingCache()
    calls = []
    embedding.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    assert cache(embedding, IDS, MASK).tolist() == [[0.5, 1.5], [2.0, 2.0]]
    assert cache(embedding, IDS.flip(0), MASK.flip(0)).tolist() == [[2.0, 2.0], [0.5, 1.5]]
    assert len(calls) == 1 and len(cache) == 2


def test_trainable_table_bypasses_and_empties_the_cache():
    embedding, cache = table(), LabelEmbeddingCache()
    cache(embedding, IDS, MASK)
    embedding.weight.requires_grad_(True)
    with torch.no_grad():
        embedding.weight[3] = torch.tensor([4.0, 0.0])
    assert cache(embedding, IDS, MASK)[1].tolist() == [4.0, 0.0]  # the current weights, not the cached ones
    assert len(cache) == 0


def test_replaced_table_invalidates_the_cache():
    cache = LabelEmbeddingCache()
    cache(table(), IDS, MASK)
    resized = nn.Embedding(5, 2).requires_grad_(False)
    torch.testing.assert_close(cache(resized, IDS[1:], MASK[1:])[0], resized.weight[3].detach())


def test_no_labels_give_an_empty_target_matrix():
    assert LabelEmbeddingCache()(table(), IDS[:0], MASK[:0]).shape == (0, 2)


def test_label_without_tokens_is_rejected():
    with pytest.raises(ValueError, match="at least one token"):
        mean_label_embeddings(table(), IDS, torch.zeros_like(MASK))
