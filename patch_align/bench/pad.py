"""`patch-align bench pad`: PAD generation throughput per stage through the real pipeline.

Grounding DINO and SAM are built from configs with random weights (nothing downloaded):
`--models full` is Grounding DINO base (Swin-B, BERT-base text, 900 queries) + SAM ViT-H at their
published configs and processor sizes; `--models tiny` are test-sized. The run goes through
`pipeline.run_generation` (DataLoader, processors, tagger, detector, SAM, record building,
shard writing) with the caption tagger; each stage object is wrapped so its calls are timed.
Random weights give random boxes, so the thresholds are 0 and `--max-regions` (default 4,
the paper's density) caps the boxes per image: SAM segments that many per image.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from patch_align.bench.measure import synchronize
from patch_align.bench.synthetic import BENCH_BUILDER_VERSION, REGIONS_PER_IMAGE, WORDS

PAD_MODELS = ("tiny", "full")
# Grounding DINO's text masks look for BERT-base's ids of [CLS]=101, [SEP]=102, "."=1012, "?"=1029
_BERT_SPECIAL_IDS = {
    "[PAD]": 0,
    "[UNK]": 100,
    "[CLS]": 101,
    "[SEP]": 102,
    "[MASK]": 103,
    ".": 1012,
    "?": 1029,
}

# published configs: IDEA-Research/grounding-dino-base and facebook/sam-vit-huge
GROUNDING_DINO_BASE = {
    "backbone_config": {
        "model_type": "swin",
        "embed_dim": 128,
        "depths": [2, 2, 18, 2],
        "num_heads": [4, 8, 16, 32],
        "window_size": 12,
        "image_size": 384,
        "out_indices": [2, 3, 4],
    },
    "text_config": {
        "model_type": "bert",
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "vocab_size": 30522,
    },
    "d_model": 256,
    "encoder_layers": 6,
    "decoder_layers": 6,
    "encoder_ffn_dim": 2048,
    "decoder_ffn_dim": 2048,
    "encoder_attention_heads": 8,
    "decoder_attention_heads": 8,
    "num_queries": 900,
    "num_feature_levels": 4,
    "encoder_n_points": 4,
    "decoder_n_points": 4,
    "max_text_len": 256,
}
GROUNDING_DINO_TINY = {
    "backbone_config": {
        "model_type": "swin",
        "embed_dim": 8,
        "depths": [1, 1, 1, 1],
        "num_heads": [1, 1, 1, 1],
        "window_size": 4,
        "image_size": 32,
        "out_indices": [2, 3, 4],
    },
    "text_config": {
        "model_type": "bert",
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "vocab_size": 1100,
        "max_position_embeddings": 64,
    },
    "d_model": 32,
    "encoder_layers": 1,
    "decoder_layers": 2,
    "encoder_ffn_dim": 16,
    "decoder_ffn_dim": 16,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "num_queries": 12,
    "num_feature_levels": 3,
    "encoder_n_points": 2,
    "decoder_n_points": 2,
    "max_text_len": 32,
}
SAM_VIT_H = {
    "vision_config": {
        "hidden_size": 1280,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "global_attn_indexes": [7, 15, 23, 31],
        "output_channels": 256,
        "image_size": 1024,
        "patch_size": 16,
        "window_size": 14,
        "mlp_dim": 5120,
    },
}
SAM_TINY = {
    "vision_config": {
        "hidden_size": 16,
        "output_channels": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 4,
        "window_size": 2,
        "global_attn_indexes": [0],
        "num_pos_feats": 4,
        "mlp_dim": 16,
    },
    "prompt_encoder_config": {"hidden_size": 8, "image_size": 32, "patch_size": 4, "mask_input_channels": 4},
    "mask_decoder_config": {
        "hidden_size": 8,
        "mlp_dim": 16,
        "num_attention_heads": 2,
        "iou_head_hidden_dim": 8,
    },
}
# processor sizes: the published ones, and the test-sized ones
PROCESSOR_SIZES = {
    "full": {"detector": {"shortest_edge": 800, "longest_edge": 1333}, "sam": 1024, "sam_mask": 256},
    "tiny": {"detector": {"shortest_edge": 64, "longest_edge": 96}, "sam": 32, "sam_mask": 8},
}


def _bert_vocab(path: Path, size: int) -> None:
    """A BERT vocabulary of `size` entries with the special ids where BERT-base has them and WORDS after."""
    by_id = {v: k for k, v in _BERT_SPECIAL_IDS.items()}
    base = size - len(WORDS)
    vocab = [by_id.get(i, f"[unused{i}]") for i in range(base)] + list(WORDS)
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")


def write_pad_models(root: Path, models: str, seed: int = 0) -> tuple[Path, Path]:
    """(Grounding DINO folder, SAM folder) at `models` size with random weights, reused when present."""
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SamConfig,
        SamModel,
        SamProcessor,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    if models not in PAD_MODELS:
        raise ValueError(f"--models {models!r}: choose one of {PAD_MODELS}")
    full = models == "full"
    detector_config = GROUNDING_DINO_BASE if full else GROUNDING_DINO_TINY
    sam_config = SAM_VIT_H if full else SAM_TINY
    sizes = PROCESSOR_SIZES[models]
    identity = {
        "version": BENCH_BUILDER_VERSION,
        "detector": detector_config,
        "sam": sam_config,
        "sizes": sizes,
        "seed": seed,
    }
    folder = root.resolve() / f"pad-models-{models}"
    marker = folder / "bench_folder.json"
    detector, sam = folder / "grounding-dino", folder / "sam"
    if marker.is_file() and json.loads(marker.read_text()) == identity:
        return detector, sam
    shutil.rmtree(folder, ignore_errors=True)
    detector.mkdir(parents=True)
    vocab = folder / "vocab.txt"
    _bert_vocab(vocab, detector_config["text_config"]["vocab_size"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        GroundingDinoForObjectDetection(GroundingDinoConfig(**detector_config)).save_pretrained(detector)
        SamModel(SamConfig(**sam_config)).save_pretrained(sam)
    GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(size=sizes["detector"]),
        tokenizer=BertTokenizer(str(vocab)),
    ).save_pretrained(detector)
    side, mask_side = sizes["sam"], sizes["sam_mask"]
    SamProcessor(
        image_processor=SamImageProcessorPil(
            size={"longest_edge": side},
            pad_size={"height": side, "width": side},
            mask_size={"longest_edge": mask_side},
            mask_pad_size={"height": mask_side, "width": mask_side},
        )
    ).save_pretrained(sam)
    marker.write_text(json.dumps(identity, indent=1, sort_keys=True) + "\n")
    return detector, sam


def write_pad_images(folder: Path, count: int, width: int, height: int, seed: int) -> Path:
    """`count` noise images of width × height with a caption of WORDS each; returns the LLaVA JSON."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        name = f"{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)).save(
            folder / "images" / name
        )
        caption = " ".join(WORDS[int(j)] for j in rng.integers(0, len(WORDS), size=12))
        samples.append(
            {
                "id": f"pad-{i:05d}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the image briefly."},
                    {"from": "gpt", "value": caption},
                ],
            }
        )
    data = folder / "data.json"
    data.write_text(json.dumps(samples))
    return data


class TimedStage:
    """A pipeline stage whose `method` calls are timed (device synchronised); the rest passes through."""

    def __init__(self, stage: Any, method: str, device: torch.device) -> None:
        self._stage, self._method, self._device = stage, method, device
        self.seconds: list[float] = []

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._stage, name)
        if name != self._method:
            return target

        def timed(*args, **kwargs):
            synchronize(self._device)
            start = time.perf_counter()
            out = target(*args, **kwargs)
            synchronize(self._device)
            self.seconds.append(time.perf_counter() - start)
            return out

        return timed


@dataclass
class PadBenchResult:
    models: str
    settings: dict[str, Any]
    images: int
    regions: int
    seconds: float
    images_per_s: float
    regions_per_s: float
    stage_seconds: dict[str, float] = field(default_factory=dict)  # per image, by stage

    def markdown_row(self) -> str:
        s, st = self.settings, self.stage_seconds
        return (
            f"| {self.models} | {s['device']} | {s['image_width']}×{s['image_height']} | {s['batch_size']} "
            f"| {self.images} | {self.images_per_s:.3g} | {self.regions_per_s:.3g} | "
            f"{st['detector'] * 1e3:.1f} | {st['segmenter'] * 1e3:.1f} | {st['other'] * 1e3:.1f} |"
        )


MARKDOWN_HEADER = (
    "| models | device | image | batch | images | images/s | regions/s | detector ms/img "
    "| SAM ms/img | rest ms/img |\n" + "|---" * 10 + "|"
)


def check_pad_flags(
    models: str, images: int, batch_size: int, width: int, height: int, max_regions: int
) -> None:
    """ValueError naming the flag, before any model is built."""
    if models not in PAD_MODELS:
        raise ValueError(f"--models {models!r}: choose one of {PAD_MODELS}")
    for flag, value in (
        ("--images", images),
        ("--batch-size", batch_size),
        ("--image-width", width),
        ("--image-height", height),
        ("--max-regions", max_regions),
    ):
        if value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")


def run_pad_bench(
    work: str,
    models: str,
    images: int,
    batch_size: int,
    width: int,
    height: int,
    device_name: str,
    max_regions: int = REGIONS_PER_IMAGE,
    seed: int = 0,
) -> PadBenchResult:
    """Generate PAD for `images` synthetic images through `run_generation`; figures per stage."""
    from patch_align.pad.generate.detectors import ZeroShotDetector
    from patch_align.pad.generate.items import load_image_items
    from patch_align.pad.generate.pipeline import pick_device, run_generation
    from patch_align.pad.generate.segmenters import SamSegmenter
    from patch_align.pad.generate.taggers import CaptionTagger

    check_pad_flags(models, images, batch_size, width, height, max_regions)
    device, dtype = pick_device(0, None if device_name == "auto" else device_name)
    root = Path(work)
    detector_path, sam_path = write_pad_models(root, models, seed)
    data = write_pad_images(root / f"pad-images-{width}x{height}-{images}", images, width, height, seed)
    items, _ = load_image_items(data)
    tagger = TimedStage(CaptionTagger(max_tags=30), "tag", device)
    detector = TimedStage(
        ZeroShotDetector(str(detector_path), 0.0, 0.0, 0.5, 0.9, max_regions, 1.0, device, dtype),
        "detect",
        device,
    )
    segmenter = TimedStage(SamSegmenter(str(sam_path), device, dtype), "segment", device)
    out = tempfile.mkdtemp(prefix="bench-pad-")
    settings = {"bench": "pad", "models": models, "source": "bench"}
    counts = run_generation(
        items,
        data.parent / "images",
        out,
        tagger,
        detector,
        segmenter,
        settings,
        batch_size,
        0,
        0,
        1,
        1,
        progress=False,
    )
    shutil.rmtree(out, ignore_errors=True)
    staged = {
        "tagger": sum(tagger.seconds),
        "detector": sum(detector.seconds),
        "segmenter": sum(segmenter.seconds),
    }
    staged["other"] = counts.seconds - sum(staged.values())  # loading, processors, records, writing
    return PadBenchResult(
        models=models,
        settings={
            "device": device.type,
            "autocast": str(dtype) if dtype else None,
            "batch_size": batch_size,
            "image_width": width,
            "image_height": height,
            "max_regions": max_regions,
            "threads": torch.get_num_threads(),
        },
        images=counts.processed,
        regions=counts.regions,
        seconds=counts.seconds,
        images_per_s=counts.processed / counts.seconds,
        regions_per_s=counts.regions / counts.seconds,
        stage_seconds={k: v / max(counts.processed, 1) for k, v in staged.items()},
    )


def write_pad_result(result: PadBenchResult, out: str | None) -> str:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(asdict(result), indent=1) + "\n")
    return "\n".join([MARKDOWN_HEADER, result.markdown_row()])
