"""LLaVA-NeXT's module path for the Gemma classes (`llava_gemma`); they are made in `families.py`."""

from __future__ import annotations

from .families import LLM_FAMILIES

_GEMMA = LLM_FAMILIES["gemma"]
LlavaGemmaConfig = _GEMMA.config_class
LlavaGemmaModel = _GEMMA.decoder_class
LlavaGemmaForCausalLM = _GEMMA.causal_lm_class

__all__ = ["LlavaGemmaConfig", "LlavaGemmaForCausalLM", "LlavaGemmaModel"]
