"""Tiny, randomly initialised LLaVA ingredients for tests and the CPU demo.

Every builder writes an ordinary model folder that the normal ``from_pretrained`` paths load
(``AutoTokenizer``, ``LlamaForCausalLM`` or another family's causal LM, ``CLIPVisionModel``,
``CLIPImageProcessor``), so code under test goes through exactly the loading path a real
checkpoint would. All builders are deterministic for a given seed (same bytes on disk) and leave
the caller's RNG state untouched.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from llava.conversation import conv_templates

# Bump whenever a builder's output changes, so cached setups are rebuilt.
TINY_BUILDER_VERSION = 1

# The system prompts the tiny tokenizer must know (the vicuna_v1 and llava_v1 chat templates).
VICUNA_SYSTEM_PROMPTS = (conv_templates["vicuna_v1"].system, conv_templates["llava_v1"].system)

BOX_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (230, 220, 30),
}
BACKGROUND_GREY = (128, 128, 128)

_PRETRAIN_PROMPTS = (
    "<image>\nDescribe the image briefly.",
    "Give a short caption of the picture.\n<image>",
    "<image>\nWhat does this image show?",
)

_SETUP_MARKER = ".tiny_setup.json"


def train_sentencepiece_tokenizer(
    corpus: Iterable[str], out_dir: str | Path, *, vocab_size: int = 320, model_max_length: int = 512
) -> None:
    """Train a LLaMA-style SentencePiece BPE model on ``corpus`` and save a LlamaTokenizer into ``out_dir``.

    The settings are LLaMA's (identity normaliser, whitespace kept, dummy prefix, byte fallback,
    split digits, unk 0 / bos 1 / eos 2, no pad) so that transformers 5's converted tokenizer and
    transformers 4's slow one give the same ids. ``vocab_size`` includes the 256 byte pieces and the
    3 special pieces, so it must exceed 259 plus the number of distinct characters in the corpus.
    """
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sentences = [s for s in corpus if s]
    if not sentences:
        raise ValueError(f"cannot train a tokenizer for {out_dir}: the corpus is empty")
    model_bytes = io.BytesIO()
    try:
        # model_writer instead of model_prefix: the prefix would embed out_dir in the model file
        # and make two builds of the same tokenizer differ byte for byte.
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model_bytes, vocab_size=vocab_size,
            model_type="bpe", byte_fallback=True, character_coverage=1.0, split_digits=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
            allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            num_threads=1, minloglevel=2,
        )
    except RuntimeError as err:
        raise ValueError(
            f"SentencePiece training for {out_dir} failed with vocab_size={vocab_size} "
            f"on {len(sentences)} sentences: {err}"
        ) from err
    (out_dir / "tokenizer.model").write_bytes(model_bytes.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "legacy": False, "model_max_length": model_max_length,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    LlamaTokenizer.from_pretrained(str(out_dir)).save_pretrained(str(out_dir))
    # save_pretrained drops `legacy` (transformers 4 readers, i.e. upstream LLaVA, would then assume
    # True) and `padding_side` (loading would then fall back to transformers 5's left default), and
    # records how it was loaded (`is_local`, `local_files_only`, which follow HF_HUB_OFFLINE): drop those
    # so the folder is the same whatever the environment.
    config_path = out_dir / "tokenizer_config.json"
    saved = json.loads(config_path.read_text())
    saved["legacy"] = False
    saved["padding_side"] = "right"
    for load_time_key in ("is_local", "local_files_only"):
        saved.pop(load_time_key, None)
    config_path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")


def build_tiny_llama(
    out_dir: str | Path,
    corpus: Iterable[str],
    *,
    vocab_size: int = 320,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised float32 ``LlamaForCausalLM`` plus its tokenizer into ``out_dir``."""
    out_dir = Path(out_dir)
    train_sentencepiece_tokenizer(
        corpus, out_dir, vocab_size=vocab_size, model_max_length=max_position_embeddings
    )
    return build_tiny_lm(
        "llama", out_dir, out_dir, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        max_position_embeddings=max_position_embeddings, seed=seed,
    )


@dataclass(frozen=True)
class TinyLmVariant:
    """A tiny LM *variant*: an LLM family (a base ``model_type``), the ``llava.tiny_tokenizers`` kind
    its checkpoints ship with, and the chat template its stage 2 trains with (docs/backbones.md)."""

    family: str
    tokenizer: str
    template: str


# Llama ships with Llama-2's SentencePiece and with Llama-3's byte-level BPE tokenizer; Qwen3 uses
# Qwen2's tokenizer, Gemma2 Gemma's.
TINY_LM_VARIANTS: dict[str, TinyLmVariant] = {
    "llama2": TinyLmVariant("llama", "llama2", "llava_llama_2"),
    "llama3": TinyLmVariant("llama", "llama3", "llama_3"),
    "mistral": TinyLmVariant("mistral", "mistral", "mistral_instruct"),
    "qwen2": TinyLmVariant("qwen2", "qwen2", "qwen_2"),
    "qwen3": TinyLmVariant("qwen3", "qwen2", "qwen_2"),
    "gemma": TinyLmVariant("gemma", "gemma", "gemma"),
    "gemma2": TinyLmVariant("gemma2", "gemma", "gemma"),
    "phi3": TinyLmVariant("phi3", "phi3", "phi3"),
}


def tiny_lm_variant(name: str) -> TinyLmVariant:
    """The variant called ``name``; ValueError listing the known ones otherwise."""
    if name not in TINY_LM_VARIANTS:
        raise ValueError(f"unknown tiny LM variant {name!r}; known: {', '.join(TINY_LM_VARIANTS)}")
    return TINY_LM_VARIANTS[name]


def build_tiny_lm_variant(
    name: str, out_dir: str | Path, corpus: Iterable[str], *, vocab_size: int | None = None, **sizes
) -> Path:
    """Train the variant's tokenizer kind on ``corpus`` into ``out_dir`` and write a random base LM of
    its family beside it (``sizes``: ``build_tiny_lm``'s keyword arguments). Returns ``out_dir``."""
    from llava.tiny_tokenizers import build_tiny_tokenizer  # it builds on this module's SentencePiece

    variant = tiny_lm_variant(name)
    build_tiny_tokenizer(variant.tokenizer, out_dir, list(corpus), vocab_size)
    return build_tiny_lm(variant.family, out_dir, out_dir, **sizes)


def _family_config_extras(family: str, head_dim: int) -> dict:
    """Config fields a family needs set for tiny widths: its default head_dim (Qwen3 128, Gemma 256)
    does not follow hidden_size / heads, and Gemma2 scales queries by its own head_dim."""
    if family in ("qwen3", "gemma"):
        return {"head_dim": head_dim}
    if family == "gemma2":
        return {"head_dim": head_dim, "query_pre_attn_scalar": head_dim}
    return {}


def build_tiny_lm(
    family: str,
    out_dir: str | Path,
    tokenizer_dir: str | Path,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int | None = None,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised float32 base LM of ``family`` (a base ``model_type`` of
    ``llava.model.language_model.families.LLM_FAMILIES``: ``llama``, ``qwen2``, ...) into ``out_dir``,
    with the tokenizer folder ``tokenizer_dir`` copied in (``out_dir`` itself may hold it already).

    The folder loads with ``AutoModelForCausalLM.from_pretrained`` as that family's ``*ForCausalLM``.
    Everything else is the family's default (Gemma's tied embeddings and √hidden scaling, Gemma2's
    softcaps and sliding layers, Phi-3's fused projections). Biases (Qwen2's q/k/v) are drawn at
    random, as a trained model's are: zeros would hide a loader that drops them. Returns ``out_dir``.
    """
    import torch
    from transformers import AutoTokenizer

    from llava.model.language_model.families import family_of_model_type

    lm = family_of_model_type(family, where="build_tiny_lm")
    if lm.name != family:
        raise ValueError(f"build_tiny_lm builds base LMs: pass {lm.name!r}, not {family!r}")
    if hidden_size % num_attention_heads:
        raise ValueError(f"hidden_size {hidden_size} is not a multiple of {num_attention_heads} heads")
    out_dir, tokenizer_dir = Path(out_dir), Path(tokenizer_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir.resolve() != out_dir.resolve():
        for file in sorted(tokenizer_dir.iterdir()):
            if file.is_file():
                shutil.copyfile(file, out_dir / file.name)
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    config = lm.base_config_class(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads or num_attention_heads,
        max_position_embeddings=max_position_embeddings, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, dtype="float32",
        **_family_config_extras(family, hidden_size // num_attention_heads),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = lm.base_lm_class(config)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.Linear) and module.bias is not None:
                    module.bias.normal_(0.0, 0.02)
    model.save_pretrained(str(out_dir))
    return out_dir


def build_tiny_clip(
    out_dir: str | Path,
    *,
    image_size: int = 56,
    patch_size: int = 14,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    num_hidden_layers: int = 3,
    num_attention_heads: int = 4,
    projection_dim: int = 32,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised ``CLIPModel`` (vision + text towers) and its image processor.

    Images are resized to ``image_size`` px on the shortest edge and centre-cropped to
    ``image_size`` × ``image_size``; the vision tower sees ``(image_size // patch_size) ** 2`` patches.
    The text tower uses the same widths with a small vocabulary; no CLIP text tokenizer is written.
    """
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    out_dir = Path(out_dir)
    config = CLIPConfig(
        text_config={
            "vocab_size": 512, "hidden_size": hidden_size, "intermediate_size": intermediate_size,
            "num_hidden_layers": num_hidden_layers, "num_attention_heads": num_attention_heads,
            "max_position_embeddings": 77, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": hidden_size, "intermediate_size": intermediate_size,
            "num_hidden_layers": num_hidden_layers, "num_attention_heads": num_attention_heads,
            "image_size": image_size, "patch_size": patch_size,
        },
        projection_dim=projection_dim,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(str(out_dir))
    processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor.save_pretrained(str(out_dir))
    return out_dir


def build_tiny_siglip(
    out_dir: str | Path,
    *,
    image_size: int = 64,
    patch_size: int = 16,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    num_hidden_layers: int = 3,
    num_attention_heads: int = 4,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised ``SiglipModel`` (vision + text towers, as the hub's SigLIP
    checkpoints are) and its ``SiglipImageProcessor``.

    Images are resized to ``image_size`` × ``image_size`` (no aspect ratio kept, no crop) and
    normalised with mean = std = 0.5; the vision tower sees ``(image_size // patch_size) ** 2``
    patches and no CLS token. Its attention-pooling head is written (LLaVA does not use it). The
    defaults give the same 4 × 4 patch grid as ``build_tiny_clip`` at another image size and patch.
    No SigLIP text tokenizer is written.
    """
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    out_dir = Path(out_dir)
    widths = {
        "hidden_size": hidden_size, "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers, "num_attention_heads": num_attention_heads,
    }
    config = SiglipConfig(
        text_config={**widths, "vocab_size": 512, "max_position_embeddings": 16,
                     "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
        vision_config={**widths, "image_size": image_size, "patch_size": patch_size},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SiglipModel(config)
    model.save_pretrained(str(out_dir))
    SiglipImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(str(out_dir))
    return out_dir


def _draw_two_boxes(rng: random.Random, width: int, height: int):
    """One grey image with a coloured box in its left half and another in its right half.

    The halves keep the boxes apart, so both are fully visible and "left"/"right" answers are true.
    Returns the PIL image and the two colour names, left first.
    """
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), BACKGROUND_GREY)
    draw = ImageDraw.Draw(image)
    colours = rng.sample(sorted(BOX_COLOURS), 2)
    half = width // 2
    for side, name in enumerate(colours):
        box_w = rng.randint(max(2, half // 3), half - 2)
        box_h = rng.randint(max(2, height // 4), height * 3 // 4)
        x0 = side * half + rng.randint(1, half - box_w - 1)
        y0 = rng.randint(0, height - box_h)
        draw.rectangle([x0, y0, x0 + box_w - 1, y0 + box_h - 1], fill=BOX_COLOURS[name])
    return image, colours


def _random_non_square_size(rng: random.Random) -> tuple[int, int]:
    sides = list(range(48, 113, 8))
    width = rng.choice(sides)
    height = rng.choice([s for s in sides if s != width])
    return width, height


def _finetune_conversation(index: int, left: str, right: str) -> list[dict[str, str]]:
    caption = f"a {left} box and a {right} box"
    kind = index % 3
    if kind == 0:
        return [
            {"from": "human", "value": "<image>\nWhat is in the picture?"},
            {"from": "gpt", "value": caption},
        ]
    if kind == 1:
        return [
            {"from": "human", "value": "<image>\nWhat is in the picture?"},
            {"from": "gpt", "value": caption},
            {"from": "human", "value": "Which box is on the left?"},
            {"from": "gpt", "value": f"the {left} box"},
        ]
    return [
        {"from": "human", "value": "What colour is the box on the right?\n<image>"},
        {"from": "gpt", "value": right},
    ]


_TEXT_ONLY_CONVERSATIONS = (
    [{"from": "human", "value": "What colour is the sky?"}, {"from": "gpt", "value": "blue"}],
    [
        {"from": "human", "value": "Name a colour."},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": "Name another one."},
        {"from": "gpt", "value": "green"},
    ],
)


def make_tiny_dataset(root: str | Path, *, n_images: int = 24, seed: int = 0) -> dict[str, Path]:
    """Write PNG images and LLaVA pretrain / finetune JSON lists under ``root``.

    Each image is grey with a coloured box in each half, at a non-square size between 48 and 112 px.
    The pretrain list holds plain captions ("a red box and a blue box"); the finetune list holds v1
    conversations (single- and multi-turn) and text-only samples.
    Returns ``{"image_folder", "pretrain_json", "finetune_json"}``.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    root = Path(root)
    image_folder = root / "images"
    image_folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pretrain, finetune = [], []
    for index in range(n_images):
        image, (left, right) = _draw_two_boxes(rng, *_random_non_square_size(rng))
        file_name = f"img{index:03d}.png"
        image.save(image_folder / file_name)
        pretrain.append({
            "id": f"pretrain-{index:03d}", "image": file_name,
            "conversations": [
                {"from": "human", "value": _PRETRAIN_PROMPTS[index % len(_PRETRAIN_PROMPTS)]},
                {"from": "gpt", "value": f"a {left} box and a {right} box"},
            ],
        })
        finetune.append({
            "id": f"finetune-{index:03d}", "image": file_name,
            "conversations": _finetune_conversation(index, left, right),
        })
    for index, conversation in enumerate(_TEXT_ONLY_CONVERSATIONS):
        finetune.append({"id": f"text-only-{index:03d}", "conversations": conversation})
    paths = {
        "image_folder": image_folder,
        "pretrain_json": root / "pretrain.json",
        "finetune_json": root / "finetune.json",
    }
    paths["pretrain_json"].write_text(json.dumps(pretrain, indent=1))
    paths["finetune_json"].write_text(json.dumps(finetune, indent=1))
    return paths


@dataclass(frozen=True)
class TinyLlavaSetup:
    """Paths of a complete tiny LLaVA setup: base LLM, CLIP tower and a small dataset."""

    root: Path
    llm: Path
    clip: Path
    image_folder: Path
    pretrain_json: Path
    finetune_json: Path


def _tokenizer_corpus(dataset_jsons: Iterable[Path]) -> list[str]:
    """Sentences the tiny tokenizer learns from: every conversation turn plus the chat scaffolding."""
    turns = []
    for path in dataset_jsons:
        for sample in json.loads(path.read_text()):
            turns.extend(turn["value"] for turn in sample["conversations"])
    scaffolding = [*VICUNA_SYSTEM_PROMPTS, "USER: ASSISTANT:", "USER:", "ASSISTANT:", "Human: Assistant:"]
    # Repetition gives BPE enough pair counts to learn whole words in a 320-piece vocabulary.
    return (turns + scaffolding) * 20


def _setup_fingerprint(seed: int) -> str:
    import sentencepiece
    import torch
    import transformers

    identity = {
        "builder_version": TINY_BUILDER_VERSION, "seed": seed, "torch": torch.__version__,
        "transformers": transformers.__version__, "sentencepiece": sentencepiece.__version__,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def build_tiny_llava_setup(root: str | Path, *, seed: int = 0) -> TinyLlavaSetup:
    """Build (or reuse) the tiny LLM, CLIP tower and dataset under ``root``.

    A marker file records a fingerprint of the seed, ``TINY_BUILDER_VERSION`` and the library
    versions; a later call with the same fingerprint returns at once, a different one rebuilds.
    The marker is written last, so an interrupted build is redone.
    """
    root = Path(root)
    setup = TinyLlavaSetup(
        root=root, llm=root / "llm", clip=root / "clip", image_folder=root / "data" / "images",
        pretrain_json=root / "data" / "pretrain.json", finetune_json=root / "data" / "finetune.json",
    )
    marker = root / _SETUP_MARKER
    fingerprint = _setup_fingerprint(seed)
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
        return setup
    marker.unlink(missing_ok=True)
    for owned in (setup.llm, setup.clip, root / "data"):
        if owned.exists():
            shutil.rmtree(owned)
    make_tiny_dataset(root / "data", seed=seed)
    build_tiny_llama(setup.llm, _tokenizer_corpus([setup.pretrain_json, setup.finetune_json]), seed=seed)
    build_tiny_clip(setup.clip, seed=seed)
    marker.write_text(json.dumps({"fingerprint": fingerprint, "seed": seed}, indent=2) + "\n")
    return setup
