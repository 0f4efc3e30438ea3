"""Multi-semantic decomposition: sparse codes of vision tokens over word embeddings.

Each token ``x`` (D,) is approximated by ``Σ_k c_k · ê_{j_k}`` where ``ê`` are the rows of a
dictionary (V, D) scaled to unit L2 norm, chosen greedily by matching pursuit (MP) or
orthogonal matching pursuit (OMP). Coefficients refer to the unit-norm atoms. Definitions and
the stopping rule: docs/metrics.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "PursuitResult",
    "SignedAtoms",
    "atoms_by_sign",
    "matching_pursuit",
    "orthogonal_matching_pursuit",
    "precision_recall_of_words",
    "word_match_counts",
    "word_scores",
    "word_token_ids",
]

_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


@dataclass(frozen=True)
class PursuitResult:
    """Sparse codes of tokens with leading shape (...,); K = ``max_atoms``.

    atom_ids: (..., K) long dictionary row indices in selection order, -1 in unused slots.
        In MP an atom may be selected more than once (one slot per selection).
    coefficients: (..., K) coefficient of each slot's unit-norm atom, 0 in unused slots.
    explained_variance: (...,) float64 ``1 - ||r||² / ||x||²`` of the final residual r.
    atoms_used: (...,) long number of filled slots.
    """

    atom_ids: torch.Tensor
    coefficients: torch.Tensor
    explained_variance: torch.Tensor
    atoms_used: torch.Tensor


@dataclass(frozen=True)
class SignedAtoms:
    """The distinct atoms of each code split by the sign of their net coefficient; K slots as in
    ``PursuitResult``, each distinct atom in the slot of its first selection.

    positive_ids / negative_ids: (..., K) long atom ids whose net coefficient is > 0 / < 0, else -1.
    net_coefficients: (..., K) the atom's summed coefficient over all its selections (MP may pick
        an atom again), 0 in unused and repeated slots.
    """

    positive_ids: torch.Tensor
    negative_ids: torch.Tensor
    net_coefficients: torch.Tensor


def atoms_by_sign(code: PursuitResult) -> SignedAtoms:
    """Split a code's atoms by the sign of their net coefficient.

    An atom entering a token with a negative coefficient says the token points *away* from that
    word; counting it as a recovered word (as the |coefficient| selection alone would) credits
    anti-alignment, so the analysis counts positive atoms as recovered and reports negative ones
    apart. An atom whose selections cancel exactly (net 0) is in neither set.
    """
    ids, coefs = code.atom_ids, code.coefficients
    valid = ids >= 0
    same = (ids.unsqueeze(-1) == ids.unsqueeze(-2)) & valid.unsqueeze(-1) & valid.unsqueeze(-2)
    net = (same * coefs.unsqueeze(-2)).sum(dim=-1)
    earlier = torch.ones(same.shape[-2:], dtype=torch.bool, device=ids.device).tril(-1)
    first = valid & ~(same & earlier).any(dim=-1)
    none = torch.full_like(ids, -1)
    return SignedAtoms(
        positive_ids=torch.where(first & (net > 0), ids, none),
        negative_ids=torch.where(first & (net < 0), ids, none),
        net_coefficients=torch.where(first, net, torch.zeros_like(net)),
    )


def _unit_atoms(dictionary: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    atoms = dictionary.to(dtype)
    norms = atoms.norm(dim=-1, keepdim=True)
    zero = (norms.squeeze(-1) == 0).nonzero()
    if zero.numel():
        raise ValueError(f"dictionary row {int(zero[0])} has zero norm and cannot be an atom")
    return atoms / norms


def _pursue_chunk(
    x: torch.Tensor, atoms: torch.Tensor, max_atoms: int, residual_tol: float, orthogonal: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy pursuit of x (n, D) over unit atoms (V, D) → ids (n, K), coefs (n, K), residual (n, D)."""
    n = x.shape[0]
    x_norm = x.double().norm(dim=-1)
    ids = torch.full((n, max_atoms), -1, dtype=torch.long, device=x.device)
    coefs = torch.zeros(n, max_atoms, dtype=x.dtype, device=x.device)
    residual = x.clone()
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    # OMP picks distinct atoms, so it can fill at most V slots.
    steps = min(max_atoms, atoms.shape[0]) if orthogonal else max_atoms
    for k in range(steps):
        active &= residual.double().norm(dim=-1) > residual_tol * x_norm
        if not active.any():
            break
        scores = residual @ atoms.T
        magnitude = scores.abs()
        if orthogonal and k:
            # The OMP residual is orthogonal to the chosen atoms; excluding them keeps the Gram
            # matrix non-singular when rounding leaves a tiny correlation.
            magnitude.scatter_(1, ids[:, :k].clamp(min=0), -1.0)
        best = magnitude.argmax(dim=-1)
        ids[:, k] = torch.where(active, best, ids[:, k])
        if orthogonal:
            chosen = atoms[ids[:, : k + 1].clamp(min=0)].double()  # (n, k+1, D)
            gram = chosen @ chosen.transpose(1, 2)
            rhs = chosen @ x.double().unsqueeze(-1)
            solution = (torch.linalg.pinv(gram, hermitian=True) @ rhs).squeeze(-1)  # (n, k+1)
            new_residual = (x.double() - (solution.unsqueeze(-1) * chosen).sum(dim=1)).to(x.dtype)
            coefs[:, : k + 1] = torch.where(active.unsqueeze(-1), solution.to(x.dtype), coefs[:, : k + 1])
        else:
            step = scores.gather(1, best.unsqueeze(-1))  # (n, 1)
            new_residual = residual - step * atoms[best]
            coefs[:, k] = torch.where(active, step.squeeze(-1), coefs[:, k])
        residual = torch.where(active.unsqueeze(-1), new_residual, residual)
    return ids, coefs, residual


def _pursuit(
    tokens: torch.Tensor,
    dictionary: torch.Tensor,
    *,
    max_atoms: int,
    residual_tol: float,
    chunk_size: int,
    dtype: torch.dtype,
    orthogonal: bool,
) -> PursuitResult:
    if max_atoms < 1:
        raise ValueError(f"max_atoms must be >= 1, got {max_atoms}")
    if residual_tol < 0:
        raise ValueError(f"residual_tol must be >= 0, got {residual_tol}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if dictionary.dim() != 2 or tokens.shape[-1] != dictionary.shape[-1]:
        raise ValueError(
            f"expected tokens (..., D) and dictionary (V, D), "
            f"got {tuple(tokens.shape)} and {tuple(dictionary.shape)}"
        )
    atoms = _unit_atoms(dictionary, dtype)
    flat = tokens.reshape(-1, tokens.shape[-1])
    if not torch.isfinite(flat).all():
        raise ValueError("tokens contain NaN or Inf")
    zero = (flat.norm(dim=-1) == 0).nonzero()
    if zero.numel():
        raise ValueError(
            f"token {int(zero[0])} (flattened index) has zero norm; explained variance is undefined"
        )
    pieces = []
    for chunk in flat.split(chunk_size):
        x = chunk.to(device=atoms.device, dtype=dtype)
        ids, coefs, residual = _pursue_chunk(x, atoms, max_atoms, residual_tol, orthogonal)
        explained = 1.0 - residual.double().pow(2).sum(-1) / x.double().pow(2).sum(-1)
        pieces.append((ids, coefs, explained))
    lead = tokens.shape[:-1]
    ids = torch.cat([p[0] for p in pieces]).reshape(*lead, max_atoms)
    return PursuitResult(
        atom_ids=ids,
        coefficients=torch.cat([p[1] for p in pieces]).reshape(*lead, max_atoms),
        explained_variance=torch.cat([p[2] for p in pieces]).reshape(lead),
        atoms_used=(ids >= 0).sum(dim=-1),
    )


def matching_pursuit(
    tokens: torch.Tensor,
    dictionary: torch.Tensor,
    *,
    max_atoms: int = 8,
    residual_tol: float = 1e-3,
    chunk_size: int = 256,
    dtype: torch.dtype = torch.float32,
) -> PursuitResult:
    """Matching pursuit of tokens (..., D) over dictionary rows (V, D).

    Each step picks the unit atom with the largest ``|<r, ê>|`` and subtracts its projection.
    A token stops after ``max_atoms`` steps or once ``||r|| / ||x|| <= residual_tol``.
    Tokens are processed ``chunk_size`` at a time (peak extra memory ≈ chunk_size·V scores);
    ``dtype`` is the compute dtype of atoms, residuals and scores.
    """
    options = {"max_atoms": max_atoms, "residual_tol": residual_tol, "chunk_size": chunk_size, "dtype": dtype}
    return _pursuit(tokens, dictionary, orthogonal=False, **options)


def orthogonal_matching_pursuit(
    tokens: torch.Tensor,
    dictionary: torch.Tensor,
    *,
    max_atoms: int = 8,
    residual_tol: float = 1e-3,
    chunk_size: int = 256,
    dtype: torch.dtype = torch.float32,
) -> PursuitResult:
    """Orthogonal matching pursuit of tokens (..., D) over dictionary rows (V, D).

    Selection as in MP (chosen atoms excluded); after each step all coefficients are refit by
    least squares on the chosen atoms (float64 normal equations, pseudo-inverse), so the
    residual is orthogonal to them; at most min(max_atoms, V) atoms. Stopping, chunking and
    ``dtype`` as in ``matching_pursuit``; extra memory ≈ chunk_size·max_atoms·D float64 for
    the chosen atoms.
    """
    options = {"max_atoms": max_atoms, "residual_tol": residual_tol, "chunk_size": chunk_size, "dtype": dtype}
    return _pursuit(tokens, dictionary, orthogonal=True, **options)


def word_token_ids(
    tokenizer: PreTrainedTokenizerBase, *, min_chars: int = 2, alpha_only: bool = True
) -> torch.Tensor:
    """Ids (sorted, long) of vocabulary entries that are real word pieces.

    Excluded: special and added tokens, SentencePiece byte tokens ``<0x..>``, and pieces whose
    decoded text (surrounding whitespace / word-boundary marker removed) is shorter than
    ``min_chars`` characters. With ``alpha_only`` the text must be all letters
    (``str.isalpha``); otherwise it must contain at least one letter (so punctuation and
    digit-only pieces are still dropped).

    Args:
        tokenizer: a transformers tokenizer (needs ``len``, ``convert_ids_to_tokens``,
            ``batch_decode``, ``all_special_ids`` and ``get_added_vocab``).
    """
    excluded = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    ids = list(range(len(tokenizer)))
    pieces = tokenizer.convert_ids_to_tokens(ids)
    texts = tokenizer.batch_decode([[i] for i in ids])
    kept = []
    for token_id, piece, text in zip(ids, pieces, texts, strict=True):
        if token_id in excluded or _BYTE_TOKEN.match(piece):
            continue
        word = text.strip()
        if len(word) < min_chars:
            continue
        if word.isalpha() if alpha_only else any(ch.isalpha() for ch in word):
            kept.append(token_id)
    return torch.tensor(kept, dtype=torch.long)


def _id_sets(per_patch: Sequence[Iterable[int]] | torch.Tensor) -> list[set[int]]:
    # Negative ids are padding (e.g. the -1 slots of PursuitResult.atom_ids).
    rows = per_patch.tolist() if isinstance(per_patch, torch.Tensor) else per_patch
    return [{int(i) for i in row if int(i) >= 0} for row in rows]


def word_match_counts(
    recovered: Sequence[Iterable[int]] | torch.Tensor,
    truth: Sequence[Iterable[int]] | torch.Tensor,
) -> dict[str, int]:
    """The sums behind ``precision_recall_of_words``; add them up over batches, then ``word_scores``.

    Per patch p, with sets R_p (recovered, duplicates and negative padding ids dropped) and
    T_p (true label word ids), over the patches with a non-empty T_p: ``true_positives`` =
    Σ|R_p ∩ T_p|, ``recovered_total`` = Σ|R_p|, ``truth_total`` = Σ|T_p|, ``patches_scored``;
    ``patches_skipped_unlabelled`` counts the patches with an empty T_p.

    Args:
        recovered: P per-patch id collections, or a (P, K) tensor padded with -1.
        truth: P per-patch id collections, or a (P, K) tensor padded with -1.
    """
    recovered_sets, truth_sets = _id_sets(recovered), _id_sets(truth)
    if len(recovered_sets) != len(truth_sets):
        raise ValueError(f"recovered has {len(recovered_sets)} patches but truth has {len(truth_sets)}")
    pairs = [(r, t) for r, t in zip(recovered_sets, truth_sets, strict=True) if t]
    return {
        "true_positives": sum(len(r & t) for r, t in pairs),
        "recovered_total": sum(len(r) for r, _ in pairs),
        "truth_total": sum(len(t) for _, t in pairs),
        "patches_scored": len(pairs),
        "patches_skipped_unlabelled": len(truth_sets) - len(pairs),
    }


def word_scores(counts: Mapping[str, int]) -> dict[str, float | None]:
    """Micro-averaged ``precision``, ``recall`` and ``f1`` of (summed) ``word_match_counts``.

    ``precision = true_positives / recovered_total``, ``recall = true_positives / truth_total``,
    ``f1`` their harmonic mean (0 when no word matched); a score whose denominator is 0 is None.
    """
    true_positives = counts["true_positives"]
    precision = true_positives / counts["recovered_total"] if counts["recovered_total"] else None
    recall = true_positives / counts["truth_total"] if counts["truth_total"] else None
    f1 = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if true_positives else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def precision_recall_of_words(
    recovered: Sequence[Iterable[int]] | torch.Tensor,
    truth: Sequence[Iterable[int]] | torch.Tensor,
) -> dict[str, float | int]:
    """Micro-averaged precision/recall of recovered word ids against label word ids, per patch.

    Per patch p, with sets R_p (recovered, duplicates and negative padding ids dropped) and
    T_p (true label word ids): ``precision = Σ|R_p ∩ T_p| / Σ|R_p|``,
    ``recall = Σ|R_p ∩ T_p| / Σ|T_p|``, ``f1`` their harmonic mean (0 when both are 0).
    Patches with an empty T_p carry no label to recover and are skipped (counted).
    ``word_match_counts`` + ``word_scores``, raising where a score would be undefined.

    Args:
        recovered: P per-patch id collections, or a (P, K) tensor padded with -1.
        truth: P per-patch id collections, or a (P, K) tensor padded with -1.
    """
    counts = word_match_counts(recovered, truth)
    if counts["truth_total"] == 0:
        patches = counts["patches_scored"] + counts["patches_skipped_unlabelled"]
        raise ValueError(f"none of the {patches} patches has a true label word")
    if counts["recovered_total"] == 0:
        raise ValueError("no word was recovered for any labelled patch; precision is undefined")
    return {**word_scores(counts), **counts}
