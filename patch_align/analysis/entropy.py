"""Matrix (von Neumann / Rényi) entropy of a set of token embeddings.

A set of tokens ``X`` (N, D) is summarised by its density matrix: the second-moment matrix
``S = Σ_i x_i x_iᵀ`` (or the covariance when centring) divided by its trace, so it is
symmetric, positive semi-definite and has unit trace. The entropy of its eigenvalues measures
how evenly the tokens spread over directions: ``log D`` for isotropic tokens, 0 for tokens on
one line. Units are nats (natural log). Definitions and defaults: docs/metrics.md.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "SecondMomentAccumulator",
    "compression_report",
    "density_matrix",
    "matrix_entropy",
    "spectrum_entropy",
]


def _check_order(order: float) -> None:
    if not (order > 0 and math.isfinite(order)):
        raise ValueError(f"entropy order must be a finite number > 0, got {order!r}")


def _prepare_tokens(tokens: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Upcast ``tokens`` (..., N, D) to float64 and optionally L2-normalise each token."""
    if tokens.dim() < 2:
        raise ValueError(f"tokens must have shape (..., N, D), got {tuple(tokens.shape)}")
    if tokens.shape[-2] == 0:
        raise ValueError("tokens is empty (N = 0): the entropy of no tokens is undefined")
    tokens = tokens.to(torch.float64)
    if not torch.isfinite(tokens).all():
        raise ValueError("tokens contain NaN or Inf")
    if normalize:
        norms = tokens.norm(dim=-1, keepdim=True)
        zero = (norms == 0).squeeze(-1).nonzero()
        if zero.numel():
            raise ValueError(
                f"token at index {tuple(zero[0].tolist())} has zero norm and cannot be L2-normalised"
            )
        tokens = tokens / norms
    return tokens


def spectrum_entropy(eigenvalues: torch.Tensor, order: float = 1.0) -> torch.Tensor:
    """Rényi entropy (nats) of unit-sum eigenvalue spectra.

    Args:
        eigenvalues: (..., D) eigenvalues of density matrices (each row sums to 1). Values
            ``<= 0`` (numerical noise of a PSD matrix) contribute nothing.
        order: Rényi order α > 0. ``α = 1`` gives von Neumann ``-Σ λ log λ``; otherwise
            ``log(Σ λ^α) / (1 - α)``.

    Returns:
        (...) entropies in float64.
    """
    _check_order(order)
    lam = eigenvalues.to(torch.float64)
    positive = lam > 0
    safe = torch.where(positive, lam, torch.ones_like(lam))
    if order == 1.0:
        return -(torch.where(positive, safe * safe.log(), torch.zeros_like(lam))).sum(dim=-1)
    power_sum = torch.where(positive, safe.pow(order), torch.zeros_like(lam)).sum(dim=-1)
    return power_sum.log() / (1.0 - order)


def density_matrix(
    second_moment_sum: torch.Tensor, token_sum: torch.Tensor, count: int, *, center: bool = False
) -> torch.Tensor:
    """Trace-normalised second-moment (or covariance) matrix.

    Args:
        second_moment_sum: (..., D, D) ``Σ_i x_i x_iᵀ``.
        token_sum: (..., D) ``Σ_i x_i`` (used only when ``center``).
        count: number of tokens N summed.
        center: subtract the mean, i.e. use the covariance ``S/N - μ μᵀ``.

    Returns:
        (..., D, D) float64 matrix with unit trace.
    """
    if count <= 0:
        raise ValueError("no tokens were accumulated: the entropy of no tokens is undefined")
    moment = second_moment_sum.to(torch.float64) / count
    if center:
        mean = token_sum.to(torch.float64) / count
        moment = moment - mean.unsqueeze(-1) * mean.unsqueeze(-2)
    trace = moment.diagonal(dim1=-2, dim2=-1).sum(dim=-1)
    if (trace <= 0).any():
        what = "covariance (all tokens identical?)" if center else "second moment (all tokens zero?)"
        raise ValueError(f"the {what} has zero trace; its entropy is undefined")
    return moment / trace.unsqueeze(-1).unsqueeze(-1)


def _entropy_of_density(rho: torch.Tensor, order: float) -> torch.Tensor:
    # Symmetrise to remove rounding asymmetry before the symmetric eigensolver.
    rho = 0.5 * (rho + rho.transpose(-1, -2))
    return spectrum_entropy(torch.linalg.eigvalsh(rho), order)


def matrix_entropy(
    tokens: torch.Tensor, *, center: bool = False, normalize: bool = True, order: float = 1.0
) -> torch.Tensor:
    """One-shot matrix entropy of token sets.

    Args:
        tokens: (..., N, D) token embeddings, any float dtype and device; computed in float64.
        center: use the covariance instead of the raw second moment.
        normalize: L2-normalise each token first (so every token has equal weight).
        order: Rényi order α (1 = von Neumann).

    Returns:
        (...) float64 entropies in nats, on the device of ``tokens``.
    """
    _check_order(order)
    x = _prepare_tokens(tokens, normalize)
    rho = density_matrix(x.transpose(-1, -2) @ x, x.sum(dim=-2), x.shape[-2], center=center)
    return _entropy_of_density(rho, order)


class SecondMomentAccumulator:
    """Streaming matrix entropy: accumulates ``Σ x xᵀ`` (D, D) and ``Σ x`` (D,) in float64.

    Memory is ``8·D² + 8·D`` bytes whatever the number of tokens (134 MB at D = 4096), so
    10⁵–10⁶ tokens never need an (N, N) or (N, D) buffer. The sums live on the device of the
    first ``update`` unless ``device`` is given.
    """

    def __init__(
        self, dim: int, center: bool = False, normalize: bool = True, device: torch.device | str | None = None
    ) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.center = center
        self.normalize = normalize
        self.count = 0
        self._device = torch.device(device) if device is not None else None
        self._moment_sum: torch.Tensor | None = None
        self._token_sum: torch.Tensor | None = None

    def update(self, tokens: torch.Tensor) -> None:
        """Add a chunk of tokens (N, D)."""
        if tokens.dim() != 2 or tokens.shape[1] != self.dim:
            raise ValueError(f"expected tokens of shape (N, {self.dim}), got {tuple(tokens.shape)}")
        if tokens.shape[0] == 0:
            return
        if self._moment_sum is None:
            device = self._device if self._device is not None else tokens.device
            self._moment_sum = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=device)
            self._token_sum = torch.zeros(self.dim, dtype=torch.float64, device=device)
        x = _prepare_tokens(tokens.to(self._moment_sum.device), self.normalize)
        self._moment_sum.addmm_(x.T, x)
        self._token_sum.add_(x.sum(dim=0))
        self.count += x.shape[0]

    def density_matrix(self) -> torch.Tensor:
        """(D, D) float64 unit-trace density matrix of everything seen so far."""
        if self._moment_sum is None:
            raise ValueError("no tokens were accumulated: the entropy of no tokens is undefined")
        return density_matrix(self._moment_sum, self._token_sum, self.count, center=self.center)

    def entropy(self, order: float = 1.0) -> float:
        """Entropy (nats) of all tokens seen so far; Rényi order ``order`` (1 = von Neumann)."""
        _check_order(order)
        return float(_entropy_of_density(self.density_matrix(), order))


def compression_report(h_vision: float, h_projected: float, h_words: float) -> dict[str, float]:
    """Summarise entropies (nats) of vision-encoder, projected and word-embedding tokens.

    Returns a dict with the three inputs, ``delta_h = H_vision - H_projected`` (how much the
    projector compresses) and ``projected_minus_words = H_projected - H_words`` (how far the
    projected tokens remain from the spread of word embeddings).
    """
    values = {"h_vision": float(h_vision), "h_projected": float(h_projected), "h_words": float(h_words)}
    for name, value in values.items():
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    values["delta_h"] = values["h_vision"] - values["h_projected"]
    values["projected_minus_words"] = values["h_projected"] - values["h_words"]
    return values
