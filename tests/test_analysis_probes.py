"""Specification of patch_align.analysis.probes (SEA nearest-word probe and embedding gap).

Vocabulary e0 = (1, 0), e1 = (0, 2), e2 = (-1, -1); tokens and their hand-computed values:
  x0 = (2, 0):    cos (1, 0, -0.707)      → word 0;  distances (1, 2.828, 3.162)  → 1
  x1 = (0, 0.5):  cos (0, 1, -0.707)      → word 1;  distances (1.118, 1.5, 1.803) → 1.118 (word 0)
  x2 = (-3, -1):  cos (-0.949, -0.316, 0.894) → word 2;  distances (4.123, 4.243, 2) → 2
"""

import math

import pytest
import torch

from patch_align.analysis.probes import embedding_gap, nearest_word_distances, nearest_words

VOCAB = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
TOKENS = torch.tensor([[2.0, 0.0], [0.0, 0.5], [-3.0, -1.0]])


def test_nearest_word_is_the_most_cosine_similar_row():
    ids, cosines = nearest_words(TOKENS, VOCAB)
    assert ids.tolist() == [[0], [1], [2]]
    assert cosines.squeeze(-1).tolist() == pytest.approx([1.0, 1.0, 4 / math.sqrt(20)], abs=1e-6)


def test_top_k_lists_words_most_similar_first():
    ids, cosines = nearest_words(TOKENS[2], VOCAB, top_k=3)
    assert ids.tolist() == [2, 1, 0]
    expected = [4 / math.sqrt(20), -1 / math.sqrt(10), -3 / math.sqrt(10)]
    assert cosines.tolist() == pytest.approx(expected, abs=1e-6)


def test_nearest_by_distance_can_differ_from_nearest_by_cosine():
    distances, ids = nearest_word_distances(TOKENS, VOCAB)
    assert ids.tolist() == [0, 0, 2]
    assert distances.tolist() == pytest.approx([1.0, math.sqrt(1.25), 2.0], abs=1e-6)


def test_embedding_gap_is_mean_nearest_distance():
    assert embedding_gap(TOKENS, VOCAB) == pytest.approx((3.0 + math.sqrt(1.25)) / 3, abs=1e-6)


def test_token_on_a_word_has_zero_distance_not_nan():
    distances, _ = nearest_word_distances(torch.tensor([[0.1, 0.7], [0.3, -0.2]]), torch.tensor([[0.1, 0.7]]))
    assert distances[0].item() == 0.0


def test_chunked_batched_probes_equal_unchunked():
    generator = torch.Generator().manual_seed(0)
    vocab = torch.randn(50, 16, generator=generator)
    tokens = torch.randn(2, 5, 16, generator=generator)
    ids, cosines = nearest_words(tokens, vocab, top_k=2, chunk_size=3)
    flat_ids, flat_cosines = nearest_words(tokens.reshape(10, 16), vocab, top_k=2)
    assert ids.shape == (2, 5, 2)
    assert torch.equal(ids.reshape(10, 2), flat_ids)
    # Different chunk sizes may block the matmul differently: equal up to float32 rounding.
    assert torch.allclose(cosines.reshape(10, 2), flat_cosines, atol=1e-6)
    assert embedding_gap(tokens, vocab, chunk_size=3) == pytest.approx(embedding_gap(tokens, vocab), rel=1e-6)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="tokens row 1 .* zero norm"):
        nearest_words(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), VOCAB)
    with pytest.raises(ValueError, match="top_k"):
        nearest_words(TOKENS, VOCAB, top_k=4)
    with pytest.raises(ValueError, match=r"embeddings \(V, D\)"):
        embedding_gap(TOKENS, torch.ones(3, 5))
    with pytest.raises(ValueError, match="NaN"):
        embedding_gap(torch.tensor([[float("nan"), 0.0]]), VOCAB)
