"""The one LLaVA causal LM: what every family's `Llava*ForCausalLM` adds to its transformers class.

`families.py` builds, per LLM family, a config class (`LegacyRopeConfigMixin` + the family's
config), a decoder class (`LlavaMetaModel` + the family's decoder) and a causal-LM class
(`LlavaCausalLMMixin` + the family's `*ForCausalLM`). The mixins here hold all the model code:
the family's own `forward` runs unchanged on the spliced embeddings, so what a family does after
the decoder (Gemma2's final-logit softcap) is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..llava_arch import LlavaMetaForCausalLM

# transformers 4.x (upstream LLaVA pins 4.37.2) reads the rotary settings only from these
# top-level keys; transformers 5 keeps them inside `rope_parameters`. (`partial_rotary_factor`:
# Phi-3's 4.x configs carry it at the top level, it is no scaling parameter.)
LEGACY_ROPE_KEYS = ("rope_theta", "rope_scaling", "partial_rotary_factor")


def legacy_rope_entries(rope_parameters: dict) -> dict:
    """The top-level `rope_theta` / `rope_scaling` that transformers 4.37 reads for `rope_parameters`.

    4.37 knows plain RoPE (`rope_scaling: null`) and `{"type": "linear" | "dynamic", "factor": float}`.
    Any other RoPE (llama3, yarn, dynamic with extra keys, ...) is written with all its parameters
    under `type`, which 4.37 refuses with a ValueError instead of running with plain RoPE.
    A `partial_rotary_factor` (Phi-3) is written beside them, where transformers 4.x reads it.
    """
    params = dict(rope_parameters)
    partial = {key: params.pop(key) for key in ("partial_rotary_factor",) if key in params}
    theta = params.pop("rope_theta")
    rope_type = params.pop("rope_type", "default")
    params.pop("type", None)  # transformers 5 keeps a 4.x config's `type` beside `rope_type`
    if rope_type == "default" and not params:
        scaling = None
    elif rope_type in ("linear", "dynamic") and set(params) == {"factor"}:
        scaling = {"type": rope_type, "factor": float(params["factor"])}  # 4.37 rejects an int factor
    else:
        scaling = {"type": rope_type, **params}
    return {"rope_theta": theta, "rope_scaling": scaling, **partial}


class LegacyRopeConfigMixin:
    """A family's config plus upstream's `mm_*` keys (kept as attributes, written to config.json).

    config.json also carries `rope_theta` and `rope_scaling` at the top level, as transformers
    4.37 (upstream LLaVA) reads them: without them it silently runs with rope_theta 10000.
    """

    def to_dict(self) -> dict:
        return {**super().to_dict(), **legacy_rope_entries(self.rope_parameters)}

    def convert_rope_params_to_dict(self, **kwargs) -> dict:
        # A file with `rope_parameters` and the legacy keys was written by `to_dict` above: the
        # legacy keys only mirror it, and a mirror edited on its own is an error, not ignored.
        mirror = {key: kwargs.pop(key) for key in LEGACY_ROPE_KEYS if key in kwargs}
        if mirror and self.rope_parameters:
            expected = legacy_rope_entries(self.rope_parameters)
            differing = {key: value for key, value in mirror.items() if value != expected.get(key)}
            if differing:
                raise ValueError(
                    f"{self.model_type} config: the top-level {differing} (read by transformers 4.x) "
                    f"disagree with rope_parameters {self.rope_parameters} (read by transformers 5): "
                    f"they must describe the same RoPE, i.e. {expected}"
                )
        else:  # a transformers 4.x config: the top-level keys are all it has
            kwargs.update(mirror)
        return super().convert_rope_params_to_dict(**kwargs)


@dataclass
class LlavaCausalLMOutputWithPast(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus the projected image tokens (B_img, N, D) when asked for."""

    image_features: torch.Tensor | None = None


class LlavaCausalLMMixin(LlavaMetaForCausalLM):
    """Put first in the bases of a family's `*ForCausalLM`; `families.py` sets the two class attributes.

    `_llava_lm_class` is the family's transformers causal-LM class (whose `__init__` is replaced,
    because it would build the plain decoder), `_llava_decoder_class` our decoder for that family.
    """

    _llava_lm_class: type
    _llava_decoder_class: type
    # Upstream's trainer saves the frozen tower into full checkpoints; it is always reloaded
    # from `mm_vision_tower`, so those keys are expected and unused.
    _keys_to_ignore_on_load_unexpected = [r"model\.vision_tower\..*"]

    def __init__(self, config):
        # What every supported family's *ForCausalLM.__init__ does, with our decoder in place of its
        # own (tests/test_families.py checks the parameter names equal the plain class's).
        super(self._llava_lm_class, self).__init__(config)
        self.model = self._llava_decoder_class(config)
        self.vocab_size = config.vocab_size
        self.lm_head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_model(self):
        return self.model

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        images: torch.FloatTensor | list | None = None,
        image_sizes: list | None = None,
        return_image_features: bool = False,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Upstream's forward: `images` (B_img, 3, H, W) are spliced at IMAGE_TOKEN_INDEX positions.

        `return_image_features=True` adds `image_features` (B_img, N, D) to the output:
        the projector output of this very forward, for auxiliary alignment losses.
        """
        cache = kwargs.pop("past_key_values", cache)  # v4 name, still used by older callers
        image_features = None
        if inputs_embeds is None:
            (
                input_ids,
                position_ids,
                attention_mask,
                cache,
                inputs_embeds,
                labels,
                image_features,
            ) = self.prepare_inputs_labels_for_multimodal(
                input_ids,
                position_ids,
                attention_mask,
                cache,
                labels,
                images,
                image_sizes,
                return_image_features=True,
            )
        outputs = super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        if return_image_features:
            return LlavaCausalLMOutputWithPast(**outputs, image_features=image_features)
        return outputs

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, images=None, image_sizes=None, **kwargs):
        """Upstream's generate: the prompt goes in as embeddings, so only new tokens come back.

        The batch is always re-padded on the left (with a matching attention mask) before
        generation, so right- or left-padded inputs give the same tokens as unbatched ones.
        """
        if "inputs_embeds" in kwargs:
            raise NotImplementedError("pass input_ids (with IMAGE_TOKEN_INDEX) and images, not inputs_embeds")
        if inputs is None:
            inputs = kwargs.pop("input_ids", None)
        if inputs is None:
            raise ValueError("generate needs the prompt ids as `inputs` (positional) or `input_ids`")
        attention_mask = kwargs.pop("attention_mask", None)
        kwargs.pop("position_ids", None)  # recomputed from the re-padded mask by generate()
        # one image per <image> token: a prompt may hold several images, a text-only prompt none
        spliced, _ = self.splice_multimodal(
            inputs, attention_mask, None, images, padding_side="left", image_layout="per_token"
        )
        return super().generate(
            inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask, **kwargs
        )

    def prepare_inputs_for_generation(self, input_ids, cache=None, inputs_embeds=None, **kwargs):
        images = kwargs.pop("images", None)
        image_sizes = kwargs.pop("image_sizes", None)
        inputs = super().prepare_inputs_for_generation(
            input_ids, cache=cache, inputs_embeds=inputs_embeds, **kwargs
        )
        if images is not None:
            inputs["images"] = images
        if image_sizes is not None:
            inputs["image_sizes"] = image_sizes
        return inputs
