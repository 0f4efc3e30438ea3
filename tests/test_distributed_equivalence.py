"""Two processes equal one: 2 ranks × batch b train exactly like 1 rank × batch 2b.

Stage 1 on the fixture models, 4 optimizer steps of the same global batches (the same 4 samples
per step: accelerate hands rank r the sampler's batches r, r + 2, ..., so a step of 2 ranks × 2,
or of 2 ranks × 2 accumulated micro-batches × 1, holds the samples of 1 rank's batch of 4), the
same seed, constant β; under torchrun (gloo, plain DDP) and under the deepspeed launcher with
`scripts/zero2.json` and `scripts/zero3.json`. Every logged value (total loss, `loss_caption`,
`loss_patch`, β, mean cosine, regions per step, the PAD counters, the gradient norm) and the
final projector weights must agree.

SEA's InfoNCE takes its negatives from its micro-batch, so it depends on how a step is cut into
micro-batches: there the equivalence that holds is 2 ranks × batch 2 = 1 rank × 2 accumulated
micro-batches × batch 2 (same micro-batches, same pairs: see `step_generator`).

Tolerance: relative 1e-6 for logged values, absolute 1e-6 for the projector weights (|w| ≤ 0.3).
Both runs compute the same float32 sums, only over differently shaped batches (other padding,
other reduction order), so they differ by rounding: measured ≤ 1.3e-7 relative and 1.2e-7
absolute (docs/distributed.md).
A wrong normalisation changes values by far more (see the mutation tests at the end, which run
the same comparison with the cross-process counts removed or doubled).
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
from test_sea_train import write_colour_labels

pytestmark = pytest.mark.slow  # each run starts 1-2 processes that load the models (5-8 s)

RELATIVE_TOLERANCE = 1e-6
WEIGHT_TOLERANCE = 1e-6
CAPTION_KEYS = ("loss", "grad_norm", "learning_rate")
KEYS = {
    "caption": CAPTION_KEYS,
    "patch": (
        *CAPTION_KEYS, "loss_caption", "loss_patch", "patch_beta", "patch_cosine", "patch_regions",
        "pad_regions_skipped", "pad_regions_outside", "pad_regions_fallback",
    ),
    "sea": (
        *CAPTION_KEYS, "loss_caption", "loss_sea", "sea_lambda", "sea_temperature", "sea_pairs",
        "sea_accuracy",
    ),
}
# per-device batch, accumulation, launcher, DeepSpeed config: each 4 samples per step over 2 ranks
LAYOUTS = {
    "ddp-2x2": (2, 1, "torchrun", None),
    "ddp-2x2x1": (1, 2, "torchrun", None),
    "zero2-2x2": (2, 1, "deepspeed", "scripts/zero2.json"),
    "zero3-2x2x1": (1, 2, "deepspeed", "scripts/zero3.json"),
}
# 1 process, per-device batch and accumulation, of each objective's reference run
REFERENCES = {"caption": (4, 1), "patch": (4, 1), "sea": (2, 2)}

# The patch-aligned entry with a trainer that mis-counts the regions R_step and SEA pairs P_step
# across processes.
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
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    data, pad = write_uneven_stage1_data(root / "data")
    return {"data": data, "pad": pad, "sea_labels": write_colour_labels(root / "sea")}


def objective_flags(objective: str, out: Path, inputs: dict[str, Path], **flags) -> list[str]:
    """Stage-1 flags for plain LLaVA (`caption`), patch-cosine (`patch`) or SEA (`sea`)."""
    if objective == "sea":
        flags.update(align_objective="sea", sea_labels=inputs["sea_labels"])
    return stage1_flags(out, inputs["data"], inputs["pad"] if objective == "patch" else None, **flags)


def run(objective: str, out: Path, inputs, *, layout: str | None = None, **flags) -> Path:
    """One stage-1 run: the objective's 1-process reference without a `layout`, else 2 processes."""
    batch, accumulation = REFERENCES[objective]
    processes, launcher, zero_config = 1, "python", None
    if layout is not None:
        (batch, accumulation, launcher, zero_config), processes = LAYOUTS[layout], 2
    flags.update(per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation)
    if zero_config:
        flags.update(deepspeed=zero_config)
    entry = LLAVA_ENTRY if objective == "caption" else PATCH_ENTRY
    argv = objective_flags(objective, out, inputs, **flags)
    assert_succeeded(launch(entry, argv, processes=processes, launcher=launcher))
    return out


class References(dict):
    """Each objective's 1-process run, made when a test first asks for it."""

    def __init__(self, inputs: dict[str, Path], tmp_path_factory):
        super().__init__()
        self.inputs, self.tmp_path_factory = inputs, tmp_path_factory

    def __missing__(self, objective: str) -> Path:
        self[objective] = run(objective, self.tmp_path_factory.mktemp(objective) / "1-process", self.inputs)
        return self[objective]


@pytest.fixture(scope="module")
def references(inputs, tmp_path_factory) -> References:
    return References(inputs, tmp_path_factory)


def assert_equivalent(differences: dict[str, float]) -> None:
    weights = differences.pop("mm_projector")
    assert weights <= WEIGHT_TOLERANCE, f"projector weights differ by {weights}"
    too_far = {key: value for key, value in differences.items() if value > RELATIVE_TOLERANCE}
    assert not too_far, f"relative differences above {RELATIVE_TOLERANCE}: {too_far}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_patch_aligned_stage1_on_two_ranks_equals_one_rank(layout, inputs, references, tmp_path):
    out = run("patch", tmp_path / layout, inputs, layout=layout)
    assert_equivalent(run_differences(references["patch"], out, KEYS["patch"]))
    # the PAD counters compared above are summed over processes, and not all 0
    assert step_logs(out)[-1]["pad_regions_fallback"] > 0


@pytest.mark.parametrize("layout", ["ddp-2x2", "ddp-2x2x1"])
def test_caption_only_stage1_on_two_ranks_equals_one_rank(layout, inputs, references, tmp_path):
    out = run("caption", tmp_path / layout, inputs, layout=layout)
    assert_equivalent(run_differences(references["caption"], out, KEYS["caption"]))


def test_sea_stage1_on_two_ranks_equals_one_rank_accumulating_the_same_micro_batches(
    inputs, references, tmp_path
):
    out = run("sea", tmp_path / "ddp-2x2", inputs, layout="ddp-2x2")
    assert_equivalent(run_differences(references["sea"], out, KEYS["sea"]))
    assert all(entry["sea_pairs"] > 0 for entry in step_logs(out))


# The comparisons above are only worth something if they fail when the normalisation across
# processes is wrong: here they must find differences far above their tolerance.


@pytest.mark.parametrize("mutation", ["removed", "doubled"])
@pytest.mark.parametrize(("objective", "loss"), [("patch", "loss_patch"), ("sea", "loss_sea")])
def test_a_count_not_summed_once_over_processes_breaks_the_equivalence(
    objective, loss, mutation, inputs, references, tmp_path
):
    entry = tmp_path / "mutant_entry.py"
    entry.write_text(MUTANT_ENTRY)
    out = tmp_path / mutation
    argv = [mutation, *objective_flags(objective, out, inputs, per_device_train_batch_size=2)]
    assert_succeeded(launch((str(entry),), argv, processes=2))
    differences = run_differences(references[objective], out, KEYS[objective])
    assert differences[loss] > 100 * RELATIVE_TOLERANCE, differences
    assert differences["mm_projector"] > 100 * WEIGHT_TOLERANCE, differences


def test_caption_tokens_not_counted_over_processes_break_the_equivalence(inputs, references, tmp_path):
    # without the token count summed over ranks, each rank's caption loss is its own token mean
    out = tmp_path / "per-rank-mean"
    run("caption", out, inputs, layout="ddp-2x2", average_tokens_across_devices=False)
    differences = run_differences(references["caption"], out, KEYS["caption"])
    assert differences["loss"] > 100 * RELATIVE_TOLERANCE, differences
    assert differences["mm_projector"] > 100 * WEIGHT_TOLERANCE, differences
