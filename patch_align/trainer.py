"""`PatchAlignTrainer`: LLaVA's trainer with L = L_caption + β · L_patch, each part logged.

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

Logged at every logging step (into `state.log_history` and every reporter): `loss_caption`
and `loss_patch` (mean per optimizer step over the logging window), `patch_beta` (β of the
last step), `patch_cosine` (mean region cosine), `patch_regions` (regions per optimizer
step), and running totals of the dataset's region counters (`pad_regions_*`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llava.train.llava_trainer import LLaVATrainer, unwrap_peft
from patch_align.data import REGION_COUNTERS
from patch_align.objectives.label_embedding import LabelEmbeddingCache
from patch_align.objectives.patch_cosine import PATCH_POOLINGS, patch_cosine_loss
from patch_align.schedules import BetaSchedule, PatchBetaCallback

REGION_KEYS = ("region_masks", "region_sample_index", "region_label_ids", "region_label_mask")
# window accumulators, in this order: caption part, patch part (unweighted), Σ cos, regions, then
# the dataset's counters; kept on the device so that a step never waits for a host copy
_CAPTION, _PATCH, _COSINE, _REGIONS = range(4)


@dataclass(frozen=True)
class PatchLossConfig:
    """What the trainer needs from the plugin's flags."""

    schedule: BetaSchedule
    pooling: str = "mean"

    def __post_init__(self) -> None:
        if self.pooling not in PATCH_POOLINGS:
            raise ValueError(f"--patch_pooling must be one of {PATCH_POOLINGS}, got {self.pooling!r}")


class PatchAlignTrainer(LLaVATrainer):
    """`LLaVATrainer` whose loss adds β · L_patch (see the module docstring for normalisation)."""

    # compute_loss returns a loss already normalised over the accumulated batch
    loss_is_scaled_for_ga = True

    def __init__(self, *args, patch_loss: PatchLossConfig, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.n_gpu > 1:
            raise ValueError(
                "patch-aligned training does not support torch DataParallel (several GPUs in one "
                "process); launch one process per GPU (torchrun or deepspeed)"
            )
        self.patch_loss = patch_loss
        self.beta_callback = PatchBetaCallback(patch_loss.schedule)
        self.add_callback(self.beta_callback)
        self.label_embeddings = LabelEmbeddingCache()
        self._regions_in_step: torch.Tensor | None = None
        self._window: torch.Tensor | None = None
        self._window_steps: set[int] = set()
        self._region_totals: torch.Tensor | None = None  # since this process started

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Also count R_step, the regions of the whole optimizer step (all micro-batches and processes)."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        regions = sum(int(batch["region_masks"].shape[0]) for batch in batch_samples)
        regions = torch.tensor(regions, dtype=torch.long, device=device)
        if self.args.world_size > 1:
            regions = self.accelerator.gather(regions.reshape(1)).sum()
        self._regions_in_step = regions
        return batch_samples, num_items_in_batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        regions = {key: inputs.pop(key) for key in REGION_KEYS}
        counters = torch.stack([inputs.pop(key) for key in REGION_COUNTERS])
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
        embedding = unwrap_peft(self.accelerator.unwrap_model(model)).get_input_embeddings()
        targets = self.label_embeddings(embedding, regions["region_label_ids"], regions["region_label_mask"])
        result = patch_cosine_loss(
            image_features,
            regions["region_masks"],
            regions["region_sample_index"],
            targets,
            pooling=self.patch_loss.pooling,
        )
        training = model.training and self._regions_in_step is not None
        if training:
            patch = result.loss_sum / self._regions_in_step.clamp_min(1).to(result.loss_sum.dtype)
            patch = patch * self.accelerator.num_processes
        else:  # evaluation: this batch alone
            patch = result.mean_loss()
        beta = self.beta_callback.beta
        loss = caption + beta * patch.to(caption.dtype)

        if training:
            self._accumulate(caption, patch, result.cosines, counters)
        return (loss, outputs) if return_outputs else loss

    def _accumulate(
        self, caption: torch.Tensor, patch: torch.Tensor, cosines: torch.Tensor, counters: torch.Tensor
    ) -> None:
        values = torch.stack(
            [
                caption.detach().double(),
                patch.detach().double(),
                cosines.sum().double(),
                torch.tensor(cosines.shape[0], dtype=torch.float64, device=cosines.device),
            ]
        )
        values = values.to(caption.device)
        counters = counters.to(device=caption.device, dtype=torch.float64)
        if self._window is None:
            self._window, self._region_totals = torch.zeros_like(values), torch.zeros_like(counters)
        self._window += values
        self._region_totals += counters
        self._window_steps.add(self.state.global_step)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._window_steps:
            logs.update(self._patch_logs())
        super().log(logs, start_time)

    def _patch_logs(self) -> dict[str, float]:
        """Window averages (see the module docstring), summed over processes, then reset."""
        window, counters = self._window, self._region_totals
        processes = 1
        if self.args.world_size > 1:
            window = self.accelerator.gather(window.unsqueeze(0)).sum(dim=0)
            counters = self.accelerator.gather(counters.unsqueeze(0)).sum(dim=0)
            processes = self.args.world_size
        steps = len(self._window_steps)
        regions = float(window[_REGIONS])
        logs = {
            "loss_caption": float(window[_CAPTION]) / processes / steps,
            "loss_patch": float(window[_PATCH]) / processes / steps,
            "patch_beta": self.beta_callback.beta,
            "patch_cosine": float(window[_COSINE]) / regions if regions else 0.0,
            "patch_regions": regions / steps,
        }
        logs.update({key: float(value) for key, value in zip(REGION_COUNTERS, counters, strict=True)})
        self._window.zero_()
        self._window_steps.clear()
        return logs
