"""Per-step SEA pair sampling: one label per patch, one patch per k×k window, one patch per label.

All functions are pure torch and draw randomness only from the `generator` passed in, so a
step's pairs are reproducible from the generator's state. Tensors and generator must be on
the same device (the labels come from the dataloader on CPU, so sampling normally runs there).

Steps (`sample_sea_pairs`), following the paper where it is specific:
1. `draw_patch_labels`: each patch draws one of its words with probability score / Σ scores
   over its kept words (ids ≥ 0). A patch without a positive score has no label.
2. `localise`: the grid is tiled by k×k windows from the top-left corner (windows on the
   right/bottom edge are cut when k does not divide the grid); each window keeps one of
   its labelled patches, chosen uniformly at random (our choice: the paper does not say
   which; uniform keeps every position equally likely to supervise the projector).
3. `deduplicate`: when several kept patches of the batch drew the same word, one of them,
   chosen uniformly at random (ours), is kept, so InfoNCE has no false negatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def draw_patch_labels(word_ids: torch.Tensor, scores: torch.Tensor, *,
                      generator: torch.Generator) -> torch.Tensor:
    """One word id per patch: `word_ids` (B, N, n) with −1 padding, `scores` (B, N, n) ≥ 0
    → (B, N) long, −1 where the patch has no word with a positive score.
    """
    if word_ids.shape != scores.shape or word_ids.dim() != 3:
        raise ValueError(f"word_ids {tuple(word_ids.shape)} and scores {tuple(scores.shape)} "
                         f"must both be (B, N, n)")
    valid = word_ids >= 0
    if not torch.isfinite(scores).all() or (scores[valid] < 0).any():
        raise ValueError("SEA scores must be finite and >= 0 for every kept word (id >= 0)")
    weights = scores.float().masked_fill(~valid, 0.0).flatten(0, 1)  # (B·N, n)
    labelled = weights.sum(dim=-1) > 0
    drawn = torch.full((weights.shape[0],), -1, dtype=torch.long, device=word_ids.device)
    if labelled.any():
        choice = torch.multinomial(weights[labelled], 1, generator=generator).squeeze(1)
        rows = word_ids.flatten(0, 1)[labelled]
        drawn[labelled] = rows.gather(1, choice.unsqueeze(1)).squeeze(1).long()
    return drawn.view(word_ids.shape[:2])


def localise(labels: torch.Tensor, grid: tuple[int, int], window: int = 2, *,
             generator: torch.Generator) -> torch.Tensor:
    """Keep one labelled patch per `window`×`window` tile: `labels` (B, N = G_h·G_w, row-major),
    −1 = unlabelled → (B, N) bool mask of the kept patches. `window` = 1 keeps every labelled patch.
    """
    rows, cols = grid
    if labels.dim() != 2 or labels.shape[1] != rows * cols:
        raise ValueError(f"labels {tuple(labels.shape)} do not match the {rows}x{cols} grid")
    if window < 1:
        raise ValueError(f"the SEA window must be >= 1, got {window}")
    batch = labels.shape[0]
    # A random key per patch (−1 when unlabelled); the argmax per tile is a uniform pick.
    keys = torch.rand(labels.shape, generator=generator, device=labels.device)
    keys = keys.masked_fill(labels < 0, -1.0).view(batch, rows, cols)
    tiles_r, tiles_c = -(-rows // window), -(-cols // window)
    padded = torch.full((batch, tiles_r * window, tiles_c * window), -1.0, device=labels.device)
    padded[:, :rows, :cols] = keys
    tiles = padded.view(batch, tiles_r, window, tiles_c, window).permute(0, 1, 3, 2, 4)
    tiles = tiles.reshape(batch, tiles_r, tiles_c, window * window)
    best_key, best = tiles.max(dim=-1)  # (B, tiles_r, tiles_c)
    tile_r = torch.arange(tiles_r, device=labels.device).view(1, -1, 1)
    tile_c = torch.arange(tiles_c, device=labels.device).view(1, 1, -1)
    row = tile_r * window + best // window
    col = tile_c * window + best % window
    chosen = best_key >= 0
    keep = torch.zeros((batch, rows * cols), dtype=torch.bool, device=labels.device)
    batch_index = torch.arange(batch, device=labels.device).view(-1, 1, 1).expand_as(row)
    keep[batch_index[chosen], (row * cols + col)[chosen]] = True
    return keep


def deduplicate(word_ids: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """Positions (ascending) of the pairs to keep so every word appears once: `word_ids` (P,) → (P',) long."""
    order = torch.randperm(word_ids.shape[0], generator=generator, device=word_ids.device)
    sorted_words, by_word = torch.sort(word_ids[order], stable=True)
    first = torch.ones_like(sorted_words, dtype=torch.bool)
    first[1:] = sorted_words[1:] != sorted_words[:-1]
    return order[by_word[first]].sort().values


@dataclass(frozen=True)
class SeaPairs:
    """The sampled (patch, word) pairs of a batch, P of them, ordered by (sample, patch)."""

    batch_index: torch.Tensor  # (P,) long: sample of the batch
    patch_index: torch.Tensor  # (P,) long: row-major grid position
    word_ids: torch.Tensor  # (P,) long: vocabulary id

    def __len__(self) -> int:
        return int(self.word_ids.shape[0])


def sample_sea_pairs(word_ids: torch.Tensor, scores: torch.Tensor, grid: tuple[int, int], window: int = 2,
                     *, generator: torch.Generator) -> SeaPairs:
    """Steps 1–3 of the module docstring on a batch of labels (B, N, n); may return 0 pairs."""
    labels = draw_patch_labels(word_ids, scores, generator=generator)
    batch_index, patch_index = localise(labels, grid, window, generator=generator).nonzero(as_tuple=True)
    words = labels[batch_index, patch_index]
    keep = deduplicate(words, generator=generator)
    return SeaPairs(batch_index[keep], patch_index[keep], words[keep])
