"""Two processes equal one: 2 ranks × batch b train exactly like 1 rank × batch 2b.

Stage 1 on the fixture models, 4 optimizer steps of the same global batches (the same 4 samples
per step: accelerate hands rank r the sampler's batches r, r + 2, ..., so a step of 2 ranks × 2,
or of 2 ranks × 2 accumulated micro-batches × 1, holds the samples of 1 rank's batch of 4), the
same seed, constant β; under torchrun (gloo, plain DDP) and under the deepspeed launcher with
`scripts/zero2.json` and `scripts/zero3.json`. Every logged value (total loss, `loss_caption`,
`loss_patch`, β, mean cosine, regions per step, the PAD counters, the gradient norm) and the
final projector weights must agree.

Tolerance: relative 1e-6 for logged values, absolute 1e-6 for the projector weights (|w| ≤ 0.3).
Both runs compute the same float32 sums, only over differently shaped batches (other padding,
other reduction order), so they differ by rounding: measured ≤ 1e-7 relative and 3e-8 absolute.
A wrong normalisation changes values by tens of percent (see the mutation tests at the end,
which run the same comparison with the cross-process count removed or doubled).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from distributed_runs import (
    LLAVA_ENTRY,
    PATCH_ENTRY,
    assert_succeeded,
    launch,
    run_differences,
    stage1_flags,
    step_logs,
    write_uneven_stage1_data,
)

pytestmark = pytest.mark.slow  # each run starts 1-2 processes that load the models (5-8 s)

RELATIVE_TOLERANCE = 1e-6
WEIGHT_TOLERANCE = 1e-6
CAPTION_KEYS = ("loss", "grad_norm", "learning_rate")
PATCH_KEYS = (
    *CAPTION_KEYS, "loss_caption", "loss_patch", "patch_beta", "patch_cosine", "patch_regions",
    "pad_regions_skipped", "pad_regions_outside", "pad_regions_fallback",
)
# per-device batch, accumulation, launcher, DeepSpeed config: each 4 samples per step over 2 ranks
LAYOUTS = {
    "ddp-2x2": (2, 1, "torchrun", None),
    "ddp-2x2x1": (1, 2, "torchrun", None),
    "zero2-2x2": (2, 1, "deepspeed", "scripts/zero2.json"),
    "zero3-2x2x1": (1, 2, "deepspeed", "scripts/zero3.json"),
}

# The patch-aligned entry with a trainer whose region count R_step is mis-counted across processes.
MUTANT_ENTRY = """
import sys, torch
from llava.train.train import train
from patch_align.recipe import PatchAlignRecipe
from patch_align.trainer import PatchAlignTrainer

MUTATION = sys.argv.pop(1)

class MiscountingTrainer(PatchAlignTrainer):
    def _sum_over_processes(self, count, device):
        if MUTATION == "removed":  # this process's count only
            return torch.tensor(count, device=device)
        return super()._sum_over_processes(count, device) * 2  # "doubled"

train(PatchAlignRecipe(trainer_class=MiscountingTrainer), sys.argv[1:])
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    return write_uneven_stage1_data(tmp_path_factory.mktemp("uneven"))


def run(entry, out: Path, data, *, pad: bool, layout: str | None = None, **flags) -> Path:
    """One stage-1 run: 1 process × batch 4 without a `layout`, else 2 processes laid out as it says."""
    json_path, pad_path = data
    processes, launcher = 1, "python"
    if layout is not None:
        batch, accumulation, launcher, zero_config = LAYOUTS[layout]
        processes = 2
        flags.update(per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation)
        if zero_config:
            flags.update(deepspeed=zero_config)
    argv = stage1_flags(out, json_path, pad_path if pad else None, **flags)
    assert_succeeded(launch(entry, argv, processes=processes, launcher=launcher))
    return out


@pytest.fixture(scope="module")
def patch_reference(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("patch") / "1x4"
    return run(PATCH_ENTRY, out, data, pad=True)


@pytest.fixture(scope="module")
def caption_reference(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("caption") / "1x4"
    return run(LLAVA_ENTRY, out, data, pad=False)


def assert_equivalent(differences: dict[str, float]) -> None:
    weights = differences.pop("mm_projector")
    assert weights <= WEIGHT_TOLERANCE, f"projector weights differ by {weights}"
    too_far = {key: value for key, value in differences.items() if value > RELATIVE_TOLERANCE}
    assert not too_far, f"relative differences above {RELATIVE_TOLERANCE}: {too_far}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_patch_aligned_stage1_on_two_ranks_equals_one_rank(layout, data, patch_reference, tmp_path):
    out = run(PATCH_ENTRY, tmp_path / layout, data, pad=True, layout=layout)
    assert_equivalent(run_differences(patch_reference, out, PATCH_KEYS))
    # the PAD counters compared above are summed over processes, and not all 0
    assert step_logs(out)[-1]["pad_regions_fallback"] > 0


@pytest.mark.parametrize("layout", ["ddp-2x2", "ddp-2x2x1"])
def test_caption_only_stage1_on_two_ranks_equals_one_rank(layout, data, caption_reference, tmp_path):
    out = run(LLAVA_ENTRY, tmp_path / layout, data, pad=False, layout=layout)
    assert_equivalent(run_differences(caption_reference, out, CAPTION_KEYS))


# The comparison above is only worth something if it fails when the normalisation across processes
# is wrong: here it must find differences far above its tolerance.


@pytest.mark.parametrize("mutation", ["removed", "doubled"])
def test_a_region_count_not_summed_once_over_processes_breaks_the_equivalence(
    mutation, data, patch_reference, tmp_path
):
    entry = tmp_path / "mutant_entry.py"
    entry.write_text(MUTANT_ENTRY)
    json_path, pad_path = data
    out = tmp_path / mutation
    argv = [mutation, *stage1_flags(out, json_path, pad_path, per_device_train_batch_size=2)]
    assert_succeeded(launch((str(entry),), argv, processes=2))
    differences = run_differences(patch_reference, out, PATCH_KEYS)
    assert differences["loss_patch"] > 100 * RELATIVE_TOLERANCE, differences
    assert differences["mm_projector"] > 100 * WEIGHT_TOLERANCE, differences


def test_caption_tokens_not_counted_over_processes_break_the_equivalence(data, caption_reference, tmp_path):
    # without the token count summed over ranks, each rank's caption loss is its own token mean
    out = run(
        LLAVA_ENTRY, tmp_path / "per-rank-mean", data, pad=False, layout="ddp-2x2",
        average_tokens_across_devices=False,
    )
    differences = run_differences(caption_reference, out, CAPTION_KEYS)
    assert differences["loss"] > 100 * RELATIVE_TOLERANCE, differences
    assert differences["mm_projector"] > 100 * WEIGHT_TOLERANCE, differences
