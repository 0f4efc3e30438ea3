"""What a checkpoint folder is, and the projector / LoRA side files upstream writes.

Upstream LLaVA picks a loading branch from the *folder name*; here the kind follows from
the files present and the config:

| kind           | files                                                   |
|----------------|---------------------------------------------------------|
| `lora`         | `adapter_config.json` (+ `non_lora_trainables.bin`)     |
| `full`         | `model.safetensors` / `pytorch_model.bin` (or sharded)  |
| `projector`    | `mm_projector.bin` + `config.json`, no LLM weights      |

Torch files are always read with `weights_only=True` and written atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

PROJECTOR_FILE = "mm_projector.bin"
NON_LORA_FILE = "non_lora_trainables.bin"
ADAPTER_CONFIG = "adapter_config.json"
# config.json key under which training records its `--version`: the template the checkpoint was trained
# on, so inference need not guess it from the folder name (upstream has no such key and ignores it).
TRAINED_TEMPLATE_KEY = "mm_conv_template"
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# The LoraConfig fields of peft 0.10.0 (upstream LLaVA 1.2.2's pin), whose `LoraConfig(**json)`
# raises TypeError on any other key; tests/test_upstream_readers.py checks the list against peft 0.10.
PEFT_0_10_LORA_KEYS = frozenset({
    "alpha_pattern", "auto_mapping", "base_model_name_or_path", "bias", "fan_in_fan_out",
    "inference_mode", "init_lora_weights", "layer_replication", "layers_pattern", "layers_to_transform",
    "loftq_config", "lora_alpha", "lora_dropout", "megatron_config", "megatron_core", "modules_to_save",
    "peft_type", "r", "rank_pattern", "revision", "target_modules", "task_type", "use_dora", "use_rslora",
})
# Provenance that peft writes on save and fills in with its own version on load.
_PEFT_METADATA_KEYS = frozenset({"peft_version"})


class CheckpointKind(str, enum.Enum):
    FULL = "full"
    PROJECTOR = "projector"
    LORA = "lora"


def detect_checkpoint_kind(path: str | os.PathLike) -> CheckpointKind:
    """Tell a checkpoint folder's kind from its files (see module docstring)."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    names = {p.name for p in folder.iterdir()}
    if ADAPTER_CONFIG in names:
        return CheckpointKind.LORA
    if names & set(_WEIGHT_FILES) or any(
        n.startswith("model-0") and n.endswith(".safetensors") for n in names
    ):
        return CheckpointKind.FULL
    if PROJECTOR_FILE in names:
        return CheckpointKind.PROJECTOR
    raise ValueError(
        f"{folder} is not a LLaVA checkpoint: expected model weights "
        "(model.safetensors / pytorch_model.bin), "
        f"{ADAPTER_CONFIG} (LoRA) or {PROJECTOR_FILE} (stage-1 projector); found {sorted(names)}"
    )


def read_config_dict(path: str | os.PathLike) -> dict:
    config = Path(path) / "config.json"
    if not config.exists():
        raise FileNotFoundError(f"{config} is missing: every LLaVA checkpoint folder carries its config.json")
    return json.loads(config.read_text())


def is_multimodal_config(config: dict) -> bool:
    """A config.json dict of a LLaVA model: our model_type (`llava_llama`, `llava_qwen`, ...) or a tower."""
    from .language_model.families import LLAVA_MODEL_TYPES  # local: families imports this module lazily

    return config.get("model_type") in LLAVA_MODEL_TYPES or bool(config.get("mm_vision_tower"))


def _atomic_write(path: str | os.PathLike, write) -> None:
    """`write(tmp)` to a temporary file in the same folder, then rename it to `path` (no torn files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """Write with torch.save to a temporary file in the same folder, then rename (no torn files)."""
    _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_torch_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


@contextlib.contextmanager
def gathered_parameters(params: Iterable[nn.Parameter], modifier_rank: int | None = None) -> Iterator[None]:
    """Gather ZeRO-3 partitioned parameters for the duration of the block; no-op otherwise."""
    params = list(params)
    if not any(hasattr(p, "ds_id") for p in params):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield


def cpu_copies(named_parameters: Iterable[tuple[str, nn.Parameter]]) -> dict[str, torch.Tensor]:
    """CPU copies of `(name, parameter)` pairs; under ZeRO-3 only these are gathered."""
    chosen = list(named_parameters)
    with gathered_parameters([p for _, p in chosen]):
        return {n: p.detach().cpu().clone() for n, p in chosen}


def state_dict_matching(model: nn.Module, keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """CPU copies of the named parameters whose name contains any of `keys` (ZeRO-3 safe)."""
    keys = tuple(keys)
    return cpu_copies((n, p) for n, p in model.named_parameters() if any(k in n for k in keys))


def projector_state_dict(model: nn.Module, extra_keys: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """`model.mm_projector.*` (+ e.g. `embed_tokens` when im_start/end tokens train) for mm_projector.bin."""
    state = state_dict_matching(model, ("mm_projector", *extra_keys))
    # PEFT wraps the model as base_model.model.*: upstream's file always has the bare `model.` prefix
    return {k.removeprefix("base_model.model."): v for k, v in state.items()}


def save_projector(model: nn.Module, output_dir: str | os.PathLike, extra_keys: Iterable[str] = ()) -> Path:
    """Write `output_dir/mm_projector.bin` with upstream's key names; returns the path."""
    target = Path(output_dir) / PROJECTOR_FILE
    atomic_torch_save(projector_state_dict(model, extra_keys), target)
    return target


def load_projector_file(projector: nn.Module, path: str | os.PathLike) -> None:
    """Load an upstream `mm_projector.bin` into `projector` (keys stripped up to `mm_projector.`).

    Strict: every projector parameter must be in the file with the right shape, so a
    file from another projector type fails here rather than training from noise.
    """
    from .llava_arch import strip_projector_prefix

    weights = strip_projector_prefix(load_torch_file(path))
    with gathered_parameters(projector.parameters(), modifier_rank=0):
        try:
            projector.load_state_dict(weights, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{path} does not fit this projector: {err}") from err


def load_non_lora_trainables(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Load `non_lora_trainables.bin` (keys `base_model.model.model.mm_projector.*`) into a bare model.

    Returns the loaded key names; raises when the projector is not among them.
    """
    weights = load_torch_file(path)
    cleaned = {}
    for key, value in weights.items():
        key = key.removeprefix("base_model.").removeprefix("model.") if key.startswith("base_model.") else key
        cleaned[key] = value
    if not any("mm_projector" in k for k in cleaned):
        raise ValueError(f"{path} holds no mm_projector weights (keys: {sorted(cleaned)[:6]})")
    own = dict(model.named_parameters())
    unknown = [k for k in cleaned if k not in own]
    if unknown:
        raise ValueError(f"{path} has weights this model lacks: {unknown[:6]}")
    with torch.no_grad():
        for key, value in cleaned.items():
            if own[key].shape != value.shape:
                raise ValueError(
                    f"{path}: {key} has shape {tuple(value.shape)}, model has {tuple(own[key].shape)}"
                )
            own[key].copy_(value.to(own[key].dtype))
    return sorted(cleaned)


def write_tokenizer(tokenizer, output_dir: str | os.PathLike) -> None:
    """`save_pretrained` plus the files transformers 4.x readers (upstream LLaVA) need.

    transformers 5 writes only `tokenizer.json` (which 4.37's tokenizers cannot parse) and
    drops `legacy` from `tokenizer_config.json` (4.x then assumes legacy=True, which
    tokenises text after `</s>` differently). Upstream loads the slow SentencePiece
    tokenizer, so the original `tokenizer.model` is copied and `legacy` written back.
    """
    output_dir = Path(output_dir)
    tokenizer.save_pretrained(output_dir)
    source = getattr(tokenizer, "vocab_file", None)
    target = output_dir / "tokenizer.model"
    if source and os.path.isfile(source) and not target.exists():
        shutil.copyfile(source, target)
    config_path = output_dir / "tokenizer_config.json"
    if config_path.exists():
        config = json.loads(config_path.read_text())
        if "legacy" not in config and hasattr(tokenizer, "legacy"):
            config["legacy"] = bool(tokenizer.legacy)
            config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def portable_adapter_config(config: dict) -> tuple[dict, dict]:
    """A LoRA `adapter_config.json` dict that peft 0.10 (upstream LLaVA) reads and newer peft reads the same.

    A key peft 0.10 does not know is dropped when it holds the installed peft's default (peft fills
    absent keys with their defaults on load, so nothing changes for it) or is metadata (`peft_version`).
    A non-default value peft 0.10 cannot represent is kept: peft 0.10 then refuses the adapter loudly
    instead of loading a different one. Returns `(portable config, kept keys peft 0.10 rejects)`.
    """
    from peft import LoraConfig

    if config.get("peft_type") != "LORA":
        raise ValueError(f"not a LoRA adapter config (peft_type {config.get('peft_type')!r})")
    defaults = {
        field.name: field.default if field.default is not dataclasses.MISSING else field.default_factory()
        for field in dataclasses.fields(LoraConfig)
        if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
    }
    portable, unreadable = {}, {}
    for key, value in config.items():
        if key in PEFT_0_10_LORA_KEYS:
            portable[key] = value
        elif key in _PEFT_METADATA_KEYS or (key in defaults and value == defaults[key]):
            continue
        else:
            portable[key] = unreadable[key] = value
    return portable, unreadable


def make_adapter_config_portable(folder: str | os.PathLike) -> dict:
    """Rewrite `folder/adapter_config.json` per `portable_adapter_config`; returns the keys peft 0.10 rejects.

    Every LoRA save calls it (the final output and each `checkpoint-N/`), so upstream LLaVA's
    `PeftModel.from_pretrained` loads what we write; our loader and resume read it with peft's defaults.
    """
    path = Path(folder) / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text())
        portable, unreadable = portable_adapter_config(config)
    except ValueError as err:  # JSONDecodeError included
        raise ValueError(f"{path}: {err}") from err
    if unreadable:
        logger.warning(
            "%s keeps %s: peft 0.10 (upstream LLaVA) cannot load this adapter", path, sorted(unreadable)
        )
    # peft's own layout (indent 2, sorted keys), so the file differs from peft's only by the dropped keys
    _atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(portable, indent=2, sort_keys=True)))
    return unreadable
