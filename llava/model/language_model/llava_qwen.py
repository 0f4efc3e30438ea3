"""LLaVA-NeXT's module path for the Qwen2 classes (`llava_qwen`); they are made in `families.py`."""

from __future__ import annotations

from .families import LLM_FAMILIES

_QWEN = LLM_FAMILIES["qwen2"]
LlavaQwenConfig = _QWEN.config_class
LlavaQwenModel = _QWEN.decoder_class
LlavaQwenForCausalLM = _QWEN.causal_lm_class

__all__ = ["LlavaQwenConfig", "LlavaQwenForCausalLM", "LlavaQwenModel"]
