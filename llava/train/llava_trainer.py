"""`LLaVATrainer`: the HF Trainer plus LLaVA's sampler, optimiser groups and saving rules."""

from __future__ import annotations

import logging
import os

from torch.utils.data import Sampler
from transformers import Trainer

from llava.model.checkpoints import (
    ADAPTER_CONFIG,
    PROJECTOR_FILE,
    CheckpointKind,
    atomic_torch_save,
    detect_checkpoint_kind,
    load_projector_file,
    make_adapter_config_portable,
    projector_state_dict,
    write_tokenizer,
)

from .sampler import ModalityLengthGroupedSampler

logger = logging.getLogger(__name__)


def unwrap_peft(model):
    """The LLaVA model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class LLaVATrainer(Trainer):
    """- `--group_by_modality_length`: batches of one modality and similar length;
    - `--mm_projector_lr`: a separate learning rate for `mm_projector` parameters;
    - `--tune_mm_mlp_adapter`: checkpoints hold only `mm_projector.bin` + `config.json` (plus
      optimizer/scheduler/RNG/trainer state, so a stage-1 run resumes exactly);
    - `--lora_enable`: each checkpoint's `adapter_config.json` is one upstream's peft 0.10 reads.
    """

    def _get_train_sampler(self, train_dataset=None) -> Sampler | None:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.args.group_by_modality_length:
            return super()._get_train_sampler(dataset)
        return ModalityLengthGroupedSampler(
            dataset.modality_lengths,
            batch_size=self.args.train_batch_size,
            world_size=self.args.world_size * self.args.gradient_accumulation_steps,
            seed=self.args.seed,
        )

    def create_optimizer(self, model=None):
        if self.optimizer is not None or self.args.mm_projector_lr is None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups = {}
        for name, param in opt_model.named_parameters():
            if not param.requires_grad:
                continue
            is_projector = "mm_projector" in name
            key = (is_projector, name in decay)
            groups.setdefault(key, []).append(param)
        param_groups = []
        for (is_projector, decays), params in groups.items():
            group = {"params": params, "weight_decay": self.args.weight_decay if decays else 0.0}
            if is_projector:
                group["lr"] = self.args.mm_projector_lr
            param_groups.append(group)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not getattr(self.args, "tune_mm_mlp_adapter", False):
            return super().save_model(output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        model = unwrap_peft(self.accelerator.unwrap_model(self.model))
        extra = ("embed_tokens", "embed_in") if getattr(model.config, "mm_use_im_start_end", False) else ()
        # every rank joins the ZeRO-3 gather inside projector_state_dict; rank 0 writes
        state = projector_state_dict(model, extra)
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            atomic_torch_save(state, os.path.join(output_dir, PROJECTOR_FILE))
            model.config.save_pretrained(output_dir)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        # also readable by upstream LLaVA (peft 0.10, transformers 4.x): an adapter config without
        # newer peft's default-valued keys; tokenizer.model + legacy flag
        if os.path.exists(os.path.join(output_dir, ADAPTER_CONFIG)):
            make_adapter_config_portable(output_dir)
        if self.processing_class is not None:
            write_tokenizer(self.processing_class, output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        try:
            projector_only = detect_checkpoint_kind(resume_from_checkpoint) is CheckpointKind.PROJECTOR
        except (FileNotFoundError, ValueError):  # not a LLaVA layout (e.g. FSDP shards): the Trainer decides
            projector_only = False
        if projector_only:
            projector = os.path.join(resume_from_checkpoint, PROJECTOR_FILE)
            target = unwrap_peft(model if model is not None else self.model)
            load_projector_file(target.get_model().mm_projector, projector)
            logger.info("resumed projector weights from %s", projector)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)
