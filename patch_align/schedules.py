"""The weight β of the patch loss as a pure function of the optimizer step, and the callback applying it.

`beta_at_step(step, total_steps, schedule)` depends on nothing but its arguments, so a run
resumed from a checkpoint (which restores `state.global_step`) continues on the same curve.

Our conventions (the paper says only "β ramped linearly from 0 to 5 over training"):
- `step` is the number of optimizer updates already done (`state.global_step`); every
  micro-batch of update k uses β(k).
- The first `warmup_steps` updates use β = 0 (caption loss alone); the schedule then runs
  over the remaining `total_steps − warmup_steps` updates with progress
  p = (step − warmup_steps) / (total_steps − warmup_steps) ∈ [0, 1), like LR schedulers.
- `linear`: β = β_max · p (0 at the start, β_max · (T−1)/T on the last update);
  `cosine`: β = β_max · (1 − cos(π p)) / 2 (a smooth ramp); `constant`: β = β_max.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from transformers import TrainerCallback

BETA_SCHEDULES = ("linear", "cosine", "constant")


@dataclass(frozen=True)
class BetaSchedule:
    """`--patch_beta_schedule`, `--patch_loss_weight` (β_max) and `--patch_beta_warmup_steps`."""

    kind: str = "linear"
    beta_max: float = 5.0
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.kind not in BETA_SCHEDULES:
            raise ValueError(f"--patch_beta_schedule must be one of {BETA_SCHEDULES}, got {self.kind!r}")
        if not (math.isfinite(self.beta_max) and self.beta_max >= 0):
            raise ValueError(f"--patch_loss_weight must be a finite number >= 0, got {self.beta_max}")
        if self.warmup_steps < 0:
            raise ValueError(f"--patch_beta_warmup_steps must be >= 0, got {self.warmup_steps}")


def beta_at_step(step: int, total_steps: int, schedule: BetaSchedule) -> float:
    """β for optimizer update `step` (0-based) of a run of `total_steps` updates."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if step < schedule.warmup_steps:
        return 0.0
    ramp_steps = max(total_steps - schedule.warmup_steps, 1)
    progress = min((step - schedule.warmup_steps) / ramp_steps, 1.0)
    if schedule.kind == "linear":
        return schedule.beta_max * progress
    if schedule.kind == "cosine":
        return schedule.beta_max * (1.0 - math.cos(math.pi * progress)) / 2.0
    return schedule.beta_max


class PatchBetaCallback(TrainerCallback):
    """Sets `self.beta` = β(state.global_step) at the start of training and of every update.

    The trainer reads `beta` for each micro-batch and logs it (`patch_beta`).
    """

    def __init__(self, schedule: BetaSchedule) -> None:
        self.schedule = schedule
        self.beta = 0.0

    def _apply(self, state) -> None:
        self.beta = beta_at_step(state.global_step, state.max_steps, self.schedule)

    def on_train_begin(self, args, state, control, **kwargs):
        self._apply(state)

    def on_step_begin(self, args, state, control, **kwargs):
        self._apply(state)
