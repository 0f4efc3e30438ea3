"""`PatchAlignTrainer`: LLaVA's trainer with L = L_caption + β · L_patch + λ · L_sea, each part logged.

`--align_objective` picks the terms: `patch_cosine` (β · L_patch), `sea` (λ · L_sea) or `both`.
One forward: the model returns its caption loss and the projector output of that same
forward (`return_image_features=True`); no second vision pass.

Normalisation across gradient accumulation (and processes), our choice, mirroring what
transformers 5 does for the caption loss with `num_items_in_batch`: an optimizer step's
L_patch is the mean of (1 − cos) over *all* regions of the step, i.e. of every micro-batch
(and every process). Each micro-batch contributes Σ_its regions (1 − cos) / R_step, where
R_step is counted in `get_batch_samples` before the step runs; so 1 micro-batch of 4
samples and 4 micro-batches of 1 sample give the same β · L_patch and the same gradient.
Under data parallelism R_step is summed over processes and the contribution multiplied by
the process count, since DDP/DeepSpeed average gradients over processes.

L_sea likewise: the SEA pairs of every micro-batch are sampled in `get_batch_samples` (one
generator per micro-batch seeded from `--seed`, the step and the micro-batch's index over all
processes, so a resumed run draws the same pairs, and W processes × A accumulated micro-batches
draw the pairs of 1 process × W·A); each micro-batch's InfoNCE uses its own pairs as negatives and contributes
P_micro · InfoNCE / P_step, so the step's L_sea is the pair-weighted mean of its micro-batches'
InfoNCE. (Unlike L_patch, InfoNCE depends on which pairs share a micro-batch, so 1 × 4 and 4 × 1
give different, equally valid, values.) A micro-batch without pairs contributes an exact 0.

The SEA temperature is a module attached to the LLaVA model as `sea_temperature`, so the
optimizer, DDP and DeepSpeed treat it like any trainable parameter (no weight decay); stage-1
saves write it next to `mm_projector.bin` as `sea_temperature.bin`, and resuming loads it back.

Logged at every logging step (into `state.log_history` and every reporter): `loss_caption`;
with patch-cosine `loss_patch` (mean per optimizer step over the logging window), `patch_beta`
(β of the last step), `patch_cosine` (mean region cosine), `patch_regions` (regions per optimizer
step) and running totals of the dataset's region counters (`pad_regions_*`, summed over processes;
checkpoints keep them in `pad_region_totals.bin`, so a resumed run counts on); with SEA `loss_sea`
(mean per optimizer step), `sea_lambda` (λ of the last step), `sea_temperature` (τ now),
`sea_pairs` (pairs per optimizer step) and `sea_accuracy` (patch→word top-1 over the window's pairs).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from llava.model.checkpoints import atomic_torch_save
from llava.train.llava_trainer import LLaVATrainer, unwrap_peft
from patch_align.data import REGION_COUNTERS
from patch_align.objectives.label_embedding import LabelEmbeddingCache
from patch_align.objectives.patch_cosine import PATCH_POOLINGS, patch_cosine_loss
from patch_align.objectives.sea import (
    SEA_LABEL_KEYS,
    SEA_PAIR_KEYS,
    SEA_TEMPERATURE_MODULE,
    SeaLossConfig,
    sample_batch_pairs,
    sea_pair_loss,
    step_generator,
)
from patch_align.schedules import BetaSchedule, LossWeightCallback
from patch_align.sea.loss import SeaTemperature

logger = logging.getLogger(__name__)

REGION_KEYS = ("region_masks", "region_sample_index", "region_label_ids", "region_label_mask")
SEA_TEMPERATURE_FILE = "sea_temperature.bin"
REGION_TOTALS_FILE = "pad_region_totals.bin"


@dataclass(frozen=True)
class PatchLossConfig:
    """What the trainer needs from the patch-cosine flags."""

    schedule: BetaSchedule
    pooling: str = "mean"

    def __post_init__(self) -> None:
        if self.pooling not in PATCH_POOLINGS:
            raise ValueError(f"--patch_pooling must be one of {PATCH_POOLINGS}, got {self.pooling!r}")


class PatchAlignTrainer(LLaVATrainer):
    """`LLaVATrainer` whose loss adds β · L_patch and/or λ · L_sea (see the module docstring)."""

    # compute_loss returns a loss already normalised over the accumulated batch
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args,
        patch_loss: PatchLossConfig | None = None,
        sea_loss: SeaLossConfig | None = None,
        **kwargs,
    ):
        if patch_loss is None and sea_loss is None:
            raise ValueError("PatchAlignTrainer needs patch_loss, sea_loss, or both")
        self._sea_temperature: SeaTemperature | None = None
        if sea_loss is not None:
            # before Trainer.__init__, so the temperature moves to the device with the model;
            # wrappers (DDP, DeepSpeed, PEFT) keep this module object, so it is kept here too
            self._sea_temperature = SeaTemperature(sea_loss.temperature, sea_loss.learnable_temperature)
            unwrap_peft(kwargs["model"]).add_module(SEA_TEMPERATURE_MODULE, self._sea_temperature)
            # τ is used outside the model's forward: DDP's search for unused parameters would mark
            # it ready after the forward and again in the backward ("marked ready twice"). The
            # search is not needed: every trainable parameter gets a gradient every step (a
            # micro-batch without pairs adds a graph-connected 0).
            training_args = kwargs["args"]
            if training_args.ddp_find_unused_parameters:
                raise ValueError(
                    "--ddp_find_unused_parameters True does not work with SEA (its temperature is used "
                    "outside the model's forward under DDP); leave it unset"
                )
            training_args.ddp_find_unused_parameters = False
        super().__init__(*args, **kwargs)
        if self.args.n_gpu > 1:
            raise ValueError(
                "patch-aligned training does not support torch DataParallel (several GPUs in one "
                "process); launch one process per GPU (torchrun or deepspeed)"
            )
        self.patch_loss = patch_loss
        self.sea_loss = sea_loss
        self.weight_callback = LossWeightCallback(
            patch_loss.schedule if patch_loss else None, sea_loss.schedule if sea_loss else None
        )
        self.add_callback(self.weight_callback)
        self.label_embeddings = LabelEmbeddingCache()
        self._embedding_module: torch.nn.Module | None = None
        self._regions_in_step: torch.Tensor | None = None
        self._pairs_in_step: torch.Tensor | None = None
        self._window_names = ["caption"]
        if patch_loss is not None:
            self._window_names += ["patch", "cosine_sum", "regions"]
        if sea_loss is not None:
            self._window_names += ["sea", "sea_correct", "sea_pairs"]
        # window sums kept on the device, so that a step never waits for a host copy
        self._window: torch.Tensor | None = None
        self._window_steps: set[int] = set()
        self._region_totals: torch.Tensor | None = None  # this process's, on the device
        # where this process's totals start: zeros, or on rank 0 of a resumed run the checkpoint's
        self._region_totals_at_start = torch.zeros(len(REGION_COUNTERS), dtype=torch.float64)

    def get_decay_parameter_names(self, model) -> list[str]:
        # weight decay would pull log τ towards 0, i.e. τ towards 1
        return [n for n in super().get_decay_parameter_names(model) if SEA_TEMPERATURE_MODULE not in n]

    def _sum_over_processes(self, count: int, device) -> torch.Tensor:
        total = torch.tensor(count, dtype=torch.long, device=device)
        if self.args.world_size > 1:
            total = self.accelerator.gather(total.reshape(1)).sum()
        return total

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Also sample the step's SEA pairs and count R_step / P_step over micro-batches and processes."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.patch_loss is not None:
            regions = sum(int(batch["region_masks"].shape[0]) for batch in batch_samples)
            self._regions_in_step = self._sum_over_processes(regions, device)
        if self.sea_loss is not None:
            seed, step, world = self.args.seed, self.state.global_step, self.args.world_size
            pairs = sum(
                self._sample_pairs(batch, step_generator(seed, step, index * world + self.args.process_index))
                for index, batch in enumerate(batch_samples)
            )
            self._pairs_in_step = self._sum_over_processes(pairs, device)
        return batch_samples, num_items_in_batch

    def _sample_pairs(self, batch: dict, generator: torch.Generator) -> int:
        return sample_batch_pairs(batch, self.sea_loss.grid, self.sea_loss.window, generator)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        regions = counters = pairs = None
        if self.patch_loss is not None:
            regions = {key: inputs.pop(key) for key in REGION_KEYS}
            counters = torch.stack([inputs.pop(key) for key in REGION_COUNTERS])
        if self.sea_loss is not None:
            if SEA_LABEL_KEYS[0] in inputs:  # not sampled by get_batch_samples: evaluation, direct calls
                generator = step_generator(self.args.seed, self.state.global_step, self.args.process_index)
                self._sample_pairs(inputs, generator)
            pairs = {key: inputs.pop(key) for key in SEA_PAIR_KEYS}
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            inputs = {**inputs, "num_items_in_batch": num_items_in_batch}
        outputs = model(**inputs, return_image_features=True)
        caption = outputs["loss"]
        if num_items_in_batch is None or not self.model_accepts_loss_kwargs:
            caption = caption / self.current_gradient_accumulation_steps  # a per-micro-batch mean
        elif self.args.average_tokens_across_devices:
            caption = caption * (self.accelerator.num_processes // self.get_tp_size())  # as Trainer does

        image_features = outputs["image_features"]
        if image_features is None:
            raise ValueError(
                "the batch has no images: patch-aligned training needs a multimodal model and data"
            )
        embedding = self._input_embeddings(model)
        loss = caption
        window = {"caption": caption.detach()}
        if self.patch_loss is not None:
            patch, cosines = self._patch_term(image_features, regions, embedding, model.training)
            loss = loss + self.weight_callback.beta * patch.to(caption.dtype)
            regions_here = cosines.new_tensor(len(cosines))
            window.update(patch=patch.detach(), cosine_sum=cosines.sum(), regions=regions_here)
        if self.sea_loss is not None:
            sea, result = self._sea_term(image_features, pairs, embedding, model.training)
            loss = loss + self.weight_callback.sea_lambda * sea.to(caption.dtype)
            window.update(sea=sea.detach(), sea_correct=torch.tensor(result.correct),
                          sea_pairs=torch.tensor(float(result.pairs)))

        if model.training:
            self._accumulate(window, counters)
        return (loss, outputs) if return_outputs else loss

    def _input_embeddings(self, model) -> torch.nn.Module:
        """The LLM's input embedding module, looked up once: accelerate's `unwrap_model` costs
        ~0.6 ms a call on the tiny CPU setup (a tenth of a step), and wrappers (DDP, DeepSpeed,
        PEFT) keep the same module object for the whole run."""
        if self._embedding_module is None:
            self._embedding_module = unwrap_peft(self.accelerator.unwrap_model(model)).get_input_embeddings()
        return self._embedding_module

    def _patch_term(self, image_features, regions, embedding, training: bool):
        targets = self.label_embeddings(embedding, regions["region_label_ids"], regions["region_label_mask"])
        result = patch_cosine_loss(
            image_features,
            regions["region_masks"],
            regions["region_sample_index"],
            targets,
            pooling=self.patch_loss.pooling,
        )
        if training and self._regions_in_step is not None:
            patch = result.loss_sum / self._regions_in_step.clamp_min(1).to(result.loss_sum.dtype)
            patch = patch * self.accelerator.num_processes
        else:  # evaluation: this batch alone
            patch = result.mean_loss()
        return patch, result.cosines

    def _sea_term(self, image_features, pairs, embedding, training: bool):
        result = sea_pair_loss(
            image_features,
            pairs["sea_pair_batch_index"],
            pairs["sea_pair_patch_index"],
            pairs["sea_pair_word_ids"],
            self.sea_loss.targets,
            embedding,
            self._sea_temperature(),
            token_offset=self.sea_loss.token_offset,
        )
        if training and self._pairs_in_step is not None:
            sea = result.loss_sum / self._pairs_in_step.clamp_min(1).to(result.loss_sum.dtype)
            sea = sea * self.accelerator.num_processes
        else:  # evaluation: this batch alone
            sea = result.loss_sum / max(result.pairs, 1)
        return sea, result

    def _accumulate(self, window: dict[str, torch.Tensor], counters: torch.Tensor | None) -> None:
        device = window["caption"].device
        values = torch.stack(
            [window[name].to(device=device, dtype=torch.float64) for name in self._window_names]
        )
        if self._window is None:
            self._window = torch.zeros_like(values)
        self._window += values
        if counters is not None:
            counters = counters.to(device=device, dtype=torch.float64)
            if self._region_totals is None:
                self._region_totals = self._region_totals_at_start.to(device)
            self._region_totals += counters
        self._window_steps.add(self.state.global_step)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._window_steps:
            logs.update(self._objective_logs())
        super().log(logs, start_time)

    def _objective_logs(self) -> dict[str, float]:
        """Window averages (see the module docstring), summed over processes, then reset."""
        window, processes = self._window, 1
        if self.args.world_size > 1:
            window = self.accelerator.gather(window.unsqueeze(0)).sum(dim=0)
            processes = self.args.world_size
        sums = {name: float(value) for name, value in zip(self._window_names, window, strict=True)}
        steps = len(self._window_steps)
        logs = {"loss_caption": sums["caption"] / processes / steps}
        if self.patch_loss is not None:
            regions = sums["regions"]
            logs.update(
                loss_patch=sums["patch"] / processes / steps,
                patch_beta=self.weight_callback.beta,
                patch_cosine=sums["cosine_sum"] / regions if regions else 0.0,
                patch_regions=regions / steps,
            )
            counters = self._summed_region_totals()
            logs.update({key: float(value) for key, value in zip(REGION_COUNTERS, counters, strict=True)})
        if self.sea_loss is not None:
            pairs = sums["sea_pairs"]
            logs.update(
                loss_sea=sums["sea"] / processes / steps,
                sea_lambda=self.weight_callback.sea_lambda,
                sea_temperature=float(self._sea_temperature().detach()),
                sea_pairs=pairs / steps,
                sea_accuracy=sums["sea_correct"] / pairs if pairs else 0.0,
            )
        self._window.zero_()
        self._window_steps.clear()
        return logs

    def _summed_region_totals(self) -> torch.Tensor:
        """(len(REGION_COUNTERS),) float64: the running totals over all processes (each must call)."""
        totals = self._region_totals if self._region_totals is not None else self._region_totals_at_start
        if self.args.world_size > 1:
            totals = self.accelerator.gather(totals.to(self.args.device).unsqueeze(0)).sum(dim=0)
        return totals

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """LLaVA's saving, plus `sea_temperature.bin` beside a stage-1 `mm_projector.bin` and, in a
        checkpoint (`_internal_call`), the region counters' totals."""
        super().save_model(output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        if self.patch_loss is not None and _internal_call:
            totals = self._summed_region_totals().cpu()  # every process joins the gather
            if self.args.should_save:
                state = {key: int(value) for key, value in zip(REGION_COUNTERS, totals, strict=True)}
                atomic_torch_save(state, os.path.join(output_dir, REGION_TOTALS_FILE))
        if self.sea_loss is None or not self.args.should_save:
            return
        state = {k: v.detach().cpu().clone() for k, v in self._sea_temperature.state_dict().items()}
        atomic_torch_save(state, os.path.join(output_dir, SEA_TEMPERATURE_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        # the one loading hook the Trainer calls on every resume (_load_from_checkpoint is skipped
        # under DeepSpeed, whose engine restores the weights itself)
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or self.patch_loss is None:
            return
        path = os.path.join(checkpoint, REGION_TOTALS_FILE)
        if not os.path.exists(path):  # a checkpoint from before the totals were saved: they are logs only
            logger.warning("%s is missing: the logged pad_regions_* totals restart from 0", path)
            return
        if self.args.process_index == 0:  # the totals are summed over processes: counted once
            totals = torch.load(path, map_location="cpu", weights_only=True)
            self._region_totals_at_start = torch.tensor(
                [totals[key] for key in REGION_COUNTERS], dtype=torch.float64
            )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.sea_loss is None:
            return
        path = os.path.join(resume_from_checkpoint, SEA_TEMPERATURE_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} is missing: {resume_from_checkpoint} was not saved by a SEA run, "
                "so its temperature cannot be restored"
            )
        target = self._sea_temperature
        target.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        logger.info("resumed the SEA temperature from %s (tau = %.5f)", path, float(target().detach()))
