"""Specification of patch_align.analysis.entropy (matrix entropy of token sets)."""

import math

import pytest
import torch

from patch_align.analysis.entropy import (
    SecondMomentAccumulator,
    compression_report,
    matrix_entropy,
    spectrum_entropy,
)

# Two 2-d tokens (1, 0) and (1, 1)/√2: S = [[1.5, .5], [.5, .5]], ρ = S / 2 has eigenvalues
# 1/2 ± √2/4 = 0.853553..., 0.146446...; H = -Σ λ ln λ = 0.416495...; H₂ = -ln Σ λ² = ln(4/3).
TWO_D_TOKENS = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
TWO_D_EIGENVALUES = (0.8535533905932737, 0.1464466094067262)
TWO_D_VON_NEUMANN = 0.4164955306996875
TWO_D_RENYI_2 = 0.2876820724517809


def test_orthonormal_basis_tokens_give_log_of_dimension():
    d = 6
    # Each basis vector twice, scaled: normalisation removes the scale, the density is I/d.
    tokens = torch.cat([torch.eye(d), 3.0 * torch.eye(d)])
    assert matrix_entropy(tokens).item() == pytest.approx(math.log(d), abs=1e-12)


def test_rank_one_tokens_give_zero_entropy():
    direction = torch.tensor([1.0, -2.0, 0.5, 4.0])
    tokens = torch.stack([2.0 * direction, 0.1 * direction, direction])
    assert matrix_entropy(tokens).item() == pytest.approx(0.0, abs=1e-12)


def test_hand_built_two_dimensional_example_matches_computed_eigenvalues():
    acc = SecondMomentAccumulator(2)
    acc.update(TWO_D_TOKENS)
    eigenvalues = torch.linalg.eigvalsh(acc.density_matrix()).flip(0)
    assert eigenvalues.tolist() == pytest.approx(TWO_D_EIGENVALUES, abs=1e-6)
    assert matrix_entropy(TWO_D_TOKENS).item() == pytest.approx(TWO_D_VON_NEUMANN, abs=1e-6)


def test_renyi_order_two_is_minus_log_purity():
    assert matrix_entropy(TWO_D_TOKENS, order=2.0).item() == pytest.approx(TWO_D_RENYI_2, abs=1e-6)


def test_spectrum_entropy_ignores_nonpositive_eigenvalues():
    spectrum = torch.tensor([0.5, 0.5, 0.0, -1e-17])
    assert spectrum_entropy(spectrum).item() == pytest.approx(math.log(2), abs=1e-12)
    assert spectrum_entropy(spectrum, order=3.0).item() == pytest.approx(math.log(2), abs=1e-12)


def test_centring_uses_covariance_as_computed_by_hand():
    # Tokens (1,0), (0,1), (-1,0): S/N = diag(2/3, 1/3); mean (0, 1/3);
    # covariance diag(2/3, 2/9) → ρ = diag(3/4, 1/4).
    tokens = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    raw = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    centred = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert matrix_entropy(tokens).item() == pytest.approx(raw, abs=1e-12)
    assert matrix_entropy(tokens, center=True).item() == pytest.approx(centred, abs=1e-12)


def test_without_normalisation_long_tokens_weigh_more():
    # (2,0) and (0,1): S = diag(4, 1) → ρ = diag(0.8, 0.2).
    tokens = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    expected = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    assert matrix_entropy(tokens, normalize=False).item() == pytest.approx(expected, abs=1e-12)
    assert matrix_entropy(tokens).item() == pytest.approx(math.log(2), abs=1e-12)


def test_streaming_in_chunks_equals_one_shot():
    generator = torch.Generator().manual_seed(0)
    tokens = (torch.randn(103, 8, generator=generator) + 0.5).to(torch.bfloat16)
    for center in (False, True):
        acc = SecondMomentAccumulator(8, center=center)
        for chunk in tokens.split(17):
            acc.update(chunk)
        assert acc.count == 103
        for order in (1.0, 2.0, 0.5):
            expected = matrix_entropy(tokens, center=center, order=order).item()
            assert acc.entropy(order=order) == pytest.approx(expected, abs=1e-10)


def test_batched_input_gives_one_entropy_per_set():
    batch = torch.stack([torch.eye(3), torch.tensor([[1.0, 1.0, 0.0]] * 3)])
    result = matrix_entropy(batch.to(torch.bfloat16))
    assert result.shape == (2,)
    assert result.tolist() == pytest.approx([math.log(3), 0.0], abs=1e-12)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="zero norm"):
        matrix_entropy(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        matrix_entropy(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="identical"):
        matrix_entropy(torch.tensor([[1.0, 2.0], [1.0, 2.0]]), center=True)
    with pytest.raises(ValueError, match="order"):
        matrix_entropy(torch.eye(2), order=0.0)
    with pytest.raises(ValueError, match="no tokens"):
        SecondMomentAccumulator(4).entropy()
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        SecondMomentAccumulator(4).update(torch.ones(2, 3))


def test_compression_report_gives_projector_entropy_drop():
    report = compression_report(4.8, 2.0, 3.0)
    assert report == pytest.approx(
        {"h_vision": 4.8, "h_projected": 2.0, "h_words": 3.0, "delta_h": 2.8, "projected_minus_words": -1.0}
    )
    with pytest.raises(ValueError, match="h_words"):
        compression_report(1.0, 1.0, float("nan"))
