"""PAD generation end to end with tiny random-weight Grounding DINO and SAM, loaded via from_pretrained.

Random weights give random boxes, so the thresholds here are 0 (every query passes) and
the checks are about plumbing: records validate, shards cover the data exactly once,
and a killed run resumes to the same records.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from llava.train.llava_json import LlavaDataError
from patch_align.pad.generate.build import generate_pad
from patch_align.pad.generate.options import GenerateOptions
from patch_align.pad.generate.shards import shard_stem
from patch_align.pad.reader import iter_pad_records
from patch_align.pad.validate import validate_pad

REPO = Path(__file__).resolve().parents[1]
# Grounding DINO's text masks look for BERT-base's ids of [CLS]=101, [SEP]=102, "."=1012, "?"=1029.
SPECIAL_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}
WORDS = ["dog", "cat", "red", "car", "tree", "man", "horse", "ball", "green", "field", "sky", "blue"]


def write_bert_vocab(path: Path) -> int:
    by_id = {v: k for k, v in SPECIAL_IDS.items()}
    vocab = [by_id.get(i, f"[unused{i}]") for i in range(1030)] + WORDS
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return len(vocab)


def build_tiny_grounding_dino(folder: Path) -> None:
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    vocab_size = write_bert_vocab(folder.parent / "vocab.txt")
    torch.manual_seed(0)
    config = GroundingDinoConfig(
        backbone_config={
            "model_type": "swin",
            "embed_dim": 8,
            "depths": [1, 1, 1, 1],
            "num_heads": [1, 1, 1, 1],
            "window_size": 4,
            "image_size": 32,
            "out_indices": [2, 3, 4],
        },
        text_config={
            "model_type": "bert",
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "vocab_size": vocab_size,
            "max_position_embeddings": 64,
        },
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=12,
        num_feature_levels=3,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=32,
    )
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96}),
        tokenizer=BertTokenizer(str(folder.parent / "vocab.txt")),
    )
    processor.save_pretrained(folder)


def build_tiny_sam(folder: Path) -> None:
    from transformers import SamConfig, SamModel, SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    torch.manual_seed(0)
    config = SamConfig(
        vision_config={
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
        prompt_encoder_config={"hidden_size": 8, "image_size": 32, "patch_size": 4, "mask_input_channels": 4},
        mask_decoder_config={
            "hidden_size": 8,
            "mlp_dim": 16,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": 8,
        },
    )
    SamModel(config).save_pretrained(folder)
    image_processor = SamImageProcessorPil(
        size={"longest_edge": 32},
        pad_size={"height": 32, "width": 32},
        mask_size={"longest_edge": 8},
        mask_pad_size={"height": 8, "width": 8},
    )
    SamProcessor(image_processor=image_processor).save_pretrained(folder)


CAPTIONS = [
    "a red car near a tree",
    "a dog in a green field",
    "the man on a horse",
    "a blue sky",
    "a cat with a ball",
    "red car and blue sky",
]


def write_dataset(folder: Path, count: int, sizes: list[tuple[int, int]]) -> Path:
    """`count` samples with small images of the given (width, height) sizes, cycled; returns the JSON path."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        colour = ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)
        image = Image.new("RGB", (width, height), colour)
        image.paste((255 - colour[0], 0, 0), (width // 4, height // 4, width // 2, height // 2))
        name = f"{i // 10:02d}/{i:05d}.png"
        (images / name).parent.mkdir(exist_ok=True)
        image.save(images / name)
        samples.append(
            {
                "id": f"{i:05d}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the image briefly."},
                    {"from": "gpt", "value": CAPTIONS[i % len(CAPTIONS)]},
                ],
            }
        )
    data = folder / "data.json"
    data.write_text(json.dumps(samples), encoding="utf-8")
    return data


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    build_tiny_grounding_dino(root / "grounding-dino")
    build_tiny_sam(root / "sam")
    return root / "grounding-dino", root / "sam"


def options(data: Path, out: Path, models: tuple[Path, Path], **overrides) -> GenerateOptions:
    detector, segmenter = models
    settings = dict(
        data=str(data),
        image_folder=str(data.parent / "images"),
        out=str(out),
        detector=str(detector),
        segmenter=str(segmenter),
        box_threshold=0.0,
        text_threshold=0.0,
        max_regions=3,
        min_box_side=1.0,
        min_mask_area=1,
        batch_size=2,
        num_workers=0,
        device="cpu",
        progress=False,
    )
    settings.update(overrides)
    return GenerateOptions(**settings)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "patch_align.cli", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def generate_args(data: Path, out: Path, models: tuple[Path, Path], *extra: str) -> list[str]:
    return [
        "pad",
        "generate",
        "--data",
        str(data),
        "--image-folder",
        str(data.parent / "images"),
        "--out",
        str(out),
        "--detector",
        str(models[0]),
        "--segmenter",
        str(models[1]),
        "--box-threshold",
        "0",
        "--text-threshold",
        "0",
        "--max-regions",
        "3",
        "--min-box-side",
        "1",
        "--min-mask-area",
        "1",
        "--num-workers",
        "0",
        "--device",
        "cpu",
        *extra,
    ]


def test_pipeline_writes_a_valid_pad_with_regions_for_wide_and_tall_images(tmp_path, tiny_models):
    data = write_dataset(tmp_path, 4, [(40, 24), (20, 36)])
    counts, rank, world = generate_pad(options(data, tmp_path / "out", tiny_models, num_workers=1))
    assert (rank, world, counts.processed, counts.failed) == (0, 1, 4, 0)
    shard = shard_stem(tmp_path / "out", 0, 1).with_suffix(".jsonl")
    report = validate_pad(shard, tmp_path / "images")
    assert report.ok, report.problems
    records = list(iter_pad_records(shard))
    assert [r.id for r in records] == ["00000", "00001", "00002", "00003"]
    assert [(r.width, r.height) for r in records] == [(40, 24), (20, 36), (40, 24), (20, 36)]
    assert counts.regions == sum(len(r.regions) for r in records) > 0
    tags = {
        "00000": {"red car", "tree"},
        "00001": {"dog", "green field"},
        "00002": {"man", "horse"},
        "00003": {"blue sky"},
    }
    for record in records:
        assert 1 <= len(record.regions) <= 3
        assert {region.label for region in record.regions} <= tags[record.id]
        assert all(region.source == "captions+grounding-dino+sam" for region in record.regions)
        assert all(0.0 <= region.score <= 1.0 for region in record.regions)
    manifest = json.loads(shard_stem(tmp_path / "out", 0, 1).with_suffix(".manifest.json").read_text())
    assert manifest["settings"]["detector"]["detector_type"] == "grounding-dino"
    assert manifest["settings"]["detector"]["box_threshold"] == 0.0
    assert manifest["shard_records"] == 4 and manifest["last_run"]["regions"] == counts.regions


def test_unreadable_and_missing_images_are_listed_as_failed_and_merge_accounts_for_them(
    tmp_path, tiny_models
):
    data = write_dataset(tmp_path, 4, [(32, 32)])
    (tmp_path / "images" / "00" / "00001.png").write_bytes(b"not a png")
    (tmp_path / "images" / "00" / "00002.png").unlink()
    counts, _, _ = generate_pad(options(data, tmp_path / "out", tiny_models))
    assert (counts.processed, counts.failed) == (2, 2)
    assert [f["id"] for f in counts.failures] == ["00001", "00002"]
    assert "unreadable image file" in counts.failures[0]["reason"]
    assert "missing image file" in counts.failures[1]["reason"]
    result = cli("pad", "merge", str(tmp_path / "out"), "--out", str(tmp_path / "pad.jsonl"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert [r.id for r in iter_pad_records(tmp_path / "pad.jsonl")] == ["00000", "00003"]
    failed = [json.loads(line)["id"] for line in (tmp_path / "pad.failed.jsonl").read_text().splitlines()]
    assert failed == ["00001", "00002"]
    assert "2 records, 2 failed, 0 missing" in result.stdout


@pytest.mark.slow
def test_two_ranks_write_shards_whose_merge_holds_every_id_once_in_data_order(tmp_path, tiny_models):
    data = write_dataset(tmp_path, 7, [(32, 24)])
    out = tmp_path / "out"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "patch_align.cli", *generate_args(data, out, tiny_models)],
            cwd=REPO,
            env={
                **os.environ,
                "HF_HUB_OFFLINE": "1",
                "RANK": str(rank),
                "WORLD_SIZE": "2",
                "LOCAL_RANK": str(rank),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    shard_ids = [
        [json.loads(line)["id"] for line in shard_stem(out, rank, 2).with_suffix(".jsonl").open()]
        for rank in range(2)
    ]
    assert shard_ids == [["00000", "00002", "00004", "00006"], ["00001", "00003", "00005"]]
    result = cli("pad", "merge", str(out), "--out", str(tmp_path / "pad.jsonl"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert [r.id for r in iter_pad_records(tmp_path / "pad.jsonl")] == [f"{i:05d}" for i in range(7)]
    assert validate_pad(tmp_path / "pad.jsonl", tmp_path / "images").ok


def test_merge_fails_and_names_ids_missing_from_the_shards(tmp_path, tiny_models):
    data = write_dataset(tmp_path, 3, [(32, 32)])
    generate_pad(options(data, tmp_path / "out", tiny_models))
    shard = shard_stem(tmp_path / "out", 0, 1).with_suffix(".jsonl")
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text(lines[0] + lines[2] + lines[2])
    result = cli("pad", "merge", str(tmp_path / "out"), "--out", str(tmp_path / "pad.jsonl"))
    assert result.returncode == 1
    assert "missing: 00001" in result.stdout
    assert "duplicated: 00002" in result.stdout


def test_rerun_with_other_thresholds_refuses_to_append_and_names_the_flag(tmp_path, tiny_models):
    data = write_dataset(tmp_path, 2, [(32, 32)])
    generate_pad(options(data, tmp_path / "out", tiny_models))
    with pytest.raises(ValueError, match="box_threshold"):
        generate_pad(options(data, tmp_path / "out", tiny_models, box_threshold=0.5))


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_sigkilled_run_resumes_to_exactly_the_records_of_an_uninterrupted_run(tmp_path, tiny_models):
    data = write_dataset(tmp_path, 24, [(40, 24), (24, 40)])
    clean = tmp_path / "clean"
    assert generate_pad(options(data, clean, tiny_models, batch_size=2))[0].processed == 24
    expected = _records(shard_stem(clean, 0, 1).with_suffix(".jsonl"))

    killed = tmp_path / "killed"
    shard = shard_stem(killed, 0, 1).with_suffix(".jsonl")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "patch_align.cli",
            *generate_args(data, killed, tiny_models, "--batch-size", "2"),
        ],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    # Batches of 2 mix a wide and a tall image, so padding differs inside a batch: resuming must
    # rebuild the same batches to reproduce the records.
    while not (shard.exists() and shard.read_bytes().count(b"\n") >= 3) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    written = shard.read_bytes().count(b"\n")
    assert proc.returncode == -signal.SIGKILL and 3 <= written < 24
    # Make the rerun meet a half-written batch (odd line count) and a torn line, as a kill
    # inside a write would leave them.
    lines = shard.read_bytes().splitlines(keepends=True)
    written -= 1 - written % 2
    shard.write_bytes(b"".join(lines[:written]) + b'{"id": "00099", "image": "torn')

    result = cli(*generate_args(data, killed, tiny_models, "--batch-size", "2"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert _records(shard) == expected
    manifest = json.loads(shard_stem(killed, 0, 1).with_suffix(".manifest.json").read_text())
    assert manifest["last_run"]["skipped_done"] == written
    assert manifest["last_run"]["repaired_bytes"] == len(b'{"id": "00099", "image": "torn')


def test_a_data_record_without_image_token_is_refused_before_any_model_loads(tmp_path):
    data = write_dataset(tmp_path, 2, [(16, 16)])
    samples = json.loads(data.read_text())
    samples[1]["conversations"][0]["value"] = "Describe the image briefly."
    data.write_text(json.dumps(samples))
    missing_models = (tmp_path / "no-detector", tmp_path / "no-segmenter")
    with pytest.raises(LlavaDataError, match=r"record 1 \(id '00001'\): has an 'image' but 0 <image>"):
        generate_pad(options(data, tmp_path / "out", missing_models))
