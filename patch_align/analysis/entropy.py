"""Matrix (von Neumann / Rényi) entropy of a set of token embeddings.

A set of tokens ``X`` (N, D) is summarised by its density matrix: the second-moment matrix
``S = Σ_i x_i x_iᵀ`` (or the covariance when centring) divided by its trace, so it is
symmetric, positive semi-definite and has unit trace. The entropy of its eigenvalues measures
how evenly the tokens spread over directions: ``log D`` for isotropic tokens, 0 for tokens on
one line. Units are nats (natural log). Definitions and defaults: docs/metrics.md.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = [
    "SecondMomentAccumulator",
    "TokenSetEntropy",
    "compression_report",
    "density_matrix",
    "entropy_ceiling",
    "matrix_entropy",
    "pooled_entropies",
    "set_entropies",
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

    def density_matrix(self, center: bool | None = None) -> torch.Tensor:
        """(D, D) float64 unit-trace density matrix of everything seen so far.

        ``center`` overrides the accumulator's own setting (both come from the same sums)."""
        if self._moment_sum is None:
            raise ValueError("no tokens were accumulated: the entropy of no tokens is undefined")
        center = self.center if center is None else center
        return density_matrix(self._moment_sum, self._token_sum, self.count, center=center)

    def entropy(self, order: float = 1.0, center: bool | None = None) -> float:
        """Entropy (nats) of all tokens seen so far; Rényi order ``order`` (1 = von Neumann).

        ``center`` overrides the accumulator's own setting."""
        _check_order(order)
        return float(_entropy_of_density(self.density_matrix(center), order))


def entropy_ceiling(n_tokens: int, dim: int) -> float:
    """``log min(N, D)``: the largest matrix entropy N tokens in D dimensions can reach (nats).

    Dividing by it puts token sets of different sizes and widths (a 64-wide CLIP, a 128-wide
    LLM, a 7-token caption) on one 0..1 scale. Undefined (ValueError) when min(N, D) < 2."""
    if min(n_tokens, dim) < 2:
        raise ValueError(f"log min(N, D) is 0 for N={n_tokens}, D={dim}: no normalised entropy")
    return math.log(min(n_tokens, dim))


def pooled_entropies(accumulator: SecondMomentAccumulator, order: float = 1.0) -> dict[str, Any]:
    """One density matrix over every token of ``accumulator``: uncentred and centred entropies (nats),
    each also divided by ``entropy_ceiling(N, D)``; with ``tokens`` N and ``dim`` D.

    A variant that is undefined (zero covariance; min(N, D) < 2) is None."""
    values: dict[str, Any] = {"tokens": accumulator.count, "dim": accumulator.dim}
    smallest = min(accumulator.count, accumulator.dim)
    ceiling = math.log(smallest) if smallest > 1 else None
    for name, center in (("uncentred", False), ("centred", True)):
        try:
            value = accumulator.entropy(order, center=center)
        except ValueError:  # all tokens identical: the covariance has zero trace
            value = None
        if center and value is not None and _centred_trace_is_noise(accumulator):
            value = None
        values[name] = value
        values[f"{name}_normalized"] = value / ceiling if value is not None and ceiling else None
    return values


# A centred trace below this fraction of the uncentred one is rounding noise of identical tokens.
_ZERO_TRACE = 1e-12


def _centred_trace_is_noise(accumulator: SecondMomentAccumulator) -> bool:
    moment_trace = float(accumulator._moment_sum.diagonal().sum()) / accumulator.count
    mean = accumulator._token_sum / accumulator.count
    return moment_trace - float(mean @ mean) <= _ZERO_TRACE * moment_trace


def _set_entropy(x: torch.Tensor, order: float, scale: float) -> float | None:
    # The nonzero spectrum of XᵀX (D×D) is that of XXᵀ (N×N): use the smaller matrix.
    gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    trace = float(gram.diagonal().sum())
    if trace <= _ZERO_TRACE * scale:
        return None
    return float(_entropy_of_density(gram / trace, order))


def set_entropies(
    tokens: torch.Tensor, *, normalize: bool = True, order: float = 1.0
) -> tuple[float | None, float | None]:
    """Uncentred and centred matrix entropy (nats) of one token set (N, D), the set its own density matrix.

    Computed from the min(N, D)-sized Gram matrix; an entropy whose matrix has zero trace (all
    tokens zero; centred: all tokens identical) is None."""
    _check_order(order)
    x = _prepare_tokens(tokens, normalize)
    if x.dim() != 2:
        raise ValueError(f"one token set is (N, D), got {tuple(tokens.shape)}")
    scale = float(x.pow(2).sum())
    return _set_entropy(x, order, 0.0), _set_entropy(x - x.mean(dim=0, keepdim=True), order, scale)


class TokenSetEntropy:
    """Matrix entropy per token set (per image, per caption), averaged over sets.

    Each set is its own density matrix (PA's per-sample reading: log 576 = 6.36 bounds one
    CLIP-L image). Per set both the uncentred and the centred entropy and both divided by
    ``entropy_ceiling(N_set, D)``; ``result`` gives their means and population stds. Sets of
    fewer than 2 tokens have no normalised entropy and are skipped and counted.
    """

    _NAMES = ("uncentred", "centred", "uncentred_normalized", "centred_normalized")

    def __init__(self, normalize: bool = True, order: float = 1.0) -> None:
        _check_order(order)
        self.normalize = normalize
        self.order = order
        self.sets = 0
        self.sets_skipped = 0
        self._values: dict[str, list[float]] = {name: [] for name in self._NAMES}

    def update(self, tokens: torch.Tensor) -> None:
        """Add one set (N, D) or a batch of equal-sized sets (B, N, D)."""
        for one in tokens.reshape(-1, *tokens.shape[-2:]) if tokens.dim() == 3 else [tokens]:
            if one.shape[0] < 2:
                self.sets_skipped += 1
                continue
            ceiling = entropy_ceiling(one.shape[0], one.shape[1])
            uncentred, centred = set_entropies(one, normalize=self.normalize, order=self.order)
            self.sets += 1
            for name, value in (("uncentred", uncentred), ("centred", centred)):
                if value is not None:
                    self._values[name].append(value)
                    self._values[f"{name}_normalized"].append(value / ceiling)

    def result(self) -> dict[str, Any]:
        """``<variant>_mean`` / ``<variant>_std`` for the four variants (None without a defined set),
        ``sets`` and ``sets_skipped``; a centred value is missing for a set of identical tokens."""
        values: dict[str, Any] = {"sets": self.sets, "sets_skipped": self.sets_skipped}
        for name, seen in self._values.items():
            data = torch.tensor(seen, dtype=torch.float64)
            values[f"{name}_mean"] = float(data.mean()) if seen else None
            values[f"{name}_std"] = float(data.std(correction=0)) if seen else None
        return values


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
