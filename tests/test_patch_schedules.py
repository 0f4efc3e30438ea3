"""Specification of the β schedule: a pure function of the optimizer step."""

import math

import pytest

from patch_align.schedules import BetaSchedule, beta_at_step


@pytest.mark.parametrize(
    ("step", "expected"), [(0, 0.0), (6, 1.25), (12, 2.5), (23, 5.0 * 23 / 24), (30, 5.0)]
)
def test_linear_ramps_from_zero_to_beta_max_over_the_run(step, expected):
    assert beta_at_step(step, 24, BetaSchedule("linear", 5.0)) == pytest.approx(expected)


@pytest.mark.parametrize(("step", "expected"), [(0, 0.0), (5, 1.0), (10, 2.0), (15, 2.0)])
def test_cosine_rises_smoothly_to_beta_max(step, expected):
    assert beta_at_step(step, 10, BetaSchedule("cosine", 2.0)) == pytest.approx(expected)


def test_cosine_quarter_point():
    assert beta_at_step(1, 4, BetaSchedule("cosine", 2.0)) == pytest.approx(1 - math.cos(math.pi / 4))


@pytest.mark.parametrize("step", [0, 3, 99])
def test_constant_is_beta_max_at_every_step(step):
    assert beta_at_step(step, 100, BetaSchedule("constant", 3.0)) == 3.0


def test_warmup_holds_beta_at_zero_then_runs_the_schedule_over_the_rest():
    schedule = BetaSchedule("linear", 4.0, warmup_steps=4)
    assert [beta_at_step(s, 12, schedule) for s in (0, 3, 4, 6, 10)] == pytest.approx([0, 0, 0, 1.0, 3.0])
    assert beta_at_step(2, 12, BetaSchedule("constant", 4.0, warmup_steps=4)) == 0.0
    assert beta_at_step(4, 12, BetaSchedule("constant", 4.0, warmup_steps=4)) == 4.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "step"}, "--patch_beta_schedule"),
        ({"beta_max": -1.0}, "--patch_loss_weight"),
        ({"beta_max": math.nan}, "--patch_loss_weight"),
        ({"warmup_steps": -2}, "--patch_beta_warmup_steps"),
    ],
)
def test_bad_schedule_flags_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BetaSchedule(**kwargs)


def test_total_steps_must_be_positive():
    with pytest.raises(ValueError, match="total_steps"):
        beta_at_step(0, 0, BetaSchedule())
