"""Upstream's module path for the Llama classes (`llava_llama`); they are made in `families.py`."""

from __future__ import annotations

from .families import LLM_FAMILIES
from .llava_causal_lm import LEGACY_ROPE_KEYS, LlavaCausalLMOutputWithPast, legacy_rope_entries

_LLAMA = LLM_FAMILIES["llama"]
LlavaConfig = _LLAMA.config_class
LlavaLlamaModel = _LLAMA.decoder_class
LlavaLlamaForCausalLM = _LLAMA.causal_lm_class

__all__ = [
    "LEGACY_ROPE_KEYS", "LlavaCausalLMOutputWithPast", "LlavaConfig", "LlavaLlamaForCausalLM",
    "LlavaLlamaModel", "legacy_rope_entries",
]
