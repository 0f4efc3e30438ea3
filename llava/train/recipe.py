"""The extension points through which a plugin enters the LLaVA training loop.

`train(recipe)` asks the recipe for its extra argument dataclasses, dataset, collator,
trainer class, callbacks and config entries. The default recipe is plain LLaVA.
A plugin subclasses `TrainRecipe` (or builds one) and calls `llava.train.train.train`:
no monkey-patching, no import-time side effects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import Trainer, TrainerCallback

from .data import DataCollatorForSupervisedDataset, LazySupervisedDataset
from .llava_trainer import LLaVATrainer


@dataclass
class TrainContext:
    """Everything built so far, handed to each extension point."""

    model_args: Any
    data_args: Any
    training_args: Any
    extra_args: dict[str, Any]  # dataclass name -> parsed instance, for the recipe's own flags
    tokenizer: Any
    model: Any = None


@dataclass
class TrainRecipe:
    extra_arguments: tuple[type, ...] = field(default_factory=tuple)
    trainer_class: type[Trainer] = LLaVATrainer

    def make_dataset(self, ctx: TrainContext):
        return LazySupervisedDataset(ctx.data_args.data_path, ctx.tokenizer, ctx.data_args)

    def make_collator(self, ctx: TrainContext):
        return DataCollatorForSupervisedDataset(tokenizer=ctx.tokenizer)

    def make_callbacks(self, ctx: TrainContext) -> list[TrainerCallback]:
        return []

    def trainer_kwargs(self, ctx: TrainContext) -> dict[str, Any]:
        """Extra keyword arguments for the trainer class's constructor."""
        return {}

    def config_entries(self, ctx: TrainContext) -> dict[str, Any]:
        """Keys recorded in the saved `config.json` (a plugin's settings under its own names)."""
        return {}
