"""Tiny base LMs of every supported LLM family, on tiny real tokenizers of the family's own kind.

Shared by tests/test_families.py and tests/test_backbone_matrix.py. A *variant* is an LLM family
plus the tokenizer its checkpoints ship with (Llama comes with Llama-2's SentencePiece and Llama-3's
byte-level BPE tokenizer; Qwen3 uses Qwen2's tokenizer, Gemma2 Gemma's).
"""

from __future__ import annotations

from pathlib import Path

from llava.tiny import TINY_LM_VARIANTS

FIXTURES = Path(__file__).parent / "data" / "upstream_golden" / "fixtures-437"

# variant: (LLM family = base model_type, tokenizer kind of llava.tiny_tokenizers)
LM_VARIANTS: dict[str, tuple[str, str]] = {
    name: (variant.family, variant.tokenizer) for name, variant in TINY_LM_VARIANTS.items()
}
# one variant per family, for the tests that are about the family rather than its tokenizer
FAMILY_VARIANT = {family: variant for variant, (family, _) in reversed(LM_VARIANTS.items())}


def build_variant(root: Path, variant: str, corpus: tuple[str, ...] | None = None) -> Path:
    """`root/<variant>`: the tiny LM of `variant` with its tokenizer; the tokenizer folder is shared."""
    from llava.tiny import build_tiny_lm
    from llava.tiny_tokenizers import SAMPLE_CORPUS, build_tiny_tokenizer

    family, kind = LM_VARIANTS[variant]
    tokenizer_dir = root / f"tokenizer-{kind}"
    if not tokenizer_dir.is_dir():
        build_tiny_tokenizer(kind, tokenizer_dir, corpus or SAMPLE_CORPUS)
    return build_tiny_lm(family, root / variant, tokenizer_dir)


def stage1_flags(llm: Path, tower: Path, output_dir: Path, **flags) -> list[str]:
    """LLaVA-1.5 stage-1 flags on fixtures-437's images and captions; `flags` override (None drops one)."""
    base = {
        "model_name_or_path": llm,
        "version": "plain",
        "data_path": FIXTURES / "pretrain.json",
        "image_folder": FIXTURES / "images",
        "vision_tower": tower,
        "mm_projector_type": "mlp2x_gelu",
        "tune_mm_mlp_adapter": True,
        "mm_vision_select_layer": -2,
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "output_dir": output_dir,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "max_steps": 2,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "model_max_length": 256,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "seed": 0,
    }
    base.update(flags)
    return [part for key, value in base.items() if value is not None for part in (f"--{key}", str(value))]
