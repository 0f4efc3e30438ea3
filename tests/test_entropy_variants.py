"""Specification of the entropy variants of issue 20: per set and pooled, centred and uncentred,
normalised by log min(N, D). Token sets are built so that every entropy is known exactly."""

import math

import pytest
import torch

from patch_align.analysis.entropy import (
    SecondMomentAccumulator,
    TokenSetEntropy,
    entropy_ceiling,
    matrix_entropy,
    pooled_entropies,
    set_entropies,
)

OFFSET_PAIR = torch.tensor([[1.0, 0.0, 5.0], [-1.0, 0.0, 5.0]])  # ±e0 on a shared offset 5·e2
# uncentred, not L2-normalised: second moment diag(1, 0, 25) → spectrum {1/26, 25/26}
OFFSET_PAIR_UNCENTRED = -(1 / 26 * math.log(1 / 26) + 25 / 26 * math.log(25 / 26))


def test_orthonormal_rows_have_entropy_log_n_and_normalised_entropy_one():
    tokens = torch.eye(8)[:5]  # N = 5 orthonormal tokens in D = 8
    uncentred, _ = set_entropies(tokens)
    assert uncentred == pytest.approx(math.log(5), abs=1e-12)
    assert uncentred / entropy_ceiling(5, 8) == pytest.approx(1.0, abs=1e-12)


def test_rank_one_tokens_have_entropy_zero_and_no_centred_entropy_when_identical():
    direction = torch.tensor([0.6, 0.8, 0.0])
    uncentred, centred = set_entropies(torch.stack([direction, 2 * direction, 3 * direction]))
    assert uncentred == pytest.approx(0.0, abs=1e-12)
    assert centred is None  # L2-normalised they are identical: zero covariance


def test_centred_and_uncentred_differ_on_a_constant_offset():
    uncentred, centred = set_entropies(OFFSET_PAIR, normalize=False)
    assert uncentred == pytest.approx(OFFSET_PAIR_UNCENTRED, abs=1e-12)
    assert centred == pytest.approx(0.0, abs=1e-12)  # the offset removed, ±e0 lie on one line


def test_set_entropies_equal_the_one_shot_matrix_entropy_when_n_exceeds_d():
    tokens = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    uncentred, centred = set_entropies(tokens)
    assert uncentred == pytest.approx(float(matrix_entropy(tokens)), abs=1e-10)
    assert centred == pytest.approx(float(matrix_entropy(tokens, center=True)), abs=1e-10)


def test_per_set_mean_differs_from_the_pooled_entropy_of_the_same_tokens():
    # Two images, each 2 orthonormal tokens, on disjoint axes of D = 4: each set log 2, pooled log 4.
    images = torch.eye(4).reshape(2, 2, 4)
    per_set = TokenSetEntropy()
    per_set.update(images)
    result = per_set.result()
    assert result["sets"] == 2 and result["sets_skipped"] == 0
    assert result["uncentred_mean"] == pytest.approx(math.log(2), abs=1e-12)
    assert result["uncentred_std"] == pytest.approx(0.0, abs=1e-12)
    assert result["uncentred_normalized_mean"] == pytest.approx(1.0, abs=1e-12)
    # centred, each pair (e_a, e_b) becomes ±(e_a − e_b)/2: one line
    assert result["centred_mean"] == pytest.approx(0.0, abs=1e-12)
    pooled = SecondMomentAccumulator(4)
    pooled.update(images.reshape(4, 4))
    values = pooled_entropies(pooled)
    assert values["uncentred"] == pytest.approx(math.log(4), abs=1e-12)
    assert values["uncentred_normalized"] == pytest.approx(1.0, abs=1e-12)
    assert values["centred"] == pytest.approx(math.log(3), abs=1e-12)  # 4 simplex corners span 3 axes
    assert values["centred_normalized"] == pytest.approx(math.log(3) / math.log(4), abs=1e-12)
    assert (values["tokens"], values["dim"]) == (4, 4)


def test_normalisation_puts_two_widths_on_one_scale():
    # The same 4 orthonormal tokens in a 64- and a 128-wide space: equal normalised entropy.
    narrow, wide = SecondMomentAccumulator(64), SecondMomentAccumulator(128)
    narrow.update(torch.eye(64)[:4])
    wide.update(torch.eye(128)[:4])
    narrow_value = pooled_entropies(narrow)["uncentred_normalized"]
    assert narrow_value == pooled_entropies(wide)["uncentred_normalized"] == pytest.approx(1.0, abs=1e-12)


def test_single_token_sets_are_skipped_and_counted_and_a_ceiling_of_one_token_is_an_error():
    per_set = TokenSetEntropy()
    per_set.update(torch.eye(3)[:1])
    assert per_set.result()["sets_skipped"] == 1 and per_set.result()["uncentred_mean"] is None
    with pytest.raises(ValueError, match="log min"):
        entropy_ceiling(1, 64)


def test_pooled_centred_entropy_of_identical_tokens_is_none_not_an_error():
    accumulator = SecondMomentAccumulator(3)
    accumulator.update(torch.tensor([[0.6, 0.8, 0.0]]).repeat(4, 1) * torch.arange(1.0, 5.0).unsqueeze(1))
    values = pooled_entropies(accumulator)
    assert values["centred"] is None and values["uncentred"] == pytest.approx(0.0, abs=1e-12)
