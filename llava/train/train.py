"""LLaVA training entry: `python llava/train/train.py ...` or `python -m llava.train.train ...`.

Read top to bottom: parse flags → check the data flags and template (no model needed) →
tokenizer → language model → (LoRA) → vision tower and projector → what trains → data →
trainer → train (resuming if checkpoints exist) → save.
Flags and defaults are upstream LLaVA's (see `arguments.py`); a plugin changes the
dataset, collator, trainer class and callbacks through a `TrainRecipe`.
"""

from __future__ import annotations

import atexit
import logging
import os
import pathlib
import sys

if __package__ in (None, ""):  # run as a file path, as upstream's launch scripts do
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import torch
import transformers
from transformers import AutoTokenizer, HfArgumentParser, Trainer, set_seed

from llava.model.builder import resolve_attn_implementation
from llava.model.checkpoints import (
    NON_LORA_FILE,
    TRAINED_TEMPLATE_KEY,
    atomic_torch_save,
    cpu_copies,
    make_adapter_config_portable,
)
from llava.model.language_model.families import LLMFamily, family_of_pretrained
from llava.model.multimodal_encoder.builder import check_vision_tower
from llava.paths import absolute_if_local, resolve_model_path
from llava.train.arguments import DataArguments, ModelArguments, TrainingArguments
from llava.train.data import conversation_template
from llava.train.llava_json import load_llava_json
from llava.train.llava_trainer import unwrap_peft
from llava.train.recipe import TrainContext, TrainRecipe
from llava.train.tokenizer_setup import prepare_tokenizer

logger = logging.getLogger("llava.train")


def compute_dtype(training_args) -> torch.dtype:
    if training_args.bf16:
        return torch.bfloat16
    if training_args.fp16:
        return torch.float16
    return torch.float32


def check_data_inputs(data_args: DataArguments) -> None:
    """The data flags' checks that need no model, run before the tokenizer and model load: the data
    file exists and every record follows `llava_json`'s rules, the image folder exists when given.

    The dataset reads the file again when it is built (for LLaVA-1.5's 665k records, seconds
    against the minutes a model load takes before a late failure)."""
    if not data_args.data_path:
        raise ValueError("--data_path is required: the LLaVA JSON list of training samples")
    load_llava_json(data_args.data_path)
    if data_args.image_folder is not None and not pathlib.Path(data_args.image_folder).is_dir():
        raise FileNotFoundError(f"--image_folder {data_args.image_folder} does not exist or is not a folder")


def init_deepspeed_comm(training_args: TrainingArguments) -> None:
    """Bring up DeepSpeed's communication layer on the process group the arguments created.

    Parsing `TrainingArguments` with `--deepspeed` already starts torch.distributed (transformers
    reads the world size to fill the config's batch sizes). On a CPU (`use_cpu`, which
    `arguments.py` sets without CUDA) accelerate starts it directly with gloo, not through
    `deepspeed.init_distributed`, so `deepspeed.zero.Init` inside `from_pretrained` would read its
    config before DeepSpeed knows any group, see a world size of 1 and reject the batch sizes
    computed for the real one. On GPUs accelerate calls `init_distributed` itself; this is then a no-op.
    """
    if not training_args.deepspeed or not torch.distributed.is_initialized():
        return
    import deepspeed

    deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
    if sys.platform != "linux":  # DeepSpeed builds its CPU shared-memory op on Linux only
        return
    buffer = deepspeed_cpu_shm_buffer(torch.distributed.get_rank())
    if buffer.exists():
        atexit.register(buffer.unlink, missing_ok=True)


def deepspeed_cpu_shm_buffer(rank: int) -> pathlib.Path:
    """The shared-memory file (69 MB, in RAM) DeepSpeed's CPU comm op creates for `rank` when all
    ranks are local (its `shm.cpp`: `deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>`).

    DeepSpeed never removes it: every CPU run under its launcher left one per rank in /dev/shm,
    until the machine's memory was full (measured: 313 files, 21 of 24 GB, after a day of tests).
    Training removes its own at exit; the ranks map each other's at start, so none is still needed."""
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return pathlib.Path("/dev/shm") / f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}"


def close_process_group() -> None:
    """Leave a multi-process group once every rank is done. A rank that exits with its gloo/NCCL
    threads still alive can abort at interpreter shutdown ("terminate called without an active
    exception", exit status 250) after its work was saved: seen in 2-rank ZeRO-3 runs on CPU."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if torch.distributed.get_world_size() > 1:  # a 1-process group may be reused in the same process
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def load_tokenizer(model_args, training_args):
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        cache_dir=training_args.cache_dir,
        model_max_length=training_args.model_max_length,
        padding_side="right",
        use_fast=False,
    )
    tokenizer.padding_side = "right"  # transformers 5's LlamaTokenizer defaults to left
    prepare_tokenizer(tokenizer, model_args.version)
    return tokenizer


def llm_family(model_args) -> LLMFamily | None:
    """The LLaVA family of `--model_name_or_path`, from its config.json (None without `--vision_tower`:
    a text-only run loads any causal LM through the Auto class). An unsupported model_type is an error
    listing the supported families, before anything loads."""
    if model_args.vision_tower is None:
        return None
    return family_of_pretrained(model_args.model_name_or_path)


def load_language_model(model_args, training_args, attn_implementation: str | None):
    """The LLM of `--model_name_or_path`: its family's LLaVA class with a tower, else the Auto class."""
    family = llm_family(model_args)
    model_class = family.causal_lm_class if family else transformers.AutoModelForCausalLM
    kwargs = {
        "cache_dir": training_args.cache_dir,
        "dtype": compute_dtype(training_args) if training_args.bf16 else torch.float32,
    }
    attn = resolve_attn_implementation(attn_implementation, family.causal_lm_class if family else None)
    if attn:
        kwargs["attn_implementation"] = attn
    model = model_class.from_pretrained(model_args.model_name_or_path, **kwargs)
    model.config.use_cache = False
    if model_args.freeze_backbone:
        model.model.requires_grad_(False)
    if training_args.gradient_checkpointing:
        # the LLM may be frozen: make its input embeddings require grad so checkpointed
        # segments still carry gradients back to the projector
        model.enable_input_require_grads()
    return model


def linear_layer_names(model) -> list[str]:
    """Short names of the LLM's linear layers (LoRA targets): not the tower, projector or head."""
    skip = ("mm_projector", "vision_tower", "vision_resampler", "lm_head")
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not any(s in name for s in skip)
    }
    return sorted(names)


def apply_lora(model, training_args):
    """Wrap the LLM with LoRA adapters; done before the tower exists, so adapters land on the LLM only."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=training_args.lora_r,
        lora_alpha=training_args.lora_alpha,
        target_modules=linear_layer_names(model),
        lora_dropout=training_args.lora_dropout,
        bias=training_args.lora_bias,
        task_type="CAUSAL_LM",
    )
    if training_args.bits == 16 and training_args.bf16:
        model.to(torch.bfloat16)
    logger.info("adding LoRA adapters (r=%d) to %s", training_args.lora_r, config.target_modules)
    return get_peft_model(model, config)


def attach_vision(model, tokenizer, model_args, data_args, training_args) -> None:
    """Load the tower, build/load the projector, and record the multimodal settings in the config."""
    llava = unwrap_peft(model)
    llava.get_model().initialize_vision_modules(model_args=model_args, fsdp=training_args.fsdp)
    tower = llava.get_vision_tower()
    tower.vision_tower.to(dtype=compute_dtype(training_args), device=training_args.device)
    data_args.image_processor = tower.image_processor
    data_args.is_multimodal = True
    data_args.mm_use_im_start_end = model_args.mm_use_im_start_end
    config = llava.config
    config.image_aspect_ratio = data_args.image_aspect_ratio
    config.tokenizer_padding_side = tokenizer.padding_side
    config.tokenizer_model_max_length = tokenizer.model_max_length
    config.tune_mm_mlp_adapter = training_args.tune_mm_mlp_adapter = model_args.tune_mm_mlp_adapter
    config.freeze_mm_mlp_adapter = training_args.freeze_mm_mlp_adapter
    config.mm_use_im_start_end = model_args.mm_use_im_start_end
    config.mm_projector_lr = training_args.mm_projector_lr
    config.mm_use_im_patch_token = model_args.mm_use_im_patch_token
    setattr(config, TRAINED_TEMPLATE_KEY, model_args.version)
    if model_args.tune_mm_mlp_adapter:  # stage 1: only the projector trains
        llava.requires_grad_(False)
        llava.get_model().mm_projector.requires_grad_(True)
    if training_args.freeze_mm_mlp_adapter:
        llava.get_model().mm_projector.requires_grad_(False)
    llava.initialize_vision_tokenizer(model_args, tokenizer=tokenizer)


def save_trained_model(trainer, model, training_args) -> None:
    """Write what upstream writes: projector only (stage 1), LoRA + non-LoRA, or the full model."""
    out = training_args.output_dir
    if getattr(training_args, "tune_mm_mlp_adapter", False):
        trainer.save_model(out)  # LLaVATrainer writes mm_projector.bin + config.json
        return
    if training_args.lora_enable:
        # only the trainable non-LoRA tensors (the projector) are gathered and copied
        non_lora = cpu_copies(
            (n, p) for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n
        )
        if training_args.should_save:
            unwrap_peft(model).config.save_pretrained(out)
            model.save_pretrained(out)
            make_adapter_config_portable(out)  # upstream LLaVA's peft 0.10 must read it (as in checkpoint-N)
            atomic_torch_save(non_lora, os.path.join(out, NON_LORA_FILE))
        return
    trainer.save_model(out)


def build_trainer(
    recipe: TrainRecipe | None = None, argv: list[str] | None = None, attn_implementation: str | None = None
) -> tuple[Trainer, TrainContext]:
    """Everything `train()` does before training: flags → tokenizer → model → data → trainer."""
    recipe = recipe or TrainRecipe()
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments, *recipe.extra_arguments))
    model_args, data_args, training_args, *extra = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(
        level=logging.INFO if training_args.should_log else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    set_seed(training_args.seed)  # before the projector is built: runs are reproducible
    check_data_inputs(data_args)
    conversation_template(model_args.version)  # an unknown --version fails before anything loads
    # a hub id becomes its cached snapshot (or a clear offline error), a local folder an absolute path, so
    # what the checkpoint records of its base (_name_or_path, the LoRA base) holds from any folder
    model_args.model_name_or_path = absolute_if_local(
        resolve_model_path(model_args.model_name_or_path, None, "--model_name_or_path"))
    llm_family(model_args)  # an unsupported LLM family fails before anything loads
    if model_args.vision_tower is not None:  # so does a tower without a wrapper or its select feature
        check_vision_tower(model_args)
    init_deepspeed_comm(training_args)  # before zero.Init partitions the model in from_pretrained
    data_args.version = model_args.version

    tokenizer = load_tokenizer(model_args, training_args)
    model = load_language_model(model_args, training_args, attn_implementation)
    if training_args.lora_enable:
        model = apply_lora(model, training_args)
    if model_args.vision_tower is not None:
        attach_vision(model, tokenizer, model_args, data_args, training_args)
    logger.info(
        "template %s; trainable parameters: %d",
        model_args.version,
        sum(p.numel() for p in model.parameters() if p.requires_grad),
    )

    ctx = TrainContext(
        model_args, data_args, training_args, {type(a).__name__: a for a in extra}, tokenizer, model
    )
    dataset = recipe.make_dataset(ctx)
    for key, value in recipe.config_entries(ctx).items():
        setattr(unwrap_peft(model).config, key, value)
    trainer = recipe.trainer_class(
        model=model,
        processing_class=tokenizer,
        args=training_args,
        train_dataset=dataset,
        data_collator=recipe.make_collator(ctx),
        callbacks=recipe.make_callbacks(ctx),
        **recipe.trainer_kwargs(ctx),
    )
    return trainer, ctx


def train(
    recipe: TrainRecipe | None = None, argv: list[str] | None = None, attn_implementation: str | None = None
) -> None:
    """Run one LLaVA training from command-line flags (`argv`, default `sys.argv[1:]`)."""
    trainer, ctx = build_trainer(recipe, argv, attn_implementation)
    training_args = ctx.training_args
    resume = any(pathlib.Path(training_args.output_dir).glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if resume else None)
    trainer.save_state()
    unwrap_peft(ctx.model).config.use_cache = True
    save_trained_model(trainer, ctx.model, training_args)
    close_process_group()


if __name__ == "__main__":
    train()
