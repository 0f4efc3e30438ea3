"""Model classes; importing this package registers every LLaVA family with the Auto* factories.

The names are upstream LLaVA's (`LlavaLlamaForCausalLM`, `LlavaMistralForCausalLM`) and
LLaVA-NeXT's (`LlavaQwenForCausalLM`, `LlavaGemmaForCausalLM`); the rest follow the same pattern.
All are made in `language_model/families.py`.
"""

from .language_model.families import (
    LLM_FAMILIES,
    LlavaConfig,
    LlavaGemma2Config,
    LlavaGemma2ForCausalLM,
    LlavaGemmaConfig,
    LlavaGemmaForCausalLM,
    LlavaLlamaForCausalLM,
    LlavaMistralConfig,
    LlavaMistralForCausalLM,
    LlavaPhi3Config,
    LlavaPhi3ForCausalLM,
    LlavaQwen3Config,
    LlavaQwen3ForCausalLM,
    LlavaQwenConfig,
    LlavaQwenForCausalLM,
)

__all__ = [
    "LLM_FAMILIES", "LlavaConfig", "LlavaGemma2Config", "LlavaGemma2ForCausalLM", "LlavaGemmaConfig",
    "LlavaGemmaForCausalLM", "LlavaLlamaForCausalLM", "LlavaMistralConfig", "LlavaMistralForCausalLM",
    "LlavaPhi3Config", "LlavaPhi3ForCausalLM", "LlavaQwen3Config", "LlavaQwen3ForCausalLM", "LlavaQwenConfig",
    "LlavaQwenForCausalLM",
]
