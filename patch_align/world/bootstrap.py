"""The world's "pretrained" models: a small CLIP and a small Llama trained on the world itself.

    OUT/clip/            CLIPModel (vision + text towers), CLIPImageProcessor, CLIPTokenizer
    OUT/llm/             LlamaForCausalLM + LLaMA-style SentencePiece tokenizer (llava.tiny), or
                         with `llm_variant` another family's causal LM on its own tokenizer kind
    OUT/bootstrap.json   settings, measured quality, seconds per part, cache key

CLIP learns contrastively (CLIP's symmetric InfoNCE, `return_loss=True`) from the world's
pretraining image-caption pairs. Each image is seen in both of LLaVA's views: the processor's
centre crop (stage 1's `square`) and the padded square (stage 2's `pad`, padded with the
processor mean, as LLaVA does). Quality: zero-shot image→caption retrieval on the held-out
pairs (padded view), top-1, against chance. A retrieved caption counts as correct when its
text equals the image's own caption, and chance counts such duplicates too.

The Llama learns as a causal LM from all training captions and every conversation rendered
with the vicuna_v1 template (system prompt, "USER:"/"ASSISTANT:", "</s>"; `<image>` removed,
since LLaVA replaces it by image features). Another family (`llm_variant`, a key of
`llava.tiny.TINY_LM_VARIANTS`: qwen2, gemma, ...) learns the same texts rendered with that
family's chat template, which its stage 2 then trains with (`stage2_template`). Quality:
perplexity per token on the held-out conversations and captions (the first `llm_eval_tokens`
tokens), against the uniform (vocabulary size) and the unigram baseline.

The result is cached: `bootstrap.json` keeps a hash of the world manifest, the settings,
this module's source and the library versions; a matching folder is returned at once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.conversation import conv_templates
from llava.mm_utils import expand2square
from llava.tiny import VICUNA_SYSTEM_PROMPTS, build_tiny_llama, build_tiny_lm_variant, tiny_lm_variant
from patch_align.world.generator import WORLD_FILES, WorldError, load_manifest

logger = logging.getLogger(__name__)

REPORT_NAME = "bootstrap.json"


@dataclass(frozen=True)
class BootstrapSettings:
    """Model sizes and training lengths. CLIP images are `clip_image_size` px square
    (`(clip_image_size // 14) ** 2` patches of 14 px); learning rates are AdamW peaks."""

    seed: int = 0
    # One thread: on 2 shared cores, OpenMP spin-waiting made 2 threads ~20x slower than 1 (measured),
    # and a fixed count keeps float reductions, hence the saved weights, the same on every machine.
    threads: int = 1
    clip_image_size: int = 84
    clip_hidden: int = 64
    clip_layers: int = 4
    clip_heads: int = 4
    clip_projection: int = 64
    clip_steps: int = 300
    clip_batch: int = 64
    clip_lr: float = 2e-3
    # 0: the CLIP's position embeddings start as transformers initialises them (small: a patch then
    # barely knows where it is, docs/demo.md §2); s > 0: they start as a 2D sine-cosine table whose
    # per-token norm is s × the mean norm of the patch embeddings of the first training batch (still
    # trained). A CLIP whose patches keep their place is what a model needs to answer boxes.
    clip_position_scale: float = 0.0
    # training images (padded view) the patch-position probe is fit on; it is scored on the held-out ones
    clip_probe_images: int = 300
    llm_vocab: int = 512
    llm_hidden: int = 128
    llm_intermediate: int = 256
    llm_layers: int = 2
    llm_heads: int = 4
    llm_max_positions: int = 1024
    llm_steps: int = 200
    llm_batch: int = 16
    llm_seq_len: int = 128
    llm_lr: float = 3e-3
    llm_eval_tokens: int = 16384
    # "llama": the world's Llama on its SentencePiece tokenizer, vicuna_v1 text (as always); another
    # key of llava.tiny.TINY_LM_VARIANTS bootstraps that family on its own tokenizer kind and template
    llm_variant: str = "llama"

    def check(self) -> None:
        """ValueError naming `llm_variant` when it is neither "llama" nor a tiny LM variant."""
        if self.llm_variant != DEFAULT_LLM_VARIANT:
            tiny_lm_variant(self.llm_variant)

    def with_seed(self, seed: int) -> BootstrapSettings:
        return replace(self, seed=seed)


DEFAULT_LLM_VARIANT = "llama"
# the templates of the world's default Llama: its conversations are read in vicuna_v1 and its stage 2
# trains with upstream's `--version v1`
LLAMA_TEXT_TEMPLATE, LLAMA_STAGE2_VERSION = "vicuna_v1", "v1"


def text_template(settings: BootstrapSettings) -> str:
    """The chat template the bootstrapped LLM learns its conversations in."""
    if settings.llm_variant == DEFAULT_LLM_VARIANT:
        return LLAMA_TEXT_TEMPLATE
    return tiny_lm_variant(settings.llm_variant).template


def stage2_template(settings: BootstrapSettings) -> str:
    """The `--version` (and evaluation conv mode) of stage 2 on the bootstrapped LLM."""
    if settings.llm_variant == DEFAULT_LLM_VARIANT:
        return LLAMA_STAGE2_VERSION
    return tiny_lm_variant(settings.llm_variant).template


DEFAULT_SETTINGS = BootstrapSettings()
QUICK_SETTINGS = BootstrapSettings(clip_image_size=56, clip_layers=3, clip_steps=150,
                                   llm_hidden=64, llm_intermediate=128, llm_steps=100)
CLIP_PATCH_SIZE = 14


def _versions() -> dict[str, str]:
    import sentencepiece
    import tokenizers
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "sentencepiece": sentencepiece.__version__, "tokenizers": tokenizers.__version__}


def cache_key(manifest: dict[str, Any], settings: BootstrapSettings) -> str:
    """sha256 over the world manifest, the settings, this module's source and library versions."""
    identity = {"manifest": manifest, "settings": asdict(settings), "versions": _versions(),
                "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _read_pairs(world: Path, key: str) -> list[tuple[str, str]]:
    """(image path under the image folder, caption) of a LLaVA pretraining file of the world."""
    records = json.loads((world / WORLD_FILES[key]).read_text())
    return [(r["image"], r["conversations"][1]["value"]) for r in records]


def render_conversation(conversations: list[dict[str, str]], template: str = "vicuna_v1") -> str:
    """A LLaVA conversation as the `template` prompt text the LLM reads, `<image>` removed."""
    conv = conv_templates[template].copy()
    for turn in conversations:
        text = turn["value"].replace(f"{DEFAULT_IMAGE_TOKEN}\n", "").replace(f"\n{DEFAULT_IMAGE_TOKEN}", "")
        conv.append_message(conv.roles[0] if turn["from"] == "human" else conv.roles[1], text.strip())
    return conv.get_prompt()


def world_texts(world: Path, split: str, template: str = "vicuna_v1") -> list[str]:
    """Every text of a split: captions alone, then each pretraining and instruction conversation
    rendered with `template`."""
    suffix = "" if split == "train" else "_eval"
    pretrain = json.loads((world / WORLD_FILES[f"pretrain{suffix}"]).read_text())
    instruct = json.loads((world / WORLD_FILES[f"instruct{suffix}"]).read_text())
    captions = [r["conversations"][1]["value"] for r in pretrain]
    return captions + [render_conversation(r["conversations"], template) for r in pretrain + instruct]


# ---------------------------------------------------------------- CLIP


def clip_word_vocabulary(captions: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-format BPE vocabulary and merges in which each caption word becomes one piece.

    The base is CLIP's: the 256 byte-level characters, each also with the end-of-word mark
    "</w>", so no text maps to the unknown token (which CLIP shares with end-of-text). Each word
    adds the merges that grow it left to right. Built by hand, not trained: the `tokenizers` BPE
    trainer breaks count ties differently from run to run, which would make the ids differ.
    """
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for piece in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(piece, len(vocab))
    merges = []
    words = {w for text in captions for w in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", text.lower())}
    for word in sorted(words):
        pieces = [*word[:-1], word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            if left + right not in vocab:
                vocab[left + right] = len(vocab)
                merges.append((left, right))
            left += right
    return vocab, merges


def _write_clip_tokenizer(captions: list[str], out_dir: Path):
    from transformers import CLIPTokenizer

    vocab, merges = clip_word_vocabulary(captions)
    CLIPTokenizer(vocab=vocab, merges=merges).save_pretrained(str(out_dir))
    return CLIPTokenizer.from_pretrained(str(out_dir))


def _clip_views(world: Path, images: list[str], processor) -> torch.Tensor:
    """(N, 2, 3, S, S) pixel values: view 0 the centre crop, view 1 the padded square."""
    mean_colour = tuple(int(255 * m) for m in processor.image_mean)
    folder = world / WORLD_FILES["image_folder"]
    views = []
    for name in images:
        image = Image.open(folder / name).convert("RGB")
        both = [image, expand2square(image, mean_colour)]
        views.append(processor(both, return_tensors="pt")["pixel_values"])
    return torch.stack(views)


def sincos_position_table(grid: int, dim: int) -> torch.Tensor:
    """(grid², dim) 2D sine-cosine codes of a grid×grid raster of patches, unit RMS per entry.

    The first dim/2 channels code the row, the rest the column, each as sines and cosines of
    geometric frequencies (as in the Transformer's 1D code); `dim` must be a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"a 2D sine-cosine table needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    frequencies = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                                torch.arange(grid, dtype=torch.float64), indexing="ij")
    codes = []
    for coordinate in (rows.reshape(-1), cols.reshape(-1)):
        angles = coordinate[:, None] * frequencies[None, :]
        codes += [angles.sin(), angles.cos()]
    table = torch.cat(codes, dim=1)
    return (table / table.pow(2).mean().sqrt()).float()


def _set_position_codes(model, pixels: torch.Tensor, scale: float) -> None:
    """Start the vision tower's position embeddings as `sincos_position_table`, scaled so each
    patch's code has `scale` × the mean norm of the patch embeddings of `pixels` (B, 3, S, S); the
    class token's entry is zero."""
    embeddings = model.vision_model.embeddings
    with torch.no_grad():
        patches = embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)  # (B, N, D)
        grid, dim = math.isqrt(patches.shape[1]), patches.shape[2]
        table = sincos_position_table(grid, dim)
        table = table * (scale * patches.norm(dim=-1).mean() / table.norm(dim=-1).mean())
        embeddings.position_embedding.weight.copy_(torch.cat([torch.zeros(1, dim), table]))


@torch.enable_grad()
def position_probe_accuracy(features: torch.Tensor, held_out: torch.Tensor, steps: int = 300,
                            seed: int = 0) -> dict[str, float]:
    """How well a linear read-out finds each patch's row and column from its features.

    `features` (N, P, D) patch features of N images (P = G² patches, raster order) fit one softmax
    regression per axis; `held_out` (M, P, D) scores it. Returns held-out {"row", "col"} accuracy and
    `chance` (1/G). A tower whose patches keep their place scores near 1; box answers need that.
    """
    grid = math.isqrt(features.shape[1])
    if grid * grid != features.shape[1] or held_out.shape[1:] != features.shape[1:]:
        raise ValueError(f"need (N, G², D) features of one shape, got {tuple(features.shape)} and "
                         f"{tuple(held_out.shape)}")
    mean, std = features.mean(dim=(0, 1)), features.std(dim=(0, 1)) + 1e-6
    train, test = ((f - mean) / std for f in (features, held_out))
    place = torch.arange(grid * grid)
    scores = {"chance": 1.0 / grid}
    generator = torch.Generator().manual_seed(seed)
    for axis, target in (("row", place // grid), ("col", place % grid)):
        weight = (torch.randn(train.shape[-1], grid, generator=generator) * 0.01).requires_grad_()
        bias = torch.zeros(grid, requires_grad=True)
        optimizer = torch.optim.Adam([weight, bias], lr=1e-2)
        labels = target.repeat(train.shape[0])
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(train.flatten(0, 1) @ weight + bias, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            guess = (test.flatten(0, 1) @ weight + bias).argmax(dim=-1)
        scores[axis] = (guess == target.repeat(test.shape[0])).float().mean().item()
    return scores


@torch.no_grad()
def _patch_features(model, pixels: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """(N, P, D) patch features of the vision tower at layer -2 (LLaVA's `--mm_vision_select_layer
    -2`, class token dropped) for pixels (N, 3, S, S)."""
    parts = [model.vision_model(pixel_values=pixels[i:i + batch], output_hidden_states=True)
             .hidden_states[-2][:, 1:] for i in range(0, len(pixels), batch)]
    return torch.cat(parts)


def _warmup_cosine(steps: int):
    warmup = max(1, steps // 10)
    return lambda step: (min(1.0, (step + 1) / warmup)
                         * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)))


def _features_of(output) -> torch.Tensor:
    """Projected features from `get_*_features`, which return a tensor or an output with `pooler_output`."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def clip_retrieval_accuracy(model, pixels: torch.Tensor, text: dict[str, torch.Tensor],
                            captions: list[str]) -> dict[str, float]:
    """Top-1 image→caption retrieval among the given pairs, and its chance level.

    `pixels` (N, 3, S, S); `text` the tokenised captions (N, L). Correct when the retrieved
    caption's text equals the image's own; chance = mean over images of (#equal captions) / N.
    """
    model.eval()
    normalize = torch.nn.functional.normalize
    image_embeds = normalize(_features_of(model.get_image_features(pixel_values=pixels)), dim=-1)
    text_embeds = normalize(_features_of(model.get_text_features(**text)), dim=-1)
    best = (image_embeds @ text_embeds.T).argmax(dim=1).tolist()
    hits = sum(captions[j] == captions[i] for i, j in enumerate(best))
    counts = Counter(captions)
    chance = sum(counts[c] for c in captions) / len(captions) ** 2
    return {"top1": hits / len(captions), "chance": chance, "pairs": len(captions)}


def train_clip(world: Path, out_dir: Path, settings: BootstrapSettings) -> dict[str, Any]:
    """Train and save the CLIP folder; returns its quality and training numbers."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    size = settings.clip_image_size
    if size % CLIP_PATCH_SIZE:
        raise ValueError(f"clip_image_size {size} is not a multiple of the patch size {CLIP_PATCH_SIZE}")
    out_dir.mkdir(parents=True, exist_ok=True)
    train_pairs, eval_pairs = _read_pairs(world, "pretrain"), _read_pairs(world, "pretrain_eval")
    tokenizer = _write_clip_tokenizer([c for _, c in train_pairs], out_dir)
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor.save_pretrained(str(out_dir))
    widths = {"hidden_size": settings.clip_hidden, "intermediate_size": 4 * settings.clip_hidden,
              "num_hidden_layers": settings.clip_layers, "num_attention_heads": settings.clip_heads}
    config = CLIPConfig(
        text_config={**widths, "vocab_size": len(tokenizer), "max_position_embeddings": 77,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={**widths, "image_size": size, "patch_size": CLIP_PATCH_SIZE},
        projection_dim=settings.clip_projection)
    torch.manual_seed(settings.seed)
    model = CLIPModel(config)
    train_pixels = _clip_views(world, [i for i, _ in train_pairs], processor)
    train_text = tokenizer([c for _, c in train_pairs], padding=True, return_tensors="pt")
    eval_pixels = _clip_views(world, [i for i, _ in eval_pairs], processor)[:, 1]
    eval_text = tokenizer([c for _, c in eval_pairs], padding=True, return_tensors="pt")
    eval_captions = [c for _, c in eval_pairs]
    if settings.clip_position_scale > 0:
        _set_position_codes(model, train_pixels[:settings.clip_batch, 1], settings.clip_position_scale)
    before = clip_retrieval_accuracy(model, eval_pixels, eval_text, eval_captions)

    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.clip_lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(settings.clip_steps))
    sampler = torch.Generator().manual_seed(settings.seed)
    batch = min(settings.clip_batch, len(train_pairs))
    model.train()
    losses = []
    for _ in range(settings.clip_steps):
        rows = torch.randperm(len(train_pairs), generator=sampler)[:batch]
        view = torch.randint(0, 2, (batch,), generator=sampler)
        loss = model(input_ids=train_text["input_ids"][rows],
                     attention_mask=train_text["attention_mask"][rows],
                     pixel_values=train_pixels[rows, view], return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    after = clip_retrieval_accuracy(model, eval_pixels, eval_text, eval_captions)
    model.eval()
    probe_images = min(len(train_pairs), settings.clip_probe_images)
    position = position_probe_accuracy(_patch_features(model, train_pixels[:probe_images, 1]),
                                       _patch_features(model, eval_pixels), seed=settings.seed)
    model.save_pretrained(str(out_dir))
    tail = losses[-max(1, len(losses) // 10):]
    return {"retrieval_top1": after["top1"], "retrieval_chance": after["chance"],
            "retrieval_top1_untrained": before["top1"], "eval_pairs": after["pairs"],
            "position_probe_row": position["row"], "position_probe_col": position["col"],
            "position_probe_chance": position["chance"],
            "train_pairs": len(train_pairs), "first_loss": losses[0], "final_loss": sum(tail) / len(tail),
            "image_size": size, "patch_grid": size // CLIP_PATCH_SIZE}


# ---------------------------------------------------------------- Llama


def _token_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    """All texts tokenised (each with its BOS) and concatenated, (T,) int64. A tokenizer that adds
    no BOS (Qwen's) ends each text with its EOS instead, so texts stay apart."""
    ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    end = [] if bos is not None and all(row[:1] == [bos] for row in ids) else [tokenizer.eos_token_id]
    return torch.tensor([i for row in ids for i in [*row, *end]], dtype=torch.long)


@torch.no_grad()
def perplexity(model, stream: torch.Tensor, seq_len: int) -> float:
    """exp(mean next-token NLL) over consecutive `seq_len` chunks of `stream` (tokens after the
    first of each chunk are predicted)."""
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for start in range(0, stream.numel() - 1, seq_len):
        chunk = stream[start:start + seq_len].unsqueeze(0)
        if chunk.numel() < 2:
            break
        loss = model(input_ids=chunk, labels=chunk).loss
        total_nll += loss.item() * (chunk.numel() - 1)
        total_tokens += chunk.numel() - 1
    return math.exp(total_nll / total_tokens)


def unigram_perplexity(train: torch.Tensor, held_out: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of `held_out` under add-one-smoothed unigram frequencies of `train`."""
    counts = torch.bincount(train, minlength=vocab_size).double() + 1.0
    log_probs = torch.log(counts / counts.sum())
    return math.exp(-log_probs[held_out].mean().item())


def train_llm(world: Path, out_dir: Path, settings: BootstrapSettings) -> dict[str, Any]:
    """Train and save the LLM folder (the Llama, or `settings.llm_variant`'s family); returns its
    quality and training numbers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    template = text_template(settings)
    train_texts, eval_texts = world_texts(world, "train", template), world_texts(world, "eval", template)
    sizes = {"hidden_size": settings.llm_hidden, "intermediate_size": settings.llm_intermediate,
             "num_hidden_layers": settings.llm_layers, "num_attention_heads": settings.llm_heads,
             "max_position_embeddings": settings.llm_max_positions, "seed": settings.seed}
    vocab = settings.llm_vocab
    if settings.llm_variant == DEFAULT_LLM_VARIANT:
        build_tiny_llama(out_dir, [*train_texts, *VICUNA_SYSTEM_PROMPTS], vocab_size=vocab, **sizes)
    else:
        build_tiny_lm_variant(settings.llm_variant, out_dir, train_texts, vocab_size=vocab, **sizes)
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    model = AutoModelForCausalLM.from_pretrained(str(out_dir))
    train_stream = _token_stream(tokenizer, train_texts)
    # the held-out stream's head is enough for a stable estimate and keeps the two passes cheap
    eval_stream = _token_stream(tokenizer, eval_texts)[:settings.llm_eval_tokens]
    seq_len = settings.llm_seq_len
    if train_stream.numel() <= seq_len:
        raise WorldError(f"world {world} has only {train_stream.numel()} training tokens; "
                         f"need more than llm_seq_len={seq_len}")
    before = perplexity(model, eval_stream, seq_len)
    torch.manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.llm_lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(settings.llm_steps))
    sampler = torch.Generator().manual_seed(settings.seed)
    offsets = torch.arange(seq_len)
    model.train()
    losses = []
    for _ in range(settings.llm_steps):
        starts = torch.randint(0, train_stream.numel() - seq_len, (settings.llm_batch, 1), generator=sampler)
        window = train_stream[starts + offsets]
        loss = model(input_ids=window, labels=window).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    after = perplexity(model, eval_stream, seq_len)
    model.save_pretrained(str(out_dir))
    tail = losses[-max(1, len(losses) // 10):]
    return {"perplexity": after, "perplexity_untrained": before, "uniform_perplexity": float(len(tokenizer)),
            "unigram_perplexity": unigram_perplexity(train_stream, eval_stream, len(tokenizer)),
            "train_tokens": int(train_stream.numel()), "eval_tokens": int(eval_stream.numel()),
            "vocab_size": len(tokenizer), "first_loss": losses[0], "final_loss": sum(tail) / len(tail)}


# ---------------------------------------------------------------- both, cached


def bootstrap_world(world_dir: str | Path, out_dir: str | Path,
                    settings: BootstrapSettings = DEFAULT_SETTINGS, *, force: bool = False) -> dict[str, Any]:
    """Train (or reuse) the world's CLIP and Llama; returns the report also saved as bootstrap.json.

    The report holds `cached` (True when reused), `cache_key`, `settings`, `clip` and `llm`
    (quality, see the module doc), `seconds` per part, and the folder paths `clip_dir` / `llm_dir`
    relative to `out_dir`. The report is written last, so an interrupted run is redone. A folder
    that is not a complete world (or one too small to train on) raises `WorldError`.
    """
    settings.check()
    world, out_dir = Path(world_dir), Path(out_dir)
    key = cache_key(load_manifest(world), settings)
    report_path = out_dir / REPORT_NAME
    if not force and report_path.is_file():
        report = json.loads(report_path.read_text())
        folders_there = all((out_dir / report.get(d, d)).is_dir() for d in ("clip_dir", "llm_dir"))
        if report.get("cache_key") == key and folders_there:
            return {**report, "cached": True}
    report_path.unlink(missing_ok=True)
    for part in ("clip", "llm"):
        if (out_dir / part).exists():
            shutil.rmtree(out_dir / part)
    seconds = {}
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            clip = train_clip(world, out_dir / "clip", settings)
            seconds["clip"] = time.perf_counter() - start
            logger.info("CLIP: retrieval top-1 %.3f (chance %.3f), patch row/col probe %.3f/%.3f "
                        "(chance %.3f) in %.1f s", clip["retrieval_top1"], clip["retrieval_chance"],
                        clip["position_probe_row"], clip["position_probe_col"],
                        clip["position_probe_chance"], seconds["clip"])
            llm = train_llm(world, out_dir / "llm", settings)
    finally:
        torch.set_num_threads(threads)
    seconds["llm"] = time.perf_counter() - start - seconds["clip"]
    seconds["total"] = time.perf_counter() - start
    logger.info("LLM (%s): held-out perplexity %.2f (unigram %.2f, uniform %.0f) in %.1f s",
                settings.llm_variant,
                llm["perplexity"], llm["unigram_perplexity"], llm["uniform_perplexity"], seconds["llm"])
    report = {"cache_key": key, "settings": asdict(settings), "clip": clip, "llm": llm, "seconds": seconds,
              "clip_dir": "clip", "llm_dir": "llm"}
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return {**report, "cached": False}
