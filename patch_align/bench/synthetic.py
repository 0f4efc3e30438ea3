"""Synthetic inputs for the benchmarks: model folders at a named shape (random weights), 336 px
images with PAD regions, LCS-558K-length captions and SEA labels, all written to disk so that the
benchmark loads them through the training entry's ordinary `from_pretrained` paths.

Nothing is downloaded. The tokenizer is a small SentencePiece model trained on the synthetic
captions (ids < 320); the LLM's embedding and head keep the shape's full vocabulary, so every
FLOP of a real 32000-word head is spent. Folders are reused when their `bench_folder.json`
matches the shape, seed and builder version.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from patch_align.bench.shapes import BenchShape

BENCH_BUILDER_VERSION = 1
# PAD density of the paper's data: 2.3M regions over LCS-558K's 558K images
REGIONS_PER_IMAGE = 4
# LCS-558K's BLIP captions are one short sentence; ours: 24 LLaMA tokens of caption text
CAPTION_TOKENS = 24
WORDS = (
    "a", "the", "red", "green", "blue", "yellow", "small", "large", "dog", "cat", "car", "tree",
    "house", "man", "woman", "on", "in", "with", "and", "of", "street", "table", "field", "sky",
)
REGION_LABELS = ("red dog", "green tree", "blue car", "yellow house", "small cat", "large table")
_MARKER = "bench_folder.json"


@dataclass(frozen=True)
class BenchFolders:
    """Paths of one synthetic benchmark setup."""

    llm: Path
    clip: Path
    data_json: Path
    image_folder: Path
    pad: Path
    sea_labels: Path


def _fresh(folder: Path, identity: dict) -> bool:
    """True when `folder` already holds what `identity` describes; otherwise empties it."""
    marker = folder / _MARKER
    if marker.is_file() and json.loads(marker.read_text()) == identity:
        return True
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return False


def _mark(folder: Path, identity: dict) -> None:
    (folder / _MARKER).write_text(json.dumps(identity, indent=1, sort_keys=True) + "\n")


def write_llm(folder: Path, shape: BenchShape, seed: int) -> Path:
    """A random-weight float32 `LlamaForCausalLM` at `shape.llm` plus the synthetic tokenizer."""
    identity = {"version": BENCH_BUILDER_VERSION, "llm": asdict(shape.llm), "seed": seed}
    if _fresh(folder, identity):
        return folder
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llava.tiny import train_sentencepiece_tokenizer

    corpus = [" ".join(random.Random(i).choices(WORDS, k=12)) for i in range(400)] + list(REGION_LABELS)
    train_sentencepiece_tokenizer(corpus, folder, vocab_size=320,
                                  model_max_length=shape.llm.max_position_embeddings)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if len(tokenizer) > shape.llm.vocab_size:
        raise ValueError(f"the synthetic tokenizer has {len(tokenizer)} ids, more than the shape's "
                         f"vocabulary {shape.llm.vocab_size}")
    llm = shape.llm
    config = LlamaConfig(
        vocab_size=llm.vocab_size, hidden_size=llm.hidden_size, intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_hidden_layers, num_attention_heads=llm.num_attention_heads,
        num_key_value_heads=llm.num_key_value_heads, max_position_embeddings=llm.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=None,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        LlamaForCausalLM(config).save_pretrained(str(folder))
    _mark(folder, identity)
    return folder


def write_clip(folder: Path, shape: BenchShape, seed: int) -> Path:
    """A random-weight `CLIPVisionModel` at `shape.vision` and its image processor (crop = image size)."""
    identity = {"version": BENCH_BUILDER_VERSION, "vision": asdict(shape.vision), "seed": seed}
    if _fresh(folder, identity):
        return folder
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    vision = shape.vision
    config = CLIPVisionConfig(
        hidden_size=vision.hidden_size, intermediate_size=vision.intermediate_size,
        num_hidden_layers=vision.num_hidden_layers, num_attention_heads=vision.num_attention_heads,
        image_size=vision.image_size, patch_size=vision.patch_size,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        CLIPVisionModel(config).save_pretrained(str(folder))
    CLIPImageProcessor(
        size={"shortest_edge": vision.image_size},
        crop_size={"height": vision.image_size, "width": vision.image_size},
    ).save_pretrained(str(folder))
    _mark(folder, identity)
    return folder


def caption_of_length(tokenizer, rng: random.Random, tokens: int) -> str:
    """A caption of synthetic words whose tokenisation (no special tokens) is exactly `tokens` long."""
    words: list[str] = []
    for _ in range(100 * tokens + 100):
        candidate = " ".join([*words, rng.choice(WORDS)])
        length = len(tokenizer(candidate, add_special_tokens=False)["input_ids"])
        if length == tokens:
            return candidate
        if length < tokens:
            words = candidate.split(" ")
    raise ValueError(f"no caption of exactly {tokens} tokens from the synthetic words")


def _region_masks(rng: np.random.Generator, size: int, count: int) -> list[np.ndarray]:
    """`count` rectangles covering 5-30 % of the side each way, as (size, size) bool masks."""
    masks = []
    for _ in range(count):
        h, w = (rng.uniform(0.15, 0.55, size=2) * size).astype(int) + 1
        y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        mask = np.zeros((size, size), dtype=bool)
        mask[y : y + h, x : x + w] = True
        masks.append(mask)
    return masks


def write_data(folder: Path, shape: BenchShape, tokenizer, samples: int, seed: int,
               caption_tokens: int = CAPTION_TOKENS) -> tuple[Path, Path, Path]:
    """(data JSON, image folder, PAD file): `samples` square images of the tower's size, each with
    REGIONS_PER_IMAGE PAD regions and a caption of `caption_tokens` tokens (stage-1 `plain` data)."""
    from PIL import Image

    from patch_align.pad import PAD_VERSION, encode_mask

    size = shape.vision.image_size
    identity = {"version": BENCH_BUILDER_VERSION, "size": size, "samples": samples, "seed": seed,
                "caption_tokens": caption_tokens, "tokenizer": len(tokenizer)}
    images, data_json, pad_path = folder / "images", folder / "data.json", folder / "pad.json"
    if _fresh(folder, identity):
        return data_json, images, pad_path
    images.mkdir()
    rng, words_rng = np.random.default_rng(seed), random.Random(seed)
    records, pad = [], [{"pad_version": PAD_VERSION}]
    for index in range(samples):
        name = f"img{index:05d}.png"
        pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / name)
        records.append({
            "id": f"bench-{index:05d}", "image": name,
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe the image briefly."},
                {"from": "gpt", "value": caption_of_length(tokenizer, words_rng, caption_tokens)},
            ],
        })
        regions = []
        for r, mask in enumerate(_region_masks(rng, size, REGIONS_PER_IMAGE)):
            segmentation, bbox, _ = encode_mask(mask)
            label = REGION_LABELS[(index + r) % len(REGION_LABELS)]
            regions.append({"label": label, "bbox": bbox, "segmentation": segmentation})
        pad.append({"id": f"bench-{index:05d}", "image": name, "width": size, "height": size,
                    "regions": regions})
    data_json.write_text(json.dumps(records))
    pad_path.write_text(json.dumps(pad))
    _mark(folder, identity)
    return data_json, images, pad_path


def write_sea_labels(folder: Path, shape: BenchShape, sample_ids: list[str], seed: int,
                     top_n: int = 3) -> Path:
    """A finished SEA label folder: random top-`top_n` words of WORDS for every patch of every sample."""
    import torch

    from patch_align.sea.store import (
        INDEX_FILE,
        SETTINGS_FILE,
        VOCAB_FILE,
        build_index,
        shard_name,
        write_json,
        write_shard,
    )
    from patch_align.sea.vocab import write_word_list

    side = shape.vision.image_size // shape.vision.patch_size
    settings = {"grid": [side, side], "image_aspect_ratio": "square", "top_n": top_n,
                "vocab_size": len(WORDS), "sign": "synthetic-bench", "seed": seed}
    identity = {"version": BENCH_BUILDER_VERSION, "settings": settings, "samples": len(sample_ids)}
    if _fresh(folder, identity):
        return folder
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(len(sample_ids), side * side, top_n, generator=generator)
    scores = scores.sort(dim=-1, descending=True)
    word_ids = torch.stack([torch.randperm(len(WORDS), generator=generator)[:top_n]
                            for _ in range(len(sample_ids) * side * side)]).reshape(scores.values.shape)
    write_word_list(WORDS, folder / VOCAB_FILE)
    write_json(folder / SETTINGS_FILE, settings)
    write_shard(folder / shard_name(0), sample_ids, word_ids, scores.values, {})
    write_json(folder / INDEX_FILE, build_index(folder, settings, 1))
    _mark(folder, identity)
    return folder


def build_bench_folders(root: str | Path, shape: BenchShape, samples: int, seed: int = 0,
                        caption_tokens: int = CAPTION_TOKENS) -> BenchFolders:
    """Write (or reuse) everything `patch-align bench train` loads, under `root`/`shape.name`."""
    from transformers import AutoTokenizer

    base = Path(root).resolve() / shape.name
    llm = write_llm(base / f"llm-{shape.llm.num_hidden_layers}layers", shape, seed)
    clip = write_clip(base / "clip", shape, seed)
    tokenizer = AutoTokenizer.from_pretrained(str(llm))
    data_json, images, pad = write_data(base / f"data-{samples}", shape, tokenizer, samples, seed,
                                        caption_tokens)
    ids = [record["id"] for record in json.loads(data_json.read_text())]
    sea = write_sea_labels(base / f"sea-{samples}", shape, ids, seed)
    return BenchFolders(llm=llm, clip=clip, data_json=data_json, image_folder=images, pad=pad, sea_labels=sea)
