"""The patch-align `TrainRecipe`: its flags, PAD-aware and/or SEA-labelled data, trainer and config entries.

`--align_objective` picks the auxiliary loss: `patch_cosine` (PAD regions, docs/patch_align.md),
`sea` (offline CLIP token labels, docs/sea.md) or `both`.

`llava.train.train.train(PatchAlignRecipe())` runs LLaVA's loop unchanged, with the
dataset, collator and trainer swapped for the plugin's; nothing is monkey-patched.

Flags are used or refused: `patch_*` / `pad_*` flags belong to `patch_cosine`, `sea_*` flags
to `sea` (`both` uses all), and giving one its objective does not use is an error when the
flags are parsed, as are a missing `--pad_path` file or `--sea_labels` folder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from llava.train.arguments import refuse_unsupported_values
from llava.train.data import DataCollatorForSupervisedDataset
from llava.train.recipe import TrainContext, TrainRecipe
from patch_align.align_eval import AlignEvalArguments, AlignEvalCallback, make_align_eval_callbacks
from patch_align.data import (
    PAD_ON_ERROR,
    PadAlignedCollator,
    PadAlignedDataset,
    PadCoverage,
    PatchGrid,
    check_min_pad_coverage,
)
from patch_align.geometry import DEFAULT_PATCH_MASK_THRESHOLD, vision_token_offset
from patch_align.objectives.patch_cosine import PATCH_POOLINGS
from patch_align.objectives.sea import SeaLossConfig
from patch_align.pad import load_pad_index
from patch_align.schedules import BETA_SCHEDULES, LAMBDA_SCHEDULES, BetaSchedule, LambdaSchedule
from patch_align.sea.loss import INITIAL_TEMPERATURE, SeaTemperature
from patch_align.sea.store import SeaLabels
from patch_align.sea.targets import VocabularyTargets
from patch_align.trainer import PatchAlignTrainer, PatchLossConfig

ALIGN_OBJECTIVES = ("patch_cosine", "sea", "both")


@dataclass
class PatchAlignArguments:
    """The plugin's flags (see docs/patch_align.md and docs/sea.md)."""

    align_objective: str = field(
        default="patch_cosine", metadata={"help": f"auxiliary loss: one of {ALIGN_OBJECTIVES}"}
    )
    pad_path: str | None = field(default=None, metadata={"help": "PAD file (JSON or JSONL) for --data_path"})
    patch_loss_weight: float = field(default=5.0, metadata={"help": "beta_max, the final weight of L_patch"})
    patch_beta_schedule: str = field(default="linear", metadata={"help": f"one of {BETA_SCHEDULES}"})
    patch_beta_warmup_steps: int = field(
        default=0, metadata={"help": "optimizer steps with beta = 0 before the schedule starts"}
    )
    patch_mask_threshold: float = field(
        default=DEFAULT_PATCH_MASK_THRESHOLD,
        metadata={"help": "tau: min fraction of a patch a region must cover"},
    )
    patch_mask_fallback: str = field(
        default="argmax",
        metadata={"help": "argmax (a region below tau everywhere keeps its best patch) or none"},
    )
    patch_pooling: str = field(default="mean", metadata={"help": f"one of {PATCH_POOLINGS}"})
    pad_on_error: str = field(default="error", metadata={"help": f"bad PAD records: one of {PAD_ON_ERROR}"})
    pad_min_coverage: float = field(
        default=0.0,
        metadata={
            "help": "error when fewer than this fraction of the image samples have PAD regions "
            "(default 0: at least one must)"
        },
    )
    sea_labels: str | None = field(
        default=None, metadata={"help": "SEA label folder from `patch-align sea label` (sea, both)"}
    )
    sea_loss_weight: float = field(default=1.0, metadata={"help": "lambda_max, the final weight of L_sea"})
    sea_lambda_schedule: str = field(default="constant", metadata={"help": f"one of {LAMBDA_SCHEDULES}"})
    sea_lambda_warmup_steps: int = field(
        default=0, metadata={"help": "optimizer steps with lambda = 0 before the schedule starts"}
    )
    sea_window: int = field(default=2, metadata={"help": "k: keep one labelled patch per k x k window"})
    sea_temperature: float = field(
        default=INITIAL_TEMPERATURE, metadata={"help": "initial (or, if not learnable, fixed) InfoNCE tau"}
    )
    sea_learnable_temperature: bool = field(
        default=True, metadata={"help": "learn log tau with the projector (False: keep tau fixed)"}
    )

    @property
    def uses_patch_cosine(self) -> bool:
        return self.align_objective in ("patch_cosine", "both")

    @property
    def uses_sea(self) -> bool:
        return self.align_objective in ("sea", "both")

    def __post_init__(self) -> None:
        if self.align_objective not in ALIGN_OBJECTIVES:
            raise ValueError(
                f"--align_objective must be one of {ALIGN_OBJECTIVES}, got {self.align_objective!r}"
            )
        if self.uses_patch_cosine and not self.pad_path:
            raise ValueError(f"--pad_path is required for --align_objective {self.align_objective}")
        if self.uses_sea and not self.sea_labels:
            raise ValueError(f"--sea_labels is required for --align_objective {self.align_objective}")
        self._refuse_flags_of_other_objectives()
        if self.pad_on_error not in PAD_ON_ERROR:
            raise ValueError(f"--pad_on_error must be one of {PAD_ON_ERROR}, got {self.pad_on_error!r}")
        if self.patch_mask_fallback not in ("argmax", "none"):
            raise ValueError(
                f"--patch_mask_fallback must be 'argmax' or 'none', got {self.patch_mask_fallback!r}"
            )
        if not 0.0 < self.patch_mask_threshold <= 1.0:
            raise ValueError(f"--patch_mask_threshold must be in (0, 1], got {self.patch_mask_threshold}")
        # validates the schedule flags, the pooling and the SEA numbers at parse time, not hours later
        self.loss_config()
        self.lambda_schedule()
        if self.sea_window < 1:
            raise ValueError(f"--sea_window must be >= 1, got {self.sea_window}")
        SeaTemperature(self.sea_temperature, self.sea_learnable_temperature)
        check_min_pad_coverage(self.pad_min_coverage)
        # cheap, and otherwise found only after the model has loaded
        if self.uses_patch_cosine and not Path(self.pad_path).is_file():
            raise ValueError(f"--pad_path {self.pad_path}: no such file")
        if self.uses_sea and not Path(self.sea_labels).is_dir():
            raise ValueError(
                f"--sea_labels {self.sea_labels}: no such folder (make it with `patch-align sea label`)"
            )

    def _refuse_flags_of_other_objectives(self) -> None:
        """A flag given a value that the objective does not use would be silently ignored: refuse it."""
        reasons = {}
        for option in fields(self):
            if option.name.startswith("sea_"):
                owner, used = "sea", self.uses_sea
            elif option.name.startswith(("patch_", "pad_")):
                owner, used = "patch_cosine", self.uses_patch_cosine
            else:
                continue
            if not used:
                reasons[option.name] = (
                    f"only --align_objective {owner} or both uses it; this run's is {self.align_objective}"
                )
        refuse_unsupported_values(self, reasons)

    def loss_config(self) -> PatchLossConfig:
        schedule = BetaSchedule(
            self.patch_beta_schedule, self.patch_loss_weight, self.patch_beta_warmup_steps
        )
        return PatchLossConfig(schedule=schedule, pooling=self.patch_pooling)

    def lambda_schedule(self) -> LambdaSchedule:
        return LambdaSchedule(self.sea_lambda_schedule, self.sea_loss_weight, self.sea_lambda_warmup_steps)


def _plugin_args(ctx: TrainContext) -> PatchAlignArguments:
    return ctx.extra_args[PatchAlignArguments.__name__]


@dataclass
class PatchAlignRecipe(TrainRecipe):
    extra_arguments: tuple[type, ...] = (PatchAlignArguments, AlignEvalArguments)
    trainer_class: type = PatchAlignTrainer
    # label folders opened by this recipe (dataset, trainer and config share one index read)
    _opened_sea_labels: dict[str, SeaLabels] = field(default_factory=dict, repr=False)
    # what the dataset built by make_dataset measured, recorded by config_entries
    _pad_coverage: PadCoverage | None = field(default=None, repr=False)

    def sea_labels(self, ctx: TrainContext) -> SeaLabels | None:
        """The run's SEA labels (`--sea_labels`), or None when SEA is off."""
        args = _plugin_args(ctx)
        if not args.uses_sea:
            return None
        if args.sea_labels not in self._opened_sea_labels:
            self._opened_sea_labels[args.sea_labels] = SeaLabels(args.sea_labels)
        return self._opened_sea_labels[args.sea_labels]

    def make_dataset(self, ctx: TrainContext) -> PadAlignedDataset:
        """The PAD- and/or SEA-labelled dataset; raises `PadCoverageError` (data.py) when too few
        image samples have PAD regions (`--pad_min_coverage`)."""
        args = _plugin_args(ctx)
        if args.uses_sea and not ctx.training_args.tune_mm_mlp_adapter:
            raise ValueError(
                "SEA is a stage-1 objective: --align_objective sea/both needs --tune_mm_mlp_adapter True "
                "(only then is its temperature saved beside mm_projector.bin)"
            )
        if ctx.training_args.remove_unused_columns:
            raise ValueError(
                "--remove_unused_columns True would drop the region and SEA tensors from every batch "
                "before the loss sees them: patch-aligned training needs False (LLaVA's default)"
            )
        grid = PatchGrid.of_training(ctx, "patch-aligned training")
        dataset = PadAlignedDataset(
            ctx.data_args.data_path,
            ctx.tokenizer,
            ctx.data_args,
            load_pad_index(args.pad_path) if args.uses_patch_cosine else None,
            grid,
            threshold=args.patch_mask_threshold,
            fallback=args.patch_mask_fallback,
            on_error=args.pad_on_error,
            sea_labels=self.sea_labels(ctx),
            min_pad_coverage=args.pad_min_coverage,
        )
        self._pad_coverage = dataset.pad_coverage
        return dataset

    def make_callbacks(self, ctx: TrainContext) -> list[AlignEvalCallback]:
        """The in-training alignment evaluation (`--align_eval_pad`, patch_align/align_eval.py), if on."""
        return make_align_eval_callbacks(ctx, ctx.extra_args[AlignEvalArguments.__name__])

    def make_collator(self, ctx: TrainContext) -> PadAlignedCollator:
        return PadAlignedCollator(DataCollatorForSupervisedDataset(tokenizer=ctx.tokenizer))

    def trainer_kwargs(self, ctx: TrainContext) -> dict[str, Any]:
        args = _plugin_args(ctx)
        kwargs: dict[str, Any] = {"patch_loss": args.loss_config() if args.uses_patch_cosine else None}
        if args.uses_sea:
            labels = self.sea_labels(ctx)
            kwargs["sea_loss"] = SeaLossConfig(
                schedule=args.lambda_schedule(),
                targets=VocabularyTargets(ctx.tokenizer, labels.words),
                grid=labels.grid,
                window=args.sea_window,
                temperature=args.sea_temperature,
                learnable_temperature=args.sea_learnable_temperature,
                token_offset=vision_token_offset(ctx.model_args.mm_vision_select_feature),
            )
        return kwargs

    def config_entries(self, ctx: TrainContext) -> dict[str, Any]:
        """The plugin's settings under `patch_align_*` keys of the saved config.json (SEA's as
        `patch_align_sea_*`, the objective as `patch_align_objective`), and the PAD coverage that
        `make_dataset` measured as `patch_align_pad_coverage` (reporters such as wandb log the
        model config, so it reaches them too)."""
        args = asdict(_plugin_args(ctx))
        entries = {f"patch_align_{key.removeprefix('patch_')}": value for key, value in args.items()}
        entries["patch_align_objective"] = entries.pop("patch_align_align_objective")
        entries["patch_align_label_tokenization"] = "word_in_running_text_no_special_tokens"
        if _plugin_args(ctx).uses_sea:
            entries["patch_align_sea_label_settings"] = self.sea_labels(ctx).settings
        if self._pad_coverage is not None:
            entries["patch_align_pad_coverage"] = self._pad_coverage.as_dict()
        return entries
