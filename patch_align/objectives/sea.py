"""The SEA objective inside the plugin trainer: per-step pair sampling and the pair-weighted InfoNCE term.

`patch_align.sea` holds the method's pieces (labels, sampling, targets, loss); this module joins
them to one training step:
- `step_generator(seed, step, micro_batch)`: a micro-batch's sampling randomness, a pure function
  of the run's `--seed`, the optimizer step and the micro-batch's index in the step over all
  processes, so a resumed run draws the same pairs, and so does any layout of the step's
  micro-batches over processes (W ranks × A accumulation = 1 rank × W·A accumulation).
- `sample_batch_pairs(batch, ...)`: replaces a batch's labels `sea_word_ids` / `sea_scores`
  (B, N_grid, n) by its sampled pairs `sea_pair_batch_index`, `sea_pair_patch_index`,
  `sea_pair_word_ids` (P,) each.
- `sea_pair_loss(...)`: P · InfoNCE of the pairs (a sum over pairs, which the trainer divides by
  the pairs of the whole optimizer step), or an exact, graph-connected 0 when P = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from patch_align.schedules import LambdaSchedule
from patch_align.sea.loss import SeaTemperature, sea_info_nce
from patch_align.sea.sampling import sample_sea_pairs
from patch_align.sea.targets import VocabularyTargets

SEA_LABEL_KEYS = ("sea_word_ids", "sea_scores")
SEA_PAIR_KEYS = ("sea_pair_batch_index", "sea_pair_patch_index", "sea_pair_word_ids")
# the name under which the trainer attaches the temperature module to the LLaVA model
SEA_TEMPERATURE_MODULE = "sea_temperature"


@dataclass(frozen=True)
class SeaLossConfig:
    """What the trainer needs from the SEA flags.

    `grid` (G_h, G_w) is the labels' patch grid (= the training grid); `token_offset` the index
    of patch 0 among the vision tokens (1 with `cls_patch`, whose CLS token has no label).
    """

    schedule: LambdaSchedule
    targets: VocabularyTargets
    grid: tuple[int, int]
    window: int = 2
    temperature: float = 0.07
    learnable_temperature: bool = True
    token_offset: int = 0

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"--sea_window must be >= 1, got {self.window}")
        SeaTemperature(self.temperature, self.learnable_temperature)  # validates --sea_temperature


def step_generator(seed: int, step: int, micro_batch: int) -> torch.Generator:
    """A CPU generator seeded from (seed, step, micro_batch) through numpy's SeedSequence (well mixed).

    `micro_batch` = a × W + r for the a-th accumulated micro-batch of process r of W: accelerate
    gives that micro-batch the sampler's batch (step × A + a) × W + r, which is batch a × W + r of
    the step for any W (see tests/test_sampler.py)."""
    state = np.random.SeedSequence([seed, step, micro_batch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def sample_batch_pairs(
    batch: dict, grid: tuple[int, int], window: int, generator: torch.Generator
) -> int:
    """Replace the batch's SEA labels by sampled pairs, in place; returns P, the number of pairs."""
    word_ids, scores = (batch.pop(key) for key in SEA_LABEL_KEYS)
    pairs = sample_sea_pairs(word_ids.cpu(), scores.cpu(), grid, window, generator=generator)
    batch["sea_pair_batch_index"] = pairs.batch_index
    batch["sea_pair_patch_index"] = pairs.patch_index
    batch["sea_pair_word_ids"] = pairs.word_ids
    return len(pairs)


@dataclass
class SeaTermResult:
    """`loss_sum` = P · InfoNCE (0-dim, with graph), `correct` = patch→word top-1 hits, `pairs` = P."""

    loss_sum: torch.Tensor
    correct: float
    pairs: int


def sea_pair_loss(
    image_features: torch.Tensor,
    pair_batch_index: torch.Tensor,
    pair_patch_index: torch.Tensor,
    pair_word_ids: torch.Tensor,
    targets: VocabularyTargets,
    embedding: nn.Module,
    temperature: torch.Tensor,
    token_offset: int = 0,
) -> SeaTermResult:
    """InfoNCE of the sampled pairs, times P.

    `image_features` (B, N, D) projector outputs; pair tensors (P,) long: sample, grid patch
    (row-major, without CLS) and vocabulary id; `temperature` a 0-dim tensor τ. With P = 0 the
    sum is `0 · (features.sum() + τ)`: exactly 0, and every projector parameter and the
    temperature still get a (zero) gradient, as DDP and ZeRO need.
    """
    if image_features.ndim != 3:
        raise ValueError(f"image_features must be (B, N, D), got shape {tuple(image_features.shape)}")
    pairs = int(pair_word_ids.shape[0])
    if pairs == 0:
        zero = (image_features.float().sum() + temperature.float()) * 0.0
        return SeaTermResult(zero, 0.0, 0)
    num_images, tokens, _ = image_features.shape
    token_index = pair_patch_index.to(image_features.device) + token_offset
    sample_index = pair_batch_index.to(image_features.device)
    if int(token_index.max()) >= tokens or int(sample_index.max()) >= num_images:
        raise ValueError(
            f"SEA pairs point outside the image features (B={num_images}, N={tokens}): the label grid "
            f"does not match the vision tower's"
        )
    patch_tokens = image_features[sample_index, token_index]  # (P, D)
    word_targets = targets(embedding, pair_word_ids)  # (P, D)
    output = sea_info_nce(patch_tokens, word_targets, temperature.float())
    return SeaTermResult(output.loss * pairs, output.accuracy * pairs, pairs)
