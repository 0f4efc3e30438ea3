"""The command-line arguments of `llava/train/train.py`: upstream's names and defaults.

Three dataclasses parsed by `transformers.HfArgumentParser`, exactly as upstream LLaVA
declares them, so unmodified LLaVA-1.5 launch scripts parse. Flags that transformers 5
removed from `TrainingArguments` but that those scripts still pass are accepted here and
mapped onto their replacements (or ignored with a note when they no longer mean anything).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import transformers

logger = logging.getLogger(__name__)


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
    mpt_attn_impl: str | None = field(default="triton")
    model_max_length: int = field(
        default=512,
        metadata={
            "help": "Maximum sequence length. Sequences will be right padded (and possibly truncated)."
        },
    )
    double_quant: bool = field(default=True, metadata={"help": "Compress quantisation statistics (bits 4)."})
    quant_type: str = field(default="nf4", metadata={"help": "fp4 or nf4 (bits 4)."})
    bits: int = field(default=16, metadata={"help": "How many bits to use (16, 8 or 4)."})
    lora_enable: bool = False
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_weight_path: str = ""
    lora_bias: str = "none"
    mm_projector_lr: float | None = None
    group_by_modality_length: bool = field(default=False)
    # Removed from transformers 5's TrainingArguments but passed by LLaVA-1.5 scripts.
    evaluation_strategy: str | None = field(default=None, metadata={"help": "alias of --eval_strategy"})
    group_by_length: bool = field(
        default=False, metadata={"help": "accepted for compatibility; see --group_by_modality_length"}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "accepted for compatibility; no effect"}
    )
    logging_dir: str | None = field(default=None, metadata={"help": "accepted for compatibility; no effect"})
    save_safetensors: bool = field(
        default=True, metadata={"help": "accepted for compatibility; always safetensors"}
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
        if not torch.cuda.is_available():
            # LLaVA's GPU scripts pass --tf32 True, which transformers rejects without an Ampere GPU.
            if self.tf32:
                logger.warning("--tf32 ignored: no CUDA device")
                self.tf32 = None
            self.use_cpu = True
        super().__post_init__()
