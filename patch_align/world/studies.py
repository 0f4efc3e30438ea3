"""`patch-align demo --study NAME`: the ablations the papers call for, as data.

A study is a preset and a list of runs; each run is a method with flags that replace or add to
that method's stage-1 / stage-2 flags (`demo.stage1_command`, `demo.stage2_command`), so a study
changes exactly the flags it names and nothing else. Every run trains on the same world, data,
steps and seed. Runs: docs/demo.md, "Studies".
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from patch_align.world.demo import FULL_PRESET, DemoPreset, RunSpec


@dataclass(frozen=True)
class StudyRun:
    """One run of a study: `variant` names it; `params` are what the figure shows it by.

    `stage1_of`: the variant whose stage 1 this run's stage 2 starts from (a stage-2 treatment
    of the same projector); None: it trains its own stage 1.
    """

    variant: str
    method: str
    params: tuple[tuple[str, Any], ...]
    stage1_flags: tuple[str, ...] = ()
    stage2_flags: tuple[str, ...] = ()
    stage1_of: str | None = None

    def param(self, key: str) -> Any:
        return dict(self.params).get(key)


@dataclass(frozen=True)
class Study:
    """A question, the preset it is asked in, its runs, and how its figure is drawn: one panel per
    number in `figure_keys`, `x` on the horizontal axis (numeric: lines; otherwise bars), one line
    or bar colour per value of `series`."""

    name: str
    question: str
    preset: DemoPreset
    runs: tuple[StudyRun, ...]
    x: str
    series: str
    figure_keys: tuple[str, ...]

    def __post_init__(self) -> None:
        variants = [r.variant for r in self.runs]
        if len(set(variants)) != len(variants):
            raise ValueError(f"study {self.name}: variant names must be unique, got {variants}")
        for run in self.runs:
            owner = next((r for r in self.runs if r.variant == run.stage1_of), None)
            if run.stage1_of is not None and (owner is None or owner.stage1_of is not None
                                              or owner.method != run.method or run.stage1_flags):
                raise ValueError(f"study {self.name}: run {run.variant} shares the stage 1 of "
                                 f"{run.stage1_of!r}, which must be a run of the same method with its own "
                                 "stage 1 (and the sharing run has no stage-1 flags of its own)")

    def run_specs(self, seeds: int, out: Path) -> list[RunSpec]:
        """The study's runs at seeds 0..`seeds`-1, with folders under `out`/runs."""
        specs = []
        for seed in range(seeds):
            for run in self.runs:
                shared = out / "runs" / f"{run.stage1_of}-seed{seed}" if run.stage1_of else None
                specs.append(RunSpec(run.method, seed, out / "runs" / f"{run.variant}-seed{seed}",
                                     variant=run.variant, stage1_flags=run.stage1_flags,
                                     stage2_flags=run.stage2_flags, stage1_root=shared))
        return specs


# Stage 1 as --full; stage 2 at the default preset's length, evaluated once: the studies ask what
# stage 1 builds and what stage 2 keeps of it, in a budget of minutes per study on 2 cores.
STUDY_PRESET = replace(FULL_PRESET, name="study",
                       stage2=replace(FULL_PRESET.stage2, steps=150),
                       stage2_eval_every=None, curve_eval_limit=None)


def _beta_runs() -> tuple[StudyRun, ...]:
    # β_max 0 is the same run under either schedule (β is 0 throughout): trained once
    runs = [StudyRun("beta0", "patch_align", (("beta_max", 0.0), ("schedule", None)),
                     ("--patch_loss_weight", "0", "--patch_beta_schedule", "constant"))]
    for schedule in ("linear", "constant"):
        for beta in (1.0, 5.0, 20.0):
            runs.append(StudyRun(f"beta{beta:g}-{schedule}", "patch_align",
                                 (("beta_max", beta), ("schedule", schedule)),
                                 ("--patch_loss_weight", f"{beta:g}", "--patch_beta_schedule", schedule)))
    return tuple(runs)


BETA_STUDY = Study(
    name="beta",
    question="How do β_max (the final weight of L_patch) and its schedule shape what stage 1 builds and "
             "what a short stage 2 reads from it?",
    preset=replace(STUDY_PRESET, analyses=("stage1", "held_out_pairs", "size_words")),
    runs=_beta_runs(), x="beta_max", series="schedule",
    figure_keys=("align_miou", "pointing_accuracy", "mp_recall", "pointing_held_out_pairs",
                 "mp_recall_size_words", "delta_h", "rec_acc50", "vqa_accuracy"))


def _projector_runs() -> tuple[StudyRun, ...]:
    runs = []
    for method, short in (("caption", "caption"), ("patch_align", "patch")):
        for projector in ("linear", "mlp2x_gelu"):
            runs.append(StudyRun(f"{short}-{projector}", method,
                                 (("projector", projector), ("objective", method), ("stage2", "as LLM")),
                                 ("--mm_projector_type", projector), ("--mm_projector_type", projector)))
        # stage 2's treatment of the same mlp2x_gelu projector: upstream trains it at the LLM's rate
        for treatment, flags in (("lr 1e-4", ("--mm_projector_lr", "1e-4")),
                                 ("frozen", ("--freeze_mm_mlp_adapter", "True"))):
            runs.append(StudyRun(f"{short}-mlp2x_gelu-s2-{treatment.replace(' ', '')}", method,
                                 (("projector", "mlp2x_gelu"), ("objective", method), ("stage2", treatment)),
                                 stage2_flags=flags, stage1_of=f"{short}-mlp2x_gelu"))
    return tuple(runs)


PROJECTOR_STUDY = Study(
    name="projector",
    question="Does the projector's form (linear vs mlp2x_gelu) change what each objective builds, and does "
             "the alignment survive stage 2 when stage 2 trains the projector at the LLM's rate, at a "
             "tenth of it, or not at all?",
    preset=replace(STUDY_PRESET, analyses=("stage1", "stage2")),
    runs=_projector_runs(), x="variant", series="objective",
    figure_keys=("align_miou", "pointing_accuracy", "align_miou_stage2", "pointing_accuracy_stage2",
                 "delta_h", "rec_acc50", "vqa_accuracy"))

STUDIES = {study.name: study for study in (BETA_STUDY, PROJECTOR_STUDY)}
