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
import enum
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

PROJECTOR_FILE = "mm_projector.bin"
NON_LORA_FILE = "non_lora_trainables.bin"
ADAPTER_CONFIG = "adapter_config.json"
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


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
    return config.get("model_type") == "llava_llama" or bool(config.get("mm_vision_tower"))


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """Write with torch.save to a temporary file in the same folder, then rename (no torn files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
