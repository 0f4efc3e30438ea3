"""The weights β (patch loss) and λ (SEA loss) as pure functions of the optimizer step, and the callback
applying them.

`beta_at_step(step, total_steps, schedule)` and `lambda_at_step(...)` depend on nothing but their
arguments, so a run resumed from a checkpoint (which restores `state.global_step`) continues on the
same curve. λ follows exactly the conventions below for β (its own flags, default `constant`).

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
LAMBDA_SCHEDULES = BETA_SCHEDULES


def _check_schedule(kind: str, weight_max: float, warmup_steps: int, flags: tuple[str, str, str]) -> None:
    schedule_flag, weight_flag, warmup_flag = flags
    if kind not in BETA_SCHEDULES:
        raise ValueError(f"{schedule_flag} must be one of {BETA_SCHEDULES}, got {kind!r}")
    if not (math.isfinite(weight_max) and weight_max >= 0):
        raise ValueError(f"{weight_flag} must be a finite number >= 0, got {weight_max}")
    if warmup_steps < 0:
        raise ValueError(f"{warmup_flag} must be >= 0, got {warmup_steps}")


def _weight_at_step(step: int, total_steps: int, kind: str, weight_max: float, warmup_steps: int) -> float:
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if step < warmup_steps:
        return 0.0
    ramp_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / ramp_steps, 1.0)
    if kind == "linear":
        return weight_max * progress
    if kind == "cosine":
        return weight_max * (1.0 - math.cos(math.pi * progress)) / 2.0
    return weight_max


@dataclass(frozen=True)
class BetaSchedule:
    """`--patch_beta_schedule`, `--patch_loss_weight` (β_max) and `--patch_beta_warmup_steps`."""

    kind: str = "linear"
    beta_max: float = 5.0
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        _check_schedule(
            self.kind,
            self.beta_max,
            self.warmup_steps,
            ("--patch_beta_schedule", "--patch_loss_weight", "--patch_beta_warmup_steps"),
        )


@dataclass(frozen=True)
class LambdaSchedule:
    """`--sea_lambda_schedule`, `--sea_loss_weight` (λ_max) and `--sea_lambda_warmup_steps` (docs/sea.md)."""

    kind: str = "constant"
    lambda_max: float = 1.0
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        _check_schedule(
            self.kind,
            self.lambda_max,
            self.warmup_steps,
            ("--sea_lambda_schedule", "--sea_loss_weight", "--sea_lambda_warmup_steps"),
        )


def beta_at_step(step: int, total_steps: int, schedule: BetaSchedule) -> float:
    """β for optimizer update `step` (0-based) of a run of `total_steps` updates."""
    return _weight_at_step(step, total_steps, schedule.kind, schedule.beta_max, schedule.warmup_steps)


def lambda_at_step(step: int, total_steps: int, schedule: LambdaSchedule) -> float:
    """λ (the SEA weight) for optimizer update `step`: the same conventions as β."""
    return _weight_at_step(step, total_steps, schedule.kind, schedule.lambda_max, schedule.warmup_steps)


class LossWeightCallback(TrainerCallback):
    """Sets `beta` = β(state.global_step) and `sea_lambda` = λ(state.global_step) at the start of
    training and of every update; a weight whose objective is off stays 0.

    The trainer reads both for each micro-batch and logs them (`patch_beta`, `sea_lambda`).
    """

    def __init__(self, beta: BetaSchedule | None, sea_lambda: LambdaSchedule | None = None) -> None:
        self.beta_schedule = beta
        self.lambda_schedule = sea_lambda
        self.beta = 0.0
        self.sea_lambda = 0.0

    def _apply(self, state) -> None:
        if self.beta_schedule is not None:
            self.beta = beta_at_step(state.global_step, state.max_steps, self.beta_schedule)
        if self.lambda_schedule is not None:
            self.sea_lambda = lambda_at_step(state.global_step, state.max_steps, self.lambda_schedule)

    def on_train_begin(self, args, state, control, **kwargs):
        self._apply(state)

    def on_step_begin(self, args, state, control, **kwargs):
        self._apply(state)
