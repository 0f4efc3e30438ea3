"""`load_pretrained_model`: upstream's loader signature, choosing its branch from files.

Returns `(tokenizer, model, image_processor, context_len)` like upstream. The checkpoint
kind (full / projector + base / LoRA + base) comes from `checkpoints.detect_checkpoint_kind`;
the folder name is only a hint and is never required.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN
from llava.paths import resolve_model_path

from .checkpoints import (
    ADAPTER_CONFIG,
    NON_LORA_FILE,
    PROJECTOR_FILE,
    CheckpointKind,
    detect_checkpoint_kind,
    is_multimodal_config,
    load_non_lora_trainables,
    load_projector_file,
    read_config_dict,
)
from .language_model.families import LLMFamily, family_of_config, family_of_pretrained

logger = logging.getLogger(__name__)


def resolve_attn_implementation(requested: str | None, model_class: type | None = None) -> str | None:
    """`flash_attention_2` falls back to `sdpa` with a warning when flash-attn is not installed, and
    `sdpa` to `eager` for a `model_class` without sdpa (Gemma2: sdpa has no attention softcap), since
    harnesses pass `attn_implementation="sdpa"` whatever the model."""
    if (
        requested
        and requested.startswith("flash_attention")
        and importlib.util.find_spec("flash_attn") is None
    ):
        logger.warning(
            "attn_implementation=%s requested but flash-attn is not installed: using sdpa", requested
        )
        requested = "sdpa"
    if requested == "sdpa" and model_class is not None and not getattr(model_class, "_supports_sdpa", True):
        logger.warning("%s has no sdpa attention: using eager", model_class.__name__)
        return "eager"
    return requested


def find_base(model_base: str | None, model_path: str, kind: CheckpointKind) -> str:
    """The base LLM of a LoRA / projector checkpoint: `model_base`, else the local folder it records."""
    if model_base:
        return model_base
    hint = None
    if kind is CheckpointKind.LORA:
        hint = json.loads((Path(model_path) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    else:
        hint = read_config_dict(model_path).get("_name_or_path")
    if hint and os.path.isdir(hint):
        logger.warning(
            "model_base not given for %s checkpoint %s: using %s recorded in it", kind.value, model_path, hint
        )
        return hint
    raise ValueError(
        f"{model_path} is a {kind.value} checkpoint and needs the language model it was trained on: pass "
        f"model_base (the checkpoint records {hint!r}, which is not a local folder)"
    )


def _quantization_kwargs(load_8bit: bool, load_4bit: bool, dtype: torch.dtype) -> dict:
    if not (load_8bit or load_4bit):
        return {}
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError("load_8bit/load_4bit need the bitsandbytes package (pip install bitsandbytes)")
    from transformers import BitsAndBytesConfig

    if load_8bit:
        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True)}
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type="nf4",
        )
    }


def _load_tokenizer(*candidates: str):
    for folder in candidates:
        if folder and any(
            (Path(folder) / f).exists()
            for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
        ):
            return AutoTokenizer.from_pretrained(folder, use_fast=False)
    return AutoTokenizer.from_pretrained(candidates[-1], use_fast=False)


def load_pretrained_model(
    model_path: str,
    model_base: str | None,
    model_name: str | None = None,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device_map="auto",
    device: str = "cuda",
    use_flash_attn: bool = False,
    **kwargs,
):
    """Load any LLaVA checkpoint (or a plain LM) → `(tokenizer, model, image_processor, context_len)`.

    Extra kwargs: `attn_implementation` ("sdpa" default, "eager", "flash_attention_2"),
    `multimodal` (accepted for harness compatibility; the config decides), `dtype` /
    `torch_dtype` (default float16 on CUDA, float32 on CPU), `revision` (of a hub id), and anything
    else `from_pretrained` takes. `model_path` / `model_base` may be hub ids
    (`llava.paths.resolve_model_path`: fetched into the hub cache, or a clear error offline).
    """
    kwargs.pop("multimodal", None)
    revision = kwargs.pop("revision", None)
    model_path = resolve_model_path(str(model_path), revision, "model_path")
    if model_base:
        model_base = resolve_model_path(str(model_base), None, "model_base")
    dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
    on_gpu = device != "cpu" and torch.cuda.is_available()
    if dtype is None:
        dtype = torch.float16 if on_gpu else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    requested_attn = kwargs.pop("attn_implementation", None) or (
        "flash_attention_2" if use_flash_attn else None
    )
    load_kwargs = {"dtype": dtype, **_quantization_kwargs(load_8bit, load_4bit, dtype), **kwargs}
    if on_gpu:
        load_kwargs["device_map"] = device_map if device == "cuda" else {"": device}

    kind = detect_checkpoint_kind(model_path)
    config_dict = read_config_dict(model_path)
    if model_name and "llava" in model_name.lower() and not is_multimodal_config(config_dict):
        logger.warning("%s is named like a LLaVA model but its config has no vision tower", model_path)
    # the LLM family from the checkpoint's config, before any weights load (a plain LM: the Auto class)
    family = None
    if kind is not CheckpointKind.FULL or is_multimodal_config(config_dict):
        family = family_of_config(config_dict, where=model_path)
    attn = resolve_attn_implementation(requested_attn, family.causal_lm_class if family else None)
    if attn:
        load_kwargs["attn_implementation"] = attn

    if kind is CheckpointKind.LORA:
        base = _base_of_family(find_base(model_base, model_path, kind), family, model_path)
        config = family.config_class.from_pretrained(model_path)
        tokenizer = _load_tokenizer(
            model_path if (Path(model_path) / "tokenizer_config.json").exists() else "", base
        )
        model = _load_base_with_new_projector(base, family, config, **load_kwargs)
        _match_vocab(model, config)
        if (Path(model_path) / NON_LORA_FILE).exists():
            load_non_lora_trainables(model, Path(model_path) / NON_LORA_FILE)
        # LoRA is merged before the tower is loaded, so adapters can only land on the LLM.
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, model_path).merge_and_unload()
    elif kind is CheckpointKind.PROJECTOR:
        base = _base_of_family(find_base(model_base, model_path, kind), family, model_path)
        config = family.config_class.from_pretrained(model_path)
        tokenizer = _load_tokenizer(base)
        model = _load_base_with_new_projector(base, family, config, **load_kwargs)
        load_projector_file(model.get_model().mm_projector, Path(model_path) / PROJECTOR_FILE)
    elif is_multimodal_config(config_dict):
        if model_base:
            logger.info(
                "%s holds full weights: model_base %s is not needed and is ignored", model_path, model_base
            )
        tokenizer = _load_tokenizer(model_path)
        model, info = family.causal_lm_class.from_pretrained(
            model_path, output_loading_info=True, **load_kwargs
        )
        _check_load_report(info, model_path, family, may_miss=("vision_tower",))
    else:
        tokenizer = _load_tokenizer(model_path, model_base or model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path, **load_kwargs)
        return tokenizer, model, None, _context_length(model.config)

    image_processor = _finish_multimodal(model, tokenizer, dtype, device if on_gpu else "cpu")
    return tokenizer, model, image_processor, _context_length(model.config)


def _base_of_family(base: str, family: LLMFamily, model_path: str) -> str:
    """`base`, checked to be of the LLM family the checkpoint `model_path` was trained on (config only)."""
    base_family = family_of_pretrained(base)
    if base_family is not family:
        raise ValueError(
            f"{model_path} was trained on a {family.name} LLM ({family.llava_model_type}), but its base "
            f"{base} is a {base_family.name} model: pass the base it was trained on as model_base"
        )
    return base


def _load_base_with_new_projector(base: str, family: LLMFamily, config, **load_kwargs):
    """Load a bare LLM as LLaVA; only the projector may be missing (it comes from a side file)."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the expected 'MISSING mm_projector' report is noise here
    try:
        model, info = family.causal_lm_class.from_pretrained(
            base, config=config, output_loading_info=True, **load_kwargs
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    _check_load_report(info, f"base model {base}", family, may_miss=("mm_projector", "vision_tower"))
    return model


def _check_load_report(info: dict, what: str, family: LLMFamily, may_miss: tuple[str, ...]) -> None:
    """A missing weight (other than `may_miss`) or an unexpected one is an error naming `what`: transformers
    only reports them, and an unexpected one is dropped (a Qwen2 base's q/k/v biases in a Llama class)."""
    unexpected = [k for k in info["unexpected_keys"] if "vision_tower" not in k]
    if unexpected:
        raise ValueError(
            f"{what} has weights that {family.causal_lm_class.__name__} does not take (they would be "
            f"dropped): {unexpected[:8]}"
        )
    missing = [k for k in info["missing_keys"] if not any(part in k for part in may_miss)]
    if missing:
        raise ValueError(f"{what} is missing weights the model needs: {missing[:8]}")


def _match_vocab(model, config) -> None:
    """LoRA runs that added tokens save a bigger vocabulary than the base has."""
    if model.lm_head.weight.shape[0] != config.vocab_size:
        model.resize_token_embeddings(config.vocab_size)


def _finish_multimodal(model, tokenizer, dtype: torch.dtype, device: str):
    config = model.config
    added = []
    if getattr(config, "mm_use_im_patch_token", False):
        added.append(DEFAULT_IMAGE_PATCH_TOKEN)
    if getattr(config, "mm_use_im_start_end", False):
        added += [DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN]
    if added and tokenizer.add_tokens(added, special_tokens=True):
        model.resize_token_embeddings(len(tokenizer))
    tower = model.get_vision_tower()
    tower.load_model()
    tower.vision_tower.to(device=device, dtype=dtype)
    if device != "cpu" and not hasattr(model, "hf_device_map"):
        model.to(device)
    return tower.image_processor


def _context_length(config) -> int:
    return int(getattr(config, "max_sequence_length", 2048))
