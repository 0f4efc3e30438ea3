"""Alignment watched during training: Align mIoU / pointing on a small held-out PAD subset every N steps.

``--align_eval_pad PAD --align_eval_steps N [--align_eval_images K]`` (images relative to
``--image_folder``). The first K records of the PAD file are prepared once, when the trainer is
built (a bad record stops the run then, by name), exactly as ``patch-align analyze`` prepares
them (``analysis.runner.prepare_image``). Every N optimizer steps the callback encodes them with
the current projector (``AnalysisModel.encode``), scores them with analyze's alignment accumulator
and default options, and logs ``align_eval/*`` numbers: into the trainer's ``log_history``
(hence ``trainer_state.json``) and, when ``--report_to`` includes wandb, onto the wandb run at
``train/global_step``, with the first image's region map (``figures.plot_region_maps``).
Each evaluation's seconds are logged too (``align_eval/seconds``), so its cost is visible.

The forward runs on every process (under ZeRO-3 all ranks must join the parameter gathers); only
the main process logs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from patch_align.analysis.alignment import AlignmentAccumulator
from patch_align.analysis.runner import (
    AnalysisAccumulator,
    AnalysisModel,
    AnalysisOptions,
    ImageExample,
    PreparedImage,
    RegionCounts,
    prepare_image,
)
from patch_align.geometry import vision_token_offset
from patch_align.pad import iter_pad_records

logger = logging.getLogger(__name__)

LOG_PREFIX = "align_eval/"


@dataclass
class AlignEvalArguments:
    """Flags of the in-training alignment evaluation (docs/patch_align.md)."""

    align_eval_pad: str | None = field(
        default=None, metadata={"help": "held-out PAD file scored every --align_eval_steps (off when unset)"}
    )
    align_eval_steps: int = field(default=200, metadata={"help": "optimizer steps between evaluations"})
    align_eval_images: int = field(default=8, metadata={"help": "how many of its first records are scored"})

    def __post_init__(self) -> None:
        from llava.train.arguments import refuse_unsupported_values

        if self.align_eval_pad is None:
            why = "it sets the in-training alignment evaluation, which --align_eval_pad turns on"
            refuse_unsupported_values(self, {"align_eval_steps": why, "align_eval_images": why})
            return
        if self.align_eval_steps < 1:
            raise ValueError(f"--align_eval_steps must be >= 1, got {self.align_eval_steps}")
        if self.align_eval_images < 1:
            raise ValueError(f"--align_eval_images must be >= 1, got {self.align_eval_images}")
        if not Path(self.align_eval_pad).is_file():
            raise ValueError(f"--align_eval_pad {self.align_eval_pad}: no such file")


def prepare_subset(
    analysis: AnalysisModel, pad_path: str | Path, image_folder: str | Path, images: int
) -> list[PreparedImage]:
    """The first ``images`` records of the PAD file with at least one usable region, prepared as
    ``analyze`` prepares them (``AnalysisInputError`` naming a bad record; ValueError when none is usable)."""
    options = AnalysisOptions()
    counts = RegionCounts()
    prepared = []
    for number, record in enumerate(iter_pad_records(pad_path)):
        if number == images:
            break
        image = prepare_image(record, Path(image_folder), analysis, options, counts)
        if image is not None and image.labels:
            prepared.append(image)
    if not prepared:
        raise ValueError(
            f"--align_eval_pad {pad_path}: none of its first {images} records has a region inside the "
            f"model's view ({counts.outside_view} outside)"
        )
    return prepared


def evaluate_alignment(
    analysis: AnalysisModel, subset: list[PreparedImage], with_example: bool = False
) -> tuple[dict[str, Any], ImageExample | None]:
    """Score the subset with the model's current projector as ``run_analysis`` scores alignment
    (``AlignmentAccumulator.update`` under analyze's default options): the ``alignment`` section of
    metrics.json, and with ``with_example`` the first image's maps (``AnalysisAccumulator.example``).

    Only alignment is computed: the pursuit and probes of a full analysis cost several training steps.
    The example's accumulator has the subset's label tokens as its word dictionary (its patch words
    are not drawn in the region map).
    """
    options = AnalysisOptions()
    alignment = AlignmentAccumulator(**options.alignment_options())
    offset = vision_token_offset(analysis.grid.select_feature)
    _, projected = analysis.encode(torch.stack([p.pixels for p in subset]))
    example = None
    for number, (prepared, tokens) in enumerate(zip(subset, projected, strict=True)):
        patch_tokens = tokens[offset:]
        embeddings = analysis.label_embeddings(prepared.label_token_ids).to(patch_tokens.device)
        alignment.update(patch_tokens, embeddings, prepared.masks.to(patch_tokens.device))
        if with_example and number == 0:
            token_ids = torch.tensor(sorted({i for ids in prepared.label_token_ids for i in ids}))
            embedding = analysis.model.get_input_embeddings()
            with torch.no_grad():
                dictionary = embedding(token_ids.to(embedding.weight.device)).float()
            texts = analysis.tokenizer.batch_decode([[i] for i in token_ids.tolist()])
            words = AnalysisAccumulator(dictionary, token_ids, texts, options)
            shape, size = analysis.grid.grid_shape, analysis.grid.patch_size
            example = words.example(prepared, patch_tokens, embeddings, shape, size)
    return alignment.result(), example


class AlignEvalCallback(TrainerCallback):
    """Every ``steps`` optimizer steps: ``evaluate_alignment`` on the prepared subset, logged."""

    def __init__(self, analysis: AnalysisModel, subset: list[PreparedImage], steps: int) -> None:
        self.analysis = analysis
        self.subset = subset
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.steps:
            return
        started = time.perf_counter()
        to_wandb = "wandb" in (args.report_to or []) and state.is_world_process_zero
        result, example = evaluate_alignment(self.analysis, self.subset, with_example=to_wandb)
        seconds = time.perf_counter() - started
        if not state.is_world_process_zero:
            return
        logs = {
            f"{LOG_PREFIX}miou": result["miou"],
            f"{LOG_PREFIX}pointing_accuracy": result["pointing_accuracy"],
            f"{LOG_PREFIX}mean_cos_inside": result["mean_cos_inside"],
            f"{LOG_PREFIX}regions": result["regions_scored"],
            f"{LOG_PREFIX}seconds": seconds,
        }
        if result["mean_cos_outside"] is not None:
            logs[f"{LOG_PREFIX}mean_cos_outside"] = result["mean_cos_outside"]
        state.log_history.append({**logs, "step": state.global_step})
        logger.info("step %d: %s", state.global_step, logs)
        if to_wandb:
            self._log_to_wandb(args, state, logs, example)

    def _log_to_wandb(self, args, state, logs: dict[str, float], example: ImageExample) -> None:
        import wandb

        from patch_align.analysis.figures import plot_region_maps

        if wandb.run is None:  # the reporter starts the run on train begin; nothing to log to otherwise
            return
        folder = Path(args.output_dir) / "align_eval"
        folder.mkdir(parents=True, exist_ok=True)
        figure = plot_region_maps(example, folder / f"region_map_step{state.global_step}.png")
        image = {f"{LOG_PREFIX}region_map": wandb.Image(str(figure))}
        wandb.run.log({**logs, **image, "train/global_step": state.global_step})


def make_align_eval_callbacks(ctx, args: AlignEvalArguments) -> list[AlignEvalCallback]:
    """The callback for a training context (``TrainContext``), its subset prepared now; [] when off."""
    if args.align_eval_pad is None:
        return []
    from llava.train.llava_trainer import unwrap_peft
    from patch_align.data import PatchGrid

    grid = PatchGrid.of_training(ctx, "--align_eval_pad")
    if ctx.data_args.image_folder is None:
        raise ValueError("--align_eval_pad needs --image_folder (its images are relative to it)")
    model = unwrap_peft(ctx.model)
    device = torch.device(model.get_vision_tower().device)
    analysis = AnalysisModel(tokenizer=ctx.tokenizer, model=model, grid=grid, device=device)
    subset = prepare_subset(analysis, args.align_eval_pad, ctx.data_args.image_folder, args.align_eval_images)
    return [AlignEvalCallback(analysis, subset, args.align_eval_steps)]
