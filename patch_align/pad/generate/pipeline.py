"""The PAD generation run: images of a LLaVA JSON -> tags -> boxes -> masks -> shard of PAD records.

One process per device. The rank and world size come from torchrun's environment
(`RANK`, `WORLD_SIZE`, `LOCAL_RANK`; 0, 1, 0 without torchrun); ranks never talk to
each other, each owns `shard_indices(...)` of the data and writes its own shard. Images
are decoded and preprocessed by DataLoader workers; the models run batched on the
process's device (`cuda:LOCAL_RANK` when CUDA is there, else CPU), under bf16 autocast
where the GPU supports it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from patch_align.pad.generate.items import ImageItem
from patch_align.pad.generate.shards import ShardWriter, shard_indices, shard_stem
from patch_align.pad.generate.taggers import SampleInfo
from patch_align.pad.masks import encode_mask

logger = logging.getLogger(__name__)

# Settings whose change would make a resumed shard disagree with its first part.
RESUME_KEYS = (
    "batch_size",
    "data",
    "image_folder",
    "world_size",
    "source",
    "min_mask_area",
    "tagger",
    "detector",
    "segmenter",
)


@dataclass
class LoadedImage:
    """A decoded image, or the reason it could not be decoded."""

    item: ImageItem
    image: Image.Image | None
    error: str | None


class ImageDataset(Dataset):
    """Decodes the images of `items` as RGB; a file that cannot be read becomes an error, not an exception."""

    def __init__(self, items: list[ImageItem], image_folder: str | os.PathLike):
        self.items = items
        self.image_folder = Path(image_folder)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> LoadedImage:
        item = self.items[i]
        path = self.image_folder / item.image
        try:
            with Image.open(path) as image:
                return LoadedImage(item, image.convert("RGB"), None)
        except FileNotFoundError:
            return LoadedImage(item, None, f"missing image file {path}")
        except (UnidentifiedImageError, OSError, ValueError) as err:
            return LoadedImage(item, None, f"unreadable image file {path}: {err}")


@dataclass
class Batch:
    """Decoded images of one batch, failures apart, and each stage's image-processor output."""

    good: list[LoadedImage]
    failed: list[LoadedImage]
    prepared: dict[str, Any]


class Collate:
    """Runs the stages' image processors on a batch inside the DataLoader worker."""

    def __init__(self, image_processors: dict[str, Any]):
        self.image_processors = image_processors

    def __call__(self, loaded: list[LoadedImage]) -> Batch:
        good = [x for x in loaded if x.image is not None]
        images = [x.image for x in good]
        prepared = {
            name: (dict(p(images=images, return_tensors="pt")) if p is not None and images else None)
            for name, p in self.image_processors.items()
        }
        return Batch(good, [x for x in loaded if x.image is None], prepared)


@dataclass
class RunCounts:
    """What a rank did in this run and in total over its shard."""

    assigned: int = 0
    skipped_done: int = 0
    processed: int = 0
    failed: int = 0
    regions: int = 0
    boxes_without_mask: int = 0
    repaired_bytes: int = 0
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)


def distributed_position() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment variables."""
    values = []
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        raw = os.environ.get(name, str(default))
        if not raw.isdigit():
            raise ValueError(f"environment variable {name}={raw!r} is not a non-negative integer")
        values.append(int(raw))
    return values[0], values[1], values[2]


def pick_device(local_rank: int, requested: str | None) -> tuple[torch.device, torch.dtype | None]:
    """The device for this process and the autocast dtype (bf16 on GPUs that support it, else none)."""
    if requested is not None:
        device = torch.device(requested)
    elif torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    else:
        device = torch.device("cpu")
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return device, (torch.bfloat16 if use_bf16 else None)


def build_record(
    item: ImageItem,
    width: int,
    height: int,
    labels: list[str],
    scores: list[float],
    masks: list[Any],
    source: str,
    min_mask_area: int,
) -> tuple[dict[str, Any], int]:
    """A PAD record from one image's detections and masks, and how many masks were dropped as too small.

    `bbox` is the mask's tight box (so box and mask always agree); `score` is the
    detector's score times SAM's predicted IoU.
    """
    regions = []
    dropped = 0
    for label, score, segmented in zip(labels, scores, masks, strict=True):
        segmentation, bbox, area = encode_mask(segmented.mask)
        if area < min_mask_area:
            dropped += 1
            continue
        regions.append(
            {
                "label": label,
                "bbox": bbox,
                "segmentation": segmentation,
                "score": round(score * segmented.score, 6),
                "source": source,
            }
        )
    return {"id": item.id, "image": item.image, "width": width, "height": height, "regions": regions}, dropped


def check_resume_settings(path: Path, settings: dict[str, Any]) -> None:
    """Refuse to append to a shard made with other settings; names the flags that differ."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        before = json.load(f)["settings"]
    changed = [k for k in RESUME_KEYS if before.get(k) != settings.get(k)]
    if changed:
        details = ", ".join(f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in changed)
        raise ValueError(
            f"{path} was written with other settings ({details}); use another --out or the same arguments"
        )


def write_manifest(
    path: Path, settings: dict[str, Any], counts: RunCounts, records: int, failed: int
) -> None:
    """The shard's manifest: settings, this run's counts, and the totals now in the shard."""
    manifest = {
        "settings": settings,
        "last_run": {k: v for k, v in asdict(counts).items() if k != "failures"},
        "shard_records": records,
        "shard_failed": failed,
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # atomic: a kill never leaves half a manifest


def run_generation(
    items: list[ImageItem],
    image_folder: str | os.PathLike,
    out_dir: str | os.PathLike,
    tagger: Any,
    detector: Any,
    segmenter: Any,
    settings: dict[str, Any],
    batch_size: int,
    num_workers: int,
    rank: int,
    world_size: int,
    min_mask_area: int,
    progress: bool = True,
) -> RunCounts:
    """Generate this rank's shard of PAD records, skipping ids already in it; returns the counts.

    `settings` go into the manifest and are compared with an earlier run's before
    resuming.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = shard_stem(out_dir, rank, world_size)
    manifest_path = stem.with_name(stem.name + ".manifest.json")
    check_resume_settings(manifest_path, settings)
    writer = ShardWriter(out_dir, rank, world_size)
    counts = RunCounts(repaired_bytes=writer.repaired_bytes)
    if writer.repaired_bytes:
        logger.warning(
            "%s: cut a torn last line (%d bytes) left by an interrupted run",
            writer.records_path,
            writer.repaired_bytes,
        )
    mine = [items[i] for i in shard_indices(len(items), rank, world_size)]
    todo = [item for item in mine if item.id not in writer.done]
    counts.assigned, counts.skipped_done = len(mine), len(mine) - len(todo)
    # Batches are fixed chunks of this rank's images, so an image meets the same batch
    # companions (and the same padding) in a resumed run; a half-written batch is recomputed
    # whole and only its missing records are written.
    chunks = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    rerun = [item for chunk in chunks if any(x.id not in writer.done for x in chunk) for item in chunk]
    write_manifest(manifest_path, settings, counts, writer.records_before, writer.failed_before)
    loader = DataLoader(
        ImageDataset(rerun, image_folder),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=Collate(
            {
                "tagger": tagger.image_processor,
                "detector": detector.image_processor,
                "segmenter": segmenter.image_processor,
            }
        ),
    )
    start = time.perf_counter()
    records_written = writer.records_before
    failed_written = writer.failed_before
    try:
        with tqdm(total=len(todo), unit="img", desc=f"PAD rank {rank}", disable=not progress) as bar:
            for batch in loader:
                records = []
                if batch.good:
                    samples = [SampleInfo(x.item.id, x.item.image, x.item.caption) for x in batch.good]
                    tags = tagger.tag(samples, batch.prepared["tagger"])
                    sizes = [x.image.size for x in batch.good]
                    detections = detector.detect(batch.prepared["detector"], tags, sizes)
                    boxes = [
                        torch.tensor([d.box for d in dets], dtype=torch.float32).reshape(-1, 4)
                        for dets in detections
                    ]
                    masks = segmenter.segment(batch.prepared["segmenter"], boxes)
                    for x, dets, image_masks, (width, height) in zip(
                        batch.good, detections, masks, sizes, strict=True
                    ):
                        record, dropped = build_record(
                            x.item,
                            width,
                            height,
                            [d.label for d in dets],
                            [d.score for d in dets],
                            image_masks,
                            settings["source"],
                            min_mask_area,
                        )
                        if x.item.id not in writer.done:
                            counts.boxes_without_mask += dropped
                            counts.regions += len(record["regions"])
                            records.append(record)
                failures = [
                    {"id": x.item.id, "image": x.item.image, "reason": x.error}
                    for x in batch.failed
                    if x.item.id not in writer.done
                ]
                writer.write(records, failures)
                records_written += len(records)
                failed_written += len(failures)
                counts.processed += len(records)
                counts.failed += len(failures)
                counts.failures += failures
                for failure in failures:
                    logger.warning("skipped %s: %s", failure["id"], failure["reason"])
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.update(len(records) + len(failures))
                bar.set_postfix(
                    img_s=f"{(counts.processed + counts.failed) / elapsed:.2f}",
                    regions_s=f"{counts.regions / elapsed:.2f}",
                    failed=counts.failed,
                )
    finally:
        writer.close()
        counts.seconds = time.perf_counter() - start
        write_manifest(manifest_path, settings, counts, records_written, failed_written)
    return counts
