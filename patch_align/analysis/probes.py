"""SEA-style interpretability probes (arXiv 2408.11813): nearest vocabulary words and the
embedding gap between visual tokens and the LLM's word-embedding table.

Both work chunk by chunk over tokens so the (N, V) similarity matrix never exists at once;
peak extra memory is ``chunk_size · V`` values of ``dtype`` (131 MB for 1024 × 32000 fp32).
"""

from __future__ import annotations

import torch

__all__ = ["embedding_gap", "nearest_word_distances", "nearest_words"]


def _check_shapes(tokens: torch.Tensor, embeddings: torch.Tensor, chunk_size: int) -> None:
    if embeddings.dim() != 2 or tokens.dim() < 1 or tokens.shape[-1] != embeddings.shape[-1]:
        raise ValueError(
            f"expected tokens (..., D) and embeddings (V, D), "
            f"got {tuple(tokens.shape)} and {tuple(embeddings.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if tokens.numel() == 0:
        raise ValueError("tokens is empty")


def _unit_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    norms = x.norm(dim=-1, keepdim=True)
    zero = (norms.squeeze(-1) == 0).nonzero()
    if zero.numel():
        raise ValueError(f"{name} row {int(zero[0])} (flattened index) has zero norm; cosine is undefined")
    return x / norms


def nearest_words(
    tokens: torch.Tensor,
    embeddings: torch.Tensor,
    *,
    top_k: int = 1,
    chunk_size: int = 1024,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vocabulary rows most cosine-similar to each token: ``argmax_w cos(x_v, e(w))``.

    Args:
        tokens: (..., D) visual tokens.
        embeddings: (V, D) word-embedding table (or a filtered subset of its rows).
        top_k: how many words per token, most similar first.
        chunk_size: tokens per chunk.
        dtype: compute dtype of the cosines.

    Returns:
        ids (..., top_k) long row indices into ``embeddings`` and their cosines (..., top_k).
    """
    _check_shapes(tokens, embeddings, chunk_size)
    if not 1 <= top_k <= embeddings.shape[0]:
        raise ValueError(f"top_k must be in [1, V={embeddings.shape[0]}], got {top_k}")
    words = _unit_rows(embeddings.to(dtype), "embeddings")
    flat = _unit_rows(tokens.reshape(-1, tokens.shape[-1]).to(device=words.device, dtype=dtype), "tokens")
    ids, cosines = [], []
    for chunk in flat.split(chunk_size):
        best = (chunk @ words.T).topk(top_k, dim=-1)
        ids.append(best.indices)
        cosines.append(best.values)
    lead = tokens.shape[:-1]
    return torch.cat(ids).reshape(*lead, top_k), torch.cat(cosines).reshape(*lead, top_k)


def nearest_word_distances(
    tokens: torch.Tensor,
    embeddings: torch.Tensor,
    *,
    chunk_size: int = 1024,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance of each token to its nearest embedding row, ``min_w ||x_v − e(w)||``.

    Squared distances are expanded as ``||x||² + ||e||² − 2 x·e`` (one matmul per chunk) and
    clamped at 0 before the square root, since rounding can make them slightly negative.

    Args:
        tokens: (..., D) visual tokens (not normalised: the gap is about raw positions).
        embeddings: (V, D) word-embedding table.

    Returns:
        distances (...,) in ``dtype`` and the nearest row ids (...,) long.
    """
    _check_shapes(tokens, embeddings, chunk_size)
    words = embeddings.to(dtype)
    word_sq = words.pow(2).sum(dim=-1)
    flat = tokens.reshape(-1, tokens.shape[-1]).to(device=words.device, dtype=dtype)
    if not torch.isfinite(flat).all():
        raise ValueError("tokens contain NaN or Inf")
    distances, ids = [], []
    for chunk in flat.split(chunk_size):
        squared = chunk.pow(2).sum(dim=-1, keepdim=True) + word_sq - 2.0 * (chunk @ words.T)
        nearest = squared.min(dim=-1)
        distances.append(nearest.values.clamp(min=0).sqrt())
        ids.append(nearest.indices)
    lead = tokens.shape[:-1]
    return torch.cat(distances).reshape(lead), torch.cat(ids).reshape(lead)


def embedding_gap(
    tokens: torch.Tensor,
    embeddings: torch.Tensor,
    *,
    chunk_size: int = 1024,
    dtype: torch.dtype = torch.float32,
) -> float:
    """SEA's embedding gap ``D = mean_v min_w ||x_v − e(w)||`` over all tokens (..., D).

    Same units as the embeddings. To average over more tokens than fit at once, sum
    ``nearest_word_distances`` per batch and divide by the total count.
    """
    distances, _ = nearest_word_distances(tokens, embeddings, chunk_size=chunk_size, dtype=dtype)
    return float(distances.double().mean())
