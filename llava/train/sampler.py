"""Batches that hold one modality and similar lengths (`--group_by_modality_length`).

Image–text and text-only samples are never mixed in a batch (so no zero images pad a
text batch), and inside each "megabatch" of `batch_size × world_size` samples the
order follows length, so padding is small. The order is a pure function of
(lengths, batch size, world size, seed, epoch): a resumed run sees the same batches.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


def _megabatches(indices: list[int], lengths: list[int], size: int) -> list[list[int]]:
    chunks = [indices[k : k + size] for k in range(0, len(indices), size)]
    return [sorted(chunk, key=lambda i: abs(lengths[i]), reverse=True) for chunk in chunks]


def modality_length_grouped_indices(
    lengths: list[int], batch_size: int, world_size: int, generator: torch.Generator
) -> list[int]:
    """A permutation of `range(len(lengths))`; `lengths[i] < 0` marks a text-only sample.

    Each modality is shuffled and cut into megabatches of `batch_size * world_size`,
    each sorted by length (longest first). Full megabatches are shuffled together; the
    two incomplete tails are joined into one last megabatch.
    """
    if any(n == 0 for n in lengths):
        raise ValueError("a sample has length 0: every sample needs at least one word")
    size = batch_size * world_size
    groups = [[i for i, n in enumerate(lengths) if n > 0], [i for i, n in enumerate(lengths) if n < 0]]
    full, tails = [], []
    for group in groups:
        if not group:
            continue
        order = [group[k] for k in torch.randperm(len(group), generator=generator).tolist()]
        chunks = _megabatches(order, lengths, size)
        if len(chunks[-1]) < size:
            tails.extend(chunks.pop())
        full.extend(chunks)
    full = [full[k] for k in torch.randperm(len(full), generator=generator).tolist()]
    if tails:
        full.append(tails)
    return [i for chunk in full for i in chunk]


class ModalityLengthGroupedSampler(Sampler[int]):
    def __init__(self, lengths: list[int], batch_size: int, world_size: int, seed: int = 0):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(
            modality_length_grouped_indices(self.lengths, self.batch_size, self.world_size, generator)
        )
