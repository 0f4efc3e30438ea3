"""The patch-align `TrainRecipe`: its flags, PAD-aware data, trainer and config entries.

`llava.train.train.train(PatchAlignRecipe())` runs LLaVA's loop unchanged, with the
dataset, collator and trainer swapped for the plugin's; nothing is monkey-patched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from llava.train.data import DataCollatorForSupervisedDataset
from llava.train.llava_trainer import unwrap_peft
from llava.train.recipe import TrainContext, TrainRecipe
from patch_align.data import PAD_ON_ERROR, PadAlignedCollator, PadAlignedDataset, PatchGrid
from patch_align.geometry import DEFAULT_PATCH_MASK_THRESHOLD
from patch_align.objectives.patch_cosine import PATCH_POOLINGS
from patch_align.pad import load_pad_index
from patch_align.schedules import BETA_SCHEDULES, BetaSchedule
from patch_align.trainer import PatchAlignTrainer, PatchLossConfig


@dataclass
class PatchAlignArguments:
    """The plugin's flags (see docs/patch_align.md)."""

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

    def __post_init__(self) -> None:
        if not self.pad_path:
            raise ValueError("--pad_path is required for patch-aligned training")
        if self.pad_on_error not in PAD_ON_ERROR:
            raise ValueError(f"--pad_on_error must be one of {PAD_ON_ERROR}, got {self.pad_on_error!r}")
        if self.patch_mask_fallback not in ("argmax", "none"):
            raise ValueError(
                f"--patch_mask_fallback must be 'argmax' or 'none', got {self.patch_mask_fallback!r}"
            )
        if not 0.0 < self.patch_mask_threshold <= 1.0:
            raise ValueError(f"--patch_mask_threshold must be in (0, 1], got {self.patch_mask_threshold}")
        # validates the schedule flags and the pooling at parse time, not hours later
        self.loss_config()

    def loss_config(self) -> PatchLossConfig:
        schedule = BetaSchedule(
            self.patch_beta_schedule, self.patch_loss_weight, self.patch_beta_warmup_steps
        )
        return PatchLossConfig(schedule=schedule, pooling=self.patch_pooling)


def _plugin_args(ctx: TrainContext) -> PatchAlignArguments:
    return ctx.extra_args[PatchAlignArguments.__name__]


@dataclass
class PatchAlignRecipe(TrainRecipe):
    extra_arguments: tuple[type, ...] = (PatchAlignArguments,)
    trainer_class: type = PatchAlignTrainer

    def make_dataset(self, ctx: TrainContext) -> PadAlignedDataset:
        args = _plugin_args(ctx)
        tower = unwrap_peft(ctx.model).get_vision_tower()
        if tower is None:
            raise ValueError("patch-aligned training needs --vision_tower")
        grid = PatchGrid(
            aspect_mode=ctx.data_args.image_aspect_ratio,
            image_processor=ctx.data_args.image_processor,
            patch_size=tower.config.patch_size,
            select_feature=ctx.model_args.mm_vision_select_feature,
        )
        if grid.grid_shape != (tower.num_patches_per_side, tower.num_patches_per_side):
            raise ValueError(
                f"the image processor's crop gives a {grid.grid_shape} patch grid, the vision tower "
                f"{tower.num_patches_per_side}x{tower.num_patches_per_side}"
            )
        return PadAlignedDataset(
            ctx.data_args.data_path,
            ctx.tokenizer,
            ctx.data_args,
            load_pad_index(args.pad_path),
            grid,
            threshold=args.patch_mask_threshold,
            fallback=args.patch_mask_fallback,
            on_error=args.pad_on_error,
        )

    def make_collator(self, ctx: TrainContext) -> PadAlignedCollator:
        return PadAlignedCollator(DataCollatorForSupervisedDataset(tokenizer=ctx.tokenizer))

    def trainer_kwargs(self, ctx: TrainContext) -> dict[str, Any]:
        return {"patch_loss": _plugin_args(ctx).loss_config()}

    def config_entries(self, ctx: TrainContext) -> dict[str, Any]:
        """The plugin's settings under `patch_align_*` keys of the saved config.json."""
        args = asdict(_plugin_args(ctx))
        entries = {f"patch_align_{key.removeprefix('patch_')}": value for key, value in args.items()}
        entries["patch_align_label_tokenization"] = "word_in_running_text_no_special_tokens"
        return entries
