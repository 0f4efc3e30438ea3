"""Named model shapes and their FLOP counts: pure functions of the published dimensions, no torch.

A shape is an LLM (LLaMA/Vicuna), a CLIP vision tower and the LLaVA-1.5 projector. `7b` and `13b`
are Vicuna-7B/13B v1.5 with CLIP ViT-L/14-336 and `mlp2x_gelu`; `tiny` is `llava.tiny`'s default
models, the shape of the test fixtures. `with_llm_layers` truncates the LLM so the real vision
shape fits a CPU.

FLOPs count matrix multiplications only (2 per multiply-add), attention scores and values over
the full T × T square (what SDPA/eager compute; a causal flash kernel skips about half), no
softmax/norm/activation work, no patch-loss work (a few (R, D) products). Stage 1 per sample,
T = LLM tokens (vision tokens + text tokens), N = tower tokens:

    tower forward            L_v · (8 N C² + 4 N C F_v + 4 N² C) + 2 (N − 1) · 3 p² · C
    projector forward        2 N_img (C D + D D)                           (mlp2x_gelu)
    projector backward       2 N_img (C D + D D)  [weight grads]  + 2 N_img D D  [input grad of layer 2]
    LLM forward              L · (4 T D² + 4 T D D_kv + 6 T D F + 4 T² D) + 2 T D V
    LLM backward (frozen)    L · (4 T D² + 4 T D D_kv + 6 T D F + 8 T² D) + 2 T D V

The frozen LLM's backward computes activation gradients only (one product per weight matrix,
two per attention product); the tower is frozen and needs no backward at all. Gradient
checkpointing's recomputation is not counted: MFU counts model FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class LlmShape:
    """A LLaMA decoder: D = hidden_size, F = intermediate_size, V = vocab_size."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int

    @property
    def kv_size(self) -> int:
        """D_kv: the width of the key and value projections (grouped-query attention)."""
        return self.hidden_size // self.num_attention_heads * self.num_key_value_heads


@dataclass(frozen=True)
class VisionShape:
    """A CLIP vision tower: C = hidden_size, F_v = intermediate_size, p = patch_size."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int
    patch_size: int

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class BenchShape:
    """LLM + tower + projector; the image enters the LLM as `num_patches` tokens (select_feature patch)."""

    name: str
    llm: LlmShape
    vision: VisionShape
    projector_type: str = "mlp2x_gelu"

    def with_llm_layers(self, layers: int | None) -> BenchShape:
        """This shape with the LLM cut to its first `layers` layers (None: unchanged)."""
        if layers is None:
            return self
        if not 1 <= layers <= self.llm.num_hidden_layers:
            raise ValueError(
                f"--llm-layers must be in [1, {self.llm.num_hidden_layers}] for shape {self.name}, "
                f"got {layers}"
            )
        return replace(self, llm=replace(self.llm, num_hidden_layers=layers))


CLIP_L_336 = VisionShape(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    image_size=336, patch_size=14,
)
VICUNA_7B = LlmShape(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096,
)
VICUNA_13B = LlmShape(
    hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
    num_key_value_heads=40, vocab_size=32000, max_position_embeddings=4096,
)
# llava.tiny's defaults (build_tiny_llama / build_tiny_clip); the vocabulary is the tokenizer's
TINY_LLM = LlmShape(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=4, vocab_size=320, max_position_embeddings=2048,
)
TINY_VISION = VisionShape(
    hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
    image_size=56, patch_size=14,
)

SHAPES: dict[str, BenchShape] = {
    "tiny": BenchShape("tiny", TINY_LLM, TINY_VISION),
    "7b": BenchShape("7b", VICUNA_7B, CLIP_L_336),
    "13b": BenchShape("13b", VICUNA_13B, CLIP_L_336),
}


def shape_named(name: str, llm_layers: int | None = None) -> BenchShape:
    """The named shape, its LLM truncated to `llm_layers`; ValueError naming the choices."""
    if name not in SHAPES:
        raise ValueError(f"--shape {name!r}: choose one of {sorted(SHAPES)}")
    return SHAPES[name].with_llm_layers(llm_layers)


@dataclass(frozen=True)
class StageOneFlops:
    """Model FLOPs of one stage-1 sample, by part (see the module docstring)."""

    tower_forward: int
    projector_forward: int
    projector_backward: int
    llm_forward: int
    llm_backward: int

    @property
    def total(self) -> int:
        return (self.tower_forward + self.projector_forward + self.projector_backward
                + self.llm_forward + self.llm_backward)


def tower_forward_flops(vision: VisionShape) -> int:
    """CLIP forward on one image: patch embedding plus every layer over N = patches + 1 (CLS) tokens."""
    n, c, f = vision.num_patches + 1, vision.hidden_size, vision.intermediate_size
    per_layer = 8 * n * c * c + 4 * n * c * f + 4 * n * n * c
    patch_embedding = 2 * vision.num_patches * 3 * vision.patch_size**2 * c
    return vision.num_hidden_layers * per_layer + patch_embedding


def projector_flops(shape: BenchShape) -> tuple[int, int]:
    """(forward, backward) of `mlp2x_gelu` on one image's patch tokens; the tower is frozen, so the
    first layer's input gradient is not computed."""
    if shape.projector_type != "mlp2x_gelu":
        raise ValueError(f"FLOPs are counted for mlp2x_gelu only, not {shape.projector_type!r}")
    n, c, d = shape.vision.num_patches, shape.vision.hidden_size, shape.llm.hidden_size
    forward = 2 * n * (c * d + d * d)
    return forward, forward + 2 * n * d * d


def llm_flops(llm: LlmShape, tokens: int) -> tuple[int, int]:
    """(forward, activation-gradient backward) of the frozen LLM on one sequence of `tokens`."""
    t, d, f, kv = tokens, llm.hidden_size, llm.intermediate_size, llm.kv_size
    weights = 4 * t * d * d + 4 * t * d * kv + 6 * t * d * f
    attention = 4 * t * t * d
    head = 2 * t * d * llm.vocab_size
    layers = llm.num_hidden_layers
    return layers * (weights + attention) + head, layers * (weights + 2 * attention) + head


def stage_one_flops(shape: BenchShape, text_tokens: int) -> StageOneFlops:
    """FLOPs of one stage-1 sample with one image and `text_tokens` text tokens (T = N_img + text)."""
    projector_forward, projector_backward = projector_flops(shape)
    llm_forward, llm_backward = llm_flops(shape.llm, shape.vision.num_patches + text_tokens)
    return StageOneFlops(
        tower_forward=tower_forward_flops(shape.vision),
        projector_forward=projector_forward,
        projector_backward=projector_backward,
        llm_forward=llm_forward,
        llm_backward=llm_backward,
    )


def generation_flops(llm: LlmShape, prompt_tokens: int, new_tokens: int) -> int:
    """Forward FLOPs of greedy generation with a KV cache: the prompt once, then one token at a time
    (token i attends over prompt + i positions)."""
    t, d, f, kv = prompt_tokens, llm.hidden_size, llm.intermediate_size, llm.kv_size
    per_token_weights = 4 * d * d + 4 * d * kv + 6 * d * f
    head = 2 * d * llm.vocab_size
    total = llm.num_hidden_layers * (t * per_token_weights + 4 * t * t * d) + t * head
    for i in range(1, new_tokens):  # the first new token comes from the prompt's forward
        context = t + i
        total += llm.num_hidden_layers * (per_token_weights + 4 * context * d) + head
    return total
