"""Model classes; importing this package registers `llava_llama` with the Auto* factories."""

from .language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM

__all__ = ["LlavaConfig", "LlavaLlamaForCausalLM"]
