"""Offline SEA token labels: for every image patch, the top-n vocabulary words by CLIP similarity.

Patch features (our reading of "CLIP's joint space" for patch tokens): the *last* encoder
layer's output of CLIP's vision transformer, i.e. `vision_model(...).last_hidden_state`
(not LLaVA's layer -2, which feeds the projector), with the CLS token dropped, then the
same two maps CLIP applies to its CLS token: `vision_model.post_layernorm` and
`visual_projection`. This puts each patch token where CLIP puts image embeddings.

Word features: `get_text_features` of `prompt_template.format(word)` (default
"a photo of a {}."), i.e. the projected end-of-text token, as in CLIP's zero-shot recipe.

Score of word w for patch p: s · cos(v_p, t_w) with s = −1 (`negated`, the paper's convention
after CLIP Surgery: for OpenAI CLIP the raw patch–text similarity is inverted) or s = +1
(`plain`). The top-n words are kept, ranked by score; words scoring below 0 are dropped
(id −1, score 0).

Geometry: images go through `llava.mm_utils.process_images` with the training
`image_aspect_ratio` (`pad`: expand2square with the processor's mean colour, then the
processor; `square`: the processor's resize + centre crop), so label (row, col) is the
projector token (row, col) of training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from llava.mm_utils import process_images, processor_geometry
from llava.train.llava_json import image_samples
from patch_align.sea.store import (
    INDEX_FILE,
    SETTINGS_FILE,
    VOCAB_FILE,
    build_index,
    shard_name,
    write_json,
    write_shard,
)
from patch_align.sea.vocab import read_word_list, write_word_list

logger = logging.getLogger(__name__)

SIGNS = ("negated", "plain")
ASPECT_RATIOS = ("pad", "square")
DEFAULT_PROMPT_TEMPLATE = "a photo of a {}."
DEFAULT_TOP_N = 10


def patch_features(clip_model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """Patch tokens of CLIP's last layer in the joint space: (B, 3, H, W) → (B, N, P), not normalised.

    N = (H / patch) · (W / patch) in row-major order; P = CLIP's projection dim.
    """
    vision = clip_model.vision_model
    hidden = vision(pixel_values=pixel_values).last_hidden_state  # (B, 1 + N, D_vision)
    return clip_model.visual_projection(vision.post_layernorm(hidden[:, 1:]))


def word_features(clip_model: Any, tokenizer: Any, words: list[str], prompt_template: str,
                  batch_size: int = 256) -> torch.Tensor:
    """CLIP text embeddings of `prompt_template.format(word)` for each word: (V, P), not normalised."""
    if "{}" not in prompt_template:
        raise ValueError(f"--prompt-template must contain '{{}}' for the word, got {prompt_template!r}")
    max_length = clip_model.config.text_config.max_position_embeddings
    device = clip_model.text_projection.weight.device
    chunks = []
    for start in range(0, len(words), batch_size):
        prompts = [prompt_template.format(word) for word in words[start : start + batch_size]]
        encoded = tokenizer(prompts, padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt").to(device)
        output = clip_model.get_text_features(input_ids=encoded.input_ids,
                                              attention_mask=encoded.attention_mask)
        chunks.append(output.pooler_output)
    return torch.cat(chunks)


def top_words(patches: torch.Tensor, words: torch.Tensor, top_n: int = DEFAULT_TOP_N,
              sign: str = "negated") -> tuple[torch.Tensor, torch.Tensor]:
    """Best `top_n` words per patch: `patches` (B, N, P), `words` (V, P) → word ids (B, N, n) int32
    and scores (B, N, n) float32, best first; n = min(top_n, V); entries scoring < 0 become id −1, score 0.
    """
    if sign not in SIGNS:
        raise ValueError(f"--sign must be one of {SIGNS}, got {sign!r}")
    if top_n < 1:
        raise ValueError(f"--top-n must be >= 1, got {top_n}")
    cosine = torch.nn.functional.normalize(patches.float(), dim=-1) @ \
        torch.nn.functional.normalize(words.float(), dim=-1).T  # (B, N, V)
    scores = -cosine if sign == "negated" else cosine
    best, ids = scores.topk(min(top_n, words.shape[0]), dim=-1)
    dropped = best < 0
    return ids.to(torch.int32).masked_fill(dropped, -1), best.masked_fill(dropped, 0.0)


@dataclass(frozen=True)
class ImageRecord:
    """One labelled sample: its id and image path relative to the image folder."""

    sample_id: str
    image: str


def image_records(data_path: str | Path) -> tuple[list[ImageRecord], int]:
    """The image records of a LLaVA data file, in file order, and the number of text-only records.

    The file is read by `llava.train.llava_json.image_samples` (the training reader's rules,
    and unique ids among image records: labels are keyed by id); a bad record is a
    `LlavaDataError` (a ValueError) naming the file and the record.
    """
    samples, text_only = image_samples(data_path)
    return [ImageRecord(s.id, s.image) for s in samples], text_only


def load_images(records: list[ImageRecord], image_folder: Path) -> tuple[list[Image.Image], list[int],
                                                                          dict[str, str]]:
    """RGB images of `records`; returns (images, positions of the loaded records, skipped id → reason)."""
    images, loaded, skipped = [], [], {}
    for position, record in enumerate(records):
        path = image_folder / record.image
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (OSError, ValueError) as err:
            skipped[record.sample_id] = f"cannot read image {path}: {err}"
            logger.warning("SEA labels: skipping sample %s: cannot read image %s (%s)",
                           record.sample_id, path, err)
            continue
        loaded.append(position)
    return images, loaded, skipped


def load_clip(clip_dir: str | Path, device: str | torch.device) -> tuple[Any, Any, Any]:
    """(CLIPModel in eval mode on `device`, its tokenizer, its image processor) from one folder."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    clip_dir = Path(clip_dir)
    if not (clip_dir / "config.json").is_file():
        raise FileNotFoundError(f"--clip {clip_dir}: no config.json (expected a CLIPModel folder)")
    model = CLIPModel.from_pretrained(str(clip_dir)).to(device).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(clip_dir))
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"--clip {clip_dir}: no usable CLIP text tokenizer ({err})") from err
    return model, tokenizer, CLIPImageProcessor.from_pretrained(str(clip_dir))


def _vocabulary_digest(words: list[str]) -> str:
    return hashlib.sha256("\n".join(words).encode()).hexdigest()


def _check_settings(out_dir: Path, settings: dict) -> None:
    """Write settings.json, or check that an existing one (earlier or parallel run) agrees."""
    path = out_dir / SETTINGS_FILE
    if path.is_file():
        existing = json.loads(path.read_text())
        differing = sorted(k for k in settings.keys() | existing.keys() if settings.get(k) != existing.get(k))
        if differing:
            raise ValueError(f"{path} was written with other settings ({', '.join(differing)} differ); "
                             f"use a new --out folder or the same flags")
    else:
        write_json(path, settings)


@dataclass(frozen=True)
class LabelRunSummary:
    """What one `label_dataset` call did."""

    shards_written: int
    shards_already_done: int
    images_labelled: int
    images_skipped: int
    index_written: bool


def label_dataset(clip_dir: str | Path, vocab_path: str | Path, data_path: str | Path,
                  image_folder: str | Path, out_dir: str | Path, *, top_n: int = DEFAULT_TOP_N,
                  sign: str = "negated", image_aspect_ratio: str = "square",
                  prompt_template: str = DEFAULT_PROMPT_TEMPLATE, batch_size: int = 32,
                  shard_size: int = 1000, num_shards: int = 1, shard_index: int = 0,
                  device: str | None = None, show_progress: bool = True) -> LabelRunSummary:
    """Label this process's shards (shard j with j mod `num_shards` == `shard_index`), skipping
    shards already on disk; write `index.json` once every shard of the data file exists.
    """
    if image_aspect_ratio not in ASPECT_RATIOS:
        raise ValueError(f"--image-aspect-ratio must be one of {ASPECT_RATIOS}, got {image_aspect_ratio!r}")
    if sign not in SIGNS:
        raise ValueError(f"--sign must be one of {SIGNS}, got {sign!r}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard-index must be in [0, --num-shards={num_shards}), got {shard_index}")
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"--batch-size and --shard-size must be >= 1, got {batch_size}, {shard_size}")
    image_folder, out_dir = Path(image_folder), Path(out_dir)
    if not image_folder.is_dir():
        raise NotADirectoryError(f"--image-folder {image_folder} is not a folder")
    words = read_word_list(vocab_path)
    records, text_only = image_records(data_path)
    if text_only:
        logger.info("SEA labels: %d text-only records of %s have no image and get no labels", text_only,
                    data_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, image_processor = load_clip(clip_dir, device)
    patch = model.config.vision_config.patch_size
    preprocessing = processor_geometry(image_processor)
    rows, cols = preprocessing.input_size
    settings = {
        "clip": str(Path(clip_dir).resolve()), "data": str(Path(data_path).resolve()),
        "vocab_size": len(words), "vocab_sha256": _vocabulary_digest(words), "top_n": top_n,
        "sign": sign, "image_aspect_ratio": image_aspect_ratio, "prompt_template": prompt_template,
        "grid": [rows // patch, cols // patch], "shard_size": shard_size,
        # the training tower must place its patches the same way (PadAlignedDataset checks)
        "preprocessing": {**preprocessing.as_dict(), "patch_size": patch},
        "num_records": len(records),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(out_dir, settings)
    if not (out_dir / VOCAB_FILE).is_file():
        write_word_list(words, out_dir / VOCAB_FILE)

    total_shards = max(1, -(-len(records) // shard_size))
    mine = [j for j in range(total_shards) if j % num_shards == shard_index]
    todo = [j for j in mine if not (out_dir / shard_name(j)).is_file()]
    geometry = SimpleNamespace(image_aspect_ratio=image_aspect_ratio)
    written = labelled = skipped_images = 0
    with torch.inference_mode():
        text = word_features(model, tokenizer, words, prompt_template)
        todo_images = sum(len(records[j * shard_size : (j + 1) * shard_size]) for j in todo)
        progress = tqdm(total=todo_images, unit="img", disable=not show_progress,
                        desc=f"SEA labels (process {shard_index}/{num_shards})")
        started = time.monotonic()
        for shard in todo:
            shard_records = records[shard * shard_size : (shard + 1) * shard_size]
            ids, word_chunks, score_chunks, skipped = [], [], [], {}
            for start in range(0, len(shard_records), batch_size):
                batch = shard_records[start : start + batch_size]
                images, loaded, batch_skipped = load_images(batch, image_folder)
                skipped.update(batch_skipped)
                if images:
                    pixels = process_images(images, image_processor, geometry).to(device)
                    batch_ids, batch_scores = top_words(patch_features(model, pixels), text, top_n, sign)
                    ids.extend(batch[i].sample_id for i in loaded)
                    word_chunks.append(batch_ids.cpu())
                    score_chunks.append(batch_scores.cpu())
                progress.update(len(batch))
            grid_tokens = settings["grid"][0] * settings["grid"][1]
            width = min(top_n, len(words))
            empty = torch.zeros((0, grid_tokens, width))
            write_shard(out_dir / shard_name(shard), ids,
                        torch.cat(word_chunks) if word_chunks else empty.to(torch.int32),
                        torch.cat(score_chunks) if score_chunks else empty, skipped)
            written += 1
            labelled += len(ids)
            skipped_images += len(skipped)
        progress.close()
    if todo:
        rate = labelled / max(time.monotonic() - started, 1e-9)
        logger.info("SEA labels: %d images in %d shards (%.1f images/s), %d skipped", labelled, written,
                    rate, skipped_images)
    index_written = all((out_dir / shard_name(j)).is_file() for j in range(total_shards))
    if index_written:
        write_json(out_dir / INDEX_FILE, build_index(out_dir, settings, total_shards))
    return LabelRunSummary(written, len(mine) - len(todo), labelled, skipped_images, index_written)
