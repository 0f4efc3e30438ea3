"""The command-line arguments of `llava/train/train.py`: upstream's names and defaults.

Three dataclasses parsed by `transformers.HfArgumentParser`, exactly as upstream LLaVA
declares them, so unmodified LLaVA-1.5 launch scripts parse. Flags that transformers 5
removed from `TrainingArguments` but that those scripts still pass are accepted here and
mapped onto their replacements. A flag is never accepted and then ignored: a value this code
base cannot honour (a merge type or quantisation it does not implement, a removed
transformers behaviour) is a `ValueError` at parse time saying why.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields
from types import SimpleNamespace

import torch
import transformers

from llava.model.multimodal_encoder.clip_encoder import SELECT_FEATURES
from llava.model.multimodal_projector.builder import build_vision_projector

logger = logging.getLogger(__name__)

LORA_BIASES = ("none", "all", "lora_only")  # peft's LoraConfig(bias=...)

# Flags kept so upstream launch scripts parse, whose default is accepted and whose other
# values would ask for something this code base does not do: flag -> why it is refused.
UNSUPPORTED_VALUES = {
    "mpt_attn_impl": "it only configures MPT language models, which this code base does not train",
    "double_quant": "it only configures --bits 4 (QLoRA), which is not supported",
    "quant_type": "it only configures --bits 4 (QLoRA), which is not supported",
    "lora_weight_path": "upstream LLaVA declares it but never reads it; to continue from a LoRA run, "
    "resume from its checkpoint-N folder in --output_dir",
    "group_by_length": "transformers 5 removed it; use --group_by_modality_length True, LLaVA-1.5's "
    "length grouping (transformers' own length sampler would decode every sample, images included)",
    "overwrite_output_dir": "transformers 5 removed it (and upstream LLaVA never read it): training "
    "resumes from the checkpoint-* folders in --output_dir; delete them or pick a new --output_dir",
    "save_safetensors": "transformers 5 always writes safetensors, which this code base and upstream "
    "LLaVA's loader both read",
}


def refuse_unsupported_values(args, reasons: dict[str, str]) -> None:
    """Raise `ValueError` for the first flag of `reasons` whose value in the dataclass `args`
    differs from its declared default, with the reason it cannot be honoured."""
    defaults = {f.name: f.default for f in fields(args)}
    for name, why in reasons.items():
        value = getattr(args, name)
        if value != defaults[name]:
            raise ValueError(f"--{name} {value} is not supported: {why}")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default="facebook/opt-125m")
    version: str | None = field(default="v0", metadata={"help": "conversation template (plain, v1, ...)"})
    freeze_backbone: bool = field(default=False)
    tune_mm_mlp_adapter: bool = field(default=False, metadata={"help": "train only the projector (stage 1)"})
    vision_tower: str | None = field(default=None)
    mm_vision_select_layer: int | None = field(
        default=-1, metadata={"help": "tower layer whose features are used"}
    )
    pretrain_mm_mlp_adapter: str | None = field(
        default=None, metadata={"help": "path to a stage-1 mm_projector.bin"}
    )
    mm_projector_type: str | None = field(
        default="linear", metadata={"help": "linear, mlp<N>x_gelu or identity"}
    )
    mm_use_im_start_end: bool = field(default=False)
    mm_use_im_patch_token: bool = field(default=True)
    mm_patch_merge_type: str | None = field(default="flat")
    mm_vision_select_feature: str | None = field(
        default="patch", metadata={"help": "patch (drop CLS) or cls_patch"}
    )

    def __post_init__(self):
        # Each of these was accepted by the flags, ignored (or failed) hours later, and gave a
        # checkpoint that does not load: refused here instead.
        if self.mm_patch_merge_type != "flat":
            raise ValueError(
                f"--mm_patch_merge_type {self.mm_patch_merge_type!r} is not supported: only 'flat' "
                "(LLaVA-1.5's); the spatial merges need --image_aspect_ratio anyres, which is not implemented"
            )
        if self.mm_vision_select_feature not in SELECT_FEATURES:
            raise ValueError(
                f"--mm_vision_select_feature must be one of {SELECT_FEATURES}, "
                f"got {self.mm_vision_select_feature!r}"
            )
        # the projector builder's own rules (its errors name mm_projector_type), on a 1 -> 1 projector
        build_vision_projector(
            SimpleNamespace(mm_projector_type=self.mm_projector_type, mm_hidden_size=1, hidden_size=1)
        )


@dataclass
class DataArguments:
    data_path: str = field(default=None, metadata={"help": "LLaVA JSON list of conversations"})
    lazy_preprocess: bool = False
    is_multimodal: bool = False
    image_folder: str | None = field(default=None)
    image_aspect_ratio: str = field(default="square", metadata={"help": "square (resize+crop) or pad"})
    # Ours: upstream silently trains on an all-masked sample when its length arithmetic
    # disagrees with the tokenizer. Here that is an error naming the sample, or a counted skip.
    label_mismatch: str = field(
        default="error",
        metadata={"help": "what to do with a sample whose labels cannot be aligned: error (default) or skip"},
    )

    def __post_init__(self):
        if self.label_mismatch not in ("error", "skip"):
            raise ValueError(f"--label_mismatch must be 'error' or 'skip', got {self.label_mismatch!r}")
        if self.image_aspect_ratio not in ("square", "pad"):
            raise ValueError(
                f"--image_aspect_ratio must be 'square' or 'pad', got {self.image_aspect_ratio!r}"
            )


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    cache_dir: str | None = field(default=None)
    optim: str = field(default="adamw_torch")
    remove_unused_columns: bool = field(default=False)
    freeze_mm_mlp_adapter: bool = field(default=False)
    mpt_attn_impl: str | None = field(
        default="triton", metadata={"help": "upstream's, for MPT models: only the default is accepted"}
    )
    model_max_length: int = field(
        default=512,
        metadata={
            "help": "Maximum sequence length. Sequences will be right padded (and possibly truncated)."
        },
    )
    double_quant: bool = field(default=True, metadata={"help": "upstream's QLoRA setting: only True"})
    quant_type: str = field(default="nf4", metadata={"help": "upstream's QLoRA setting: only nf4"})
    bits: int = field(default=16, metadata={"help": "16 only: k-bit (QLoRA) training is not supported"})
    lora_enable: bool = False
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_weight_path: str = field(default="", metadata={"help": "upstream's, never read: only ''"})
    lora_bias: str = field(default="none", metadata={"help": f"one of {LORA_BIASES}"})
    mm_projector_lr: float | None = None
    group_by_modality_length: bool = field(default=False)
    # Removed from transformers 5's TrainingArguments but passed by LLaVA-1.5 scripts.
    evaluation_strategy: str | None = field(default=None, metadata={"help": "alias of --eval_strategy"})
    group_by_length: bool = field(
        default=False, metadata={"help": "removed by transformers 5; use --group_by_modality_length"}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "removed by transformers 5: only False (training resumes)"}
    )
    logging_dir: str | None = field(
        default=None,
        metadata={"help": "TensorBoard folder (sets TENSORBOARD_LOGGING_DIR, what transformers 5 reads)"},
    )
    save_safetensors: bool = field(
        default=True, metadata={"help": "removed by transformers 5: only True (always safetensors)"}
    )
    no_cuda: bool = field(default=False, metadata={"help": "alias of --use_cpu"})
    warmup_ratio: float | None = field(
        default=None, metadata={"help": "alias of --warmup_steps given as a ratio"}
    )

    def __post_init__(self):
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            if self.warmup_steps:
                raise ValueError("give --warmup_ratio or --warmup_steps, not both")
            self.warmup_steps = self.warmup_ratio
        if self.no_cuda:
            self.use_cpu = True
        self._refuse_unsupported()
        if self.logging_dir is not None:
            # transformers 5's TensorBoard callback takes its folder from this variable only
            current = os.environ.get("TENSORBOARD_LOGGING_DIR")
            if current not in (None, self.logging_dir):
                raise ValueError(
                    f"--logging_dir {self.logging_dir} contradicts TENSORBOARD_LOGGING_DIR={current}"
                )
            os.environ["TENSORBOARD_LOGGING_DIR"] = self.logging_dir
        if not torch.cuda.is_available():
            # LLaVA's GPU scripts pass --tf32 True, which transformers rejects without an Ampere GPU.
            if self.tf32:
                logger.warning("--tf32 ignored: no CUDA device")
                self.tf32 = None
            self.use_cpu = True
        super().__post_init__()

    def _refuse_unsupported(self) -> None:
        if self.bits != 16:
            raise ValueError(
                f"--bits {self.bits} is not supported: only 16. k-bit (QLoRA) training needs CUDA, "
                "bitsandbytes and k-bit preparation of the model, none of which this code base does; "
                "train LoRA in bf16 instead (--lora_enable True --bf16 True)"
            )
        if self.lora_bias not in LORA_BIASES:
            raise ValueError(f"--lora_bias must be one of {LORA_BIASES}, got {self.lora_bias!r}")
        refuse_unsupported_values(self, UNSUPPORTED_VALUES)
