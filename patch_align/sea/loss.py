"""SEA's alignment loss: symmetric InfoNCE between sampled projected patch tokens and their words.

For P pairs (x_i, e_i), x_i the projector output of patch i and e_i the LLM-side target of its
word (mean input embedding, a constant), logits z_ij = cos(x_i, e_j) / τ and
L = ½ [CE(z, diag) + CE(zᵀ, diag)]: each patch must pick out its word among the batch's words
and each word its patch. Duplicate words were removed by the sampler, so every off-diagonal
pair is a true negative.

Temperature (the paper calls τ learnable and gives no value): ours starts at τ₀ = 0.07, CLIP's
initial temperature, and is learned as log τ, clamped at τ ≥ 0.01 (CLIP's cap of 100 on
1/τ) so the logits cannot blow up; `learnable=False` keeps τ fixed at its initial value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

INITIAL_TEMPERATURE = 0.07
MIN_TEMPERATURE = 0.01


class SeaTemperature(nn.Module):
    """τ = exp(log τ), clamped below at `MIN_TEMPERATURE`; `forward()` returns τ as a 0-dim tensor."""

    def __init__(self, initial: float = INITIAL_TEMPERATURE, learnable: bool = True) -> None:
        super().__init__()
        if not (math.isfinite(initial) and initial >= MIN_TEMPERATURE):
            raise ValueError(f"the SEA temperature must be >= {MIN_TEMPERATURE}, got {initial}")
        log_temperature = torch.tensor(math.log(initial), dtype=torch.float32)
        if learnable:
            self.log_temperature = nn.Parameter(log_temperature)
        else:
            self.register_buffer("log_temperature", log_temperature)

    def forward(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(min=MIN_TEMPERATURE)


@dataclass(frozen=True)
class SeaLossOutput:
    """`loss` (0-dim, differentiable), patch→word top-1 `accuracy` in [0, 1] and `pairs` = P."""

    loss: torch.Tensor
    accuracy: float
    pairs: int


def sea_info_nce(patch_tokens: torch.Tensor, targets: torch.Tensor,
                 temperature: torch.Tensor) -> SeaLossOutput:
    """Symmetric InfoNCE of `patch_tokens` (P, D) against `targets` (P, D); pair i is (row i, row i).

    `targets` are treated as constants (detached); computed in float32. P must be >= 1
    (the caller skips the SEA term on a step that sampled no pair).
    """
    if patch_tokens.dim() != 2 or patch_tokens.shape != targets.shape:
        raise ValueError(f"patch_tokens {tuple(patch_tokens.shape)} and targets {tuple(targets.shape)} "
                         f"must both be (P, D)")
    pairs = patch_tokens.shape[0]
    if pairs == 0:
        raise ValueError("no SEA pairs: skip the SEA loss for this step")
    tokens = nn.functional.normalize(patch_tokens.float(), dim=-1)
    words = nn.functional.normalize(targets.detach().float().to(tokens.device), dim=-1)
    logits = tokens @ words.T / temperature.to(tokens.device)  # (P, P)
    matching = torch.arange(pairs, device=logits.device)
    patch_to_word = nn.functional.cross_entropy(logits, matching)
    word_to_patch = nn.functional.cross_entropy(logits.T, matching)
    loss = (patch_to_word + word_to_patch) / 2
    accuracy = (logits.detach().argmax(dim=1) == matching).float().mean().item()
    return SeaLossOutput(loss=loss, accuracy=accuracy, pairs=pairs)
