"""Upstream's module path for the Mistral classes (`llava_mistral`); they are made in `families.py`."""

from __future__ import annotations

from .families import LLM_FAMILIES

_MISTRAL = LLM_FAMILIES["mistral"]
LlavaMistralConfig = _MISTRAL.config_class
LlavaMistralModel = _MISTRAL.decoder_class
LlavaMistralForCausalLM = _MISTRAL.causal_lm_class

__all__ = ["LlavaMistralConfig", "LlavaMistralForCausalLM", "LlavaMistralModel"]
