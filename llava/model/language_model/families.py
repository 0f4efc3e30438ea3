"""The LLM families a LLaVA model can be built on: one registry, one generic set of classes.

A family is keyed by its base config's `model_type` (what `config.json` of e.g. Qwen2.5-7B says:
`qwen2`), never by a folder name. For each family this module makes, once and by the same
recipe, three classes and registers them with `AutoConfig` / `AutoModelForCausalLM`:

| family    | transformers causal LM | our model_type  | our causal LM / config                          |
|-----------|------------------------|-----------------|-------------------------------------------------|
| `llama`   | `LlamaForCausalLM`     | `llava_llama`   | `LlavaLlamaForCausalLM` / `LlavaConfig`          |
| `mistral` | `MistralForCausalLM`   | `llava_mistral` | `LlavaMistralForCausalLM` / `LlavaMistralConfig` |
| `qwen2`   | `Qwen2ForCausalLM`     | `llava_qwen`    | `LlavaQwenForCausalLM` / `LlavaQwenConfig`       |
| `qwen3`   | `Qwen3ForCausalLM`     | `llava_qwen3`   | `LlavaQwen3ForCausalLM` / `LlavaQwen3Config`     |
| `gemma`   | `GemmaForCausalLM`     | `llava_gemma`   | `LlavaGemmaForCausalLM` / `LlavaGemmaConfig`     |
| `gemma2`  | `Gemma2ForCausalLM`    | `llava_gemma2`  | `LlavaGemma2ForCausalLM` / `LlavaGemma2Config`   |
| `phi3`    | `Phi3ForCausalLM`      | `llava_phi3`    | `LlavaPhi3ForCausalLM` / `LlavaPhi3Config`       |

Llama's and Mistral's names are upstream LLaVA's, Qwen2's and Gemma's LLaVA-NeXT's.
Decoders are `Llava{Stem}Model`. The model code is in `llava_causal_lm.py` (shared by all) and
`llava_arch.py` (the splice).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma2Model,
    GemmaConfig,
    GemmaForCausalLM,
    GemmaModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    MistralConfig,
    MistralForCausalLM,
    MistralModel,
    Phi3Config,
    Phi3ForCausalLM,
    Phi3Model,
    PretrainedConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Model,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3Model,
)

from ..llava_arch import LlavaMetaModel
from .llava_causal_lm import LegacyRopeConfigMixin, LlavaCausalLMMixin


@dataclass(frozen=True)
class LLMFamily:
    """One LLM family: the transformers classes it comes in and the LLaVA classes built on them."""

    name: str  # the base config's model_type, e.g. "qwen2"
    base_config_class: type
    base_decoder_class: type
    base_lm_class: type  # the family's *ForCausalLM
    llava_model_type: str  # e.g. "llava_qwen"
    config_class: type  # e.g. LlavaQwenConfig
    decoder_class: type  # e.g. LlavaQwenModel
    causal_lm_class: type  # e.g. LlavaQwenForCausalLM

    @property
    def model_types(self) -> tuple[str, str]:
        """The config model_types that mean this family: the base LLM's and our LLaVA one's."""
        return (self.name, self.llava_model_type)


def _make_family(
    name: str, base: tuple[type, type, type], llava_model_type: str, stem: str, config_name: str
) -> LLMFamily:
    """Our classes for one family: `config_name`, `Llava{stem}Model`, `Llava{stem}ForCausalLM`.

    `base` is the family's (config, decoder, causal LM) transformers classes.
    """
    config, decoder, lm = base
    config_class = type(config_name, (LegacyRopeConfigMixin, config), {"model_type": llava_model_type})
    decoder_class = type(f"Llava{stem}Model", (LlavaMetaModel, decoder), {"config_class": config_class})
    causal_lm_class = type(
        f"Llava{stem}ForCausalLM",
        (LlavaCausalLMMixin, lm),
        {"config_class": config_class, "_llava_lm_class": lm, "_llava_decoder_class": decoder_class},
    )
    for cls in (config_class, decoder_class, causal_lm_class):
        # importable (and picklable) as llava.model.language_model.families.<name>
        cls.__module__ = __name__
        globals()[cls.__name__] = cls
    AutoConfig.register(llava_model_type, config_class)
    AutoModelForCausalLM.register(config_class, causal_lm_class)
    return LLMFamily(name, *base, llava_model_type, config_class, decoder_class, causal_lm_class)


# (family = base model_type, transformers classes, our model_type, class-name stem, config class name)
_FAMILY_TABLE = (
    ("llama", (LlamaConfig, LlamaModel, LlamaForCausalLM), "llava_llama", "Llama", "LlavaConfig"),
    ("mistral", (MistralConfig, MistralModel, MistralForCausalLM), "llava_mistral", "Mistral",
     "LlavaMistralConfig"),
    ("qwen2", (Qwen2Config, Qwen2Model, Qwen2ForCausalLM), "llava_qwen", "Qwen", "LlavaQwenConfig"),
    ("qwen3", (Qwen3Config, Qwen3Model, Qwen3ForCausalLM), "llava_qwen3", "Qwen3", "LlavaQwen3Config"),
    ("gemma", (GemmaConfig, GemmaModel, GemmaForCausalLM), "llava_gemma", "Gemma", "LlavaGemmaConfig"),
    ("gemma2", (Gemma2Config, Gemma2Model, Gemma2ForCausalLM), "llava_gemma2", "Gemma2", "LlavaGemma2Config"),
    ("phi3", (Phi3Config, Phi3Model, Phi3ForCausalLM), "llava_phi3", "Phi3", "LlavaPhi3Config"),
)
LLM_FAMILIES: dict[str, LLMFamily] = {row[0]: _make_family(*row) for row in _FAMILY_TABLE}
_BY_MODEL_TYPE: dict[str, LLMFamily] = {
    model_type: family for family in LLM_FAMILIES.values() for model_type in family.model_types
}
LLAVA_MODEL_TYPES: frozenset[str] = frozenset(family.llava_model_type for family in LLM_FAMILIES.values())


class UnsupportedFamilyError(ValueError):
    """A config whose model_type is no supported LLM family."""


def supported_families_text() -> str:
    """`llama (llava_llama), mistral (llava_mistral), ...`: for error messages and docs."""
    return ", ".join(f"{f.name} ({f.llava_model_type})" for f in LLM_FAMILIES.values())


def family_of_model_type(model_type: str | None, where: str = "the model") -> LLMFamily:
    """The family a config `model_type` (base `qwen2` or ours `llava_qwen`) belongs to.

    Raises `UnsupportedFamilyError` naming `where` and listing the supported families.
    """
    family = _BY_MODEL_TYPE.get(model_type or "")
    if family is None:
        raise UnsupportedFamilyError(
            f"{where}: model_type {model_type!r} is not a supported LLM family; supported "
            f"(base model_type and LLaVA model_type): {supported_families_text()}"
        )
    return family


def family_of_config(config: PretrainedConfig | Mapping, where: str = "the model") -> LLMFamily:
    """The family of a loaded config or of a `config.json` dict (its `model_type`)."""
    model_type = config.get("model_type") if isinstance(config, Mapping) else config.model_type
    return family_of_model_type(model_type, where)


def family_of_pretrained(path: str | os.PathLike) -> LLMFamily:
    """The family of the model folder `path`, read from its `config.json` alone (no weights load)."""
    from ..checkpoints import read_config_dict  # local: checkpoints imports this module

    return family_of_config(read_config_dict(path), where=str(path))
