"""Every path-taking command given relative paths, then its outputs used from another working directory.

The rule (llava/paths.py, docs/architecture.md "Paths"): command-line paths are relative to the working
directory; what a command writes into a generated file means the same from any working directory.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from patch_align.cli import main

FIXTURES = Path(__file__).parent / "data" / "upstream_golden" / "fixtures-437"


@pytest.fixture()
def workdir(tmp_path, monkeypatch) -> Path:
    """A working directory holding the fixture models and data under `data/`, entered."""
    shutil.copytree(FIXTURES, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _flags(**values) -> list[str]:
    return [part for key, value in values.items() for part in (f"--{key}", str(value))]


STAGE1 = dict(
    model_name_or_path="data/llm", version="plain", data_path="data/pretrain.json",
    image_folder="data/images",
    vision_tower="data/clip", mm_projector_type="mlp2x_gelu", tune_mm_mlp_adapter=True,
    mm_vision_select_layer=-2, mm_use_im_start_end=False, mm_use_im_patch_token=False,
    per_device_train_batch_size=4, max_steps=1, learning_rate=1e-3, save_strategy="no", report_to="none",
    model_max_length=256, dataloader_num_workers=0, disable_tqdm=True, seed=0,
)


def test_patch_aligned_training_and_analysis_with_relative_paths_work_from_another_folder(
        workdir, monkeypatch):
    from patch_align.train import main as train_main

    train_main(_flags(**STAGE1, pad_path="data/pad.json", output_dir="out/stage1"))
    config = json.loads((workdir / "out/stage1/config.json").read_text())
    assert config["mm_vision_tower"] == str(workdir / "data" / "clip")

    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code = main(["analyze", "--model-path", "../out/stage1", "--model-base", "../data/llm",
                 "--pad", "../data/pad.json", "--image-folder", "../data/images", "--out", "analysis",
                 "--device", "cpu", "--no-progress"])
    assert code == 0
    metrics = json.loads((elsewhere / "analysis" / "metrics.json").read_text())
    assert 0.0 <= metrics["alignment"]["miou"] <= 1.0


def test_a_finetuned_checkpoint_from_relative_flags_loads_from_another_folder(workdir, monkeypatch):
    from llava.model.builder import load_pretrained_model
    from llava.train.train import train

    train(argv=_flags(**{**STAGE1, "output_dir": "out/stage1"}))
    finetune = {**STAGE1, "version": "v1", "data_path": "data/finetune.json", "tune_mm_mlp_adapter": False,
                "pretrain_mm_mlp_adapter": "out/stage1/mm_projector.bin", "output_dir": "out/stage2"}
    train(argv=_flags(**finetune))

    monkeypatch.chdir(workdir / "out")
    _, model, processor, _ = load_pretrained_model("stage2", None, "llava-checkpoint", device="cpu")
    assert model.get_vision_tower().is_loaded and processor is not None


def test_sea_labels_from_relative_paths_train_from_another_folder(workdir, monkeypatch):
    from test_pad_generate_clip_owl import clip_tokenizer

    from patch_align.train import main as train_main

    shutil.copytree(workdir / "data" / "clip", workdir / "sea_clip")  # the tower, with a text tokenizer
    clip_tokenizer().save_pretrained(str(workdir / "sea_clip"))  # special ids last, as the tower pools
    assert main(["sea", "vocab", "--data", "data/pretrain.json", "--min-count", "1",
                 "--out", "vocab.txt"]) == 0
    assert main(["sea", "label", "--clip", "sea_clip", "--vocab", "vocab.txt", "--data", "data/pretrain.json",
                 "--image-folder", "data/images", "--out", "labels", "--image-aspect-ratio", "square",
                 "--device", "cpu"]) == 0

    (workdir / "run").mkdir()
    monkeypatch.chdir(workdir / "run")
    relative = {k: f"../{v}" if isinstance(v, str) and v.startswith("data/") else v
                for k, v in STAGE1.items()}
    train_main(_flags(**relative, align_objective="sea", sea_labels="../labels", output_dir="out"))
    assert (workdir / "run" / "out" / "mm_projector.bin").is_file()


def test_pad_generate_with_relative_paths_merges_from_another_folder(workdir, monkeypatch):
    from test_pad_generate import build_tiny_grounding_dino, build_tiny_sam, write_dataset

    data = write_dataset(workdir / "pad_data", 3, [(40, 30), (30, 40)])
    build_tiny_grounding_dino(workdir / "gdino")
    build_tiny_sam(workdir / "sam")
    relative_data = data.relative_to(workdir)
    code = main(["pad", "generate", "--data", str(relative_data), "--image-folder", "pad_data/images",
                 "--out", "shards", "--detector", "gdino", "--segmenter", "sam", "--box-threshold", "0",
                 "--text-threshold", "0", "--max-regions", "2", "--min-box-side", "1", "--min-mask-area", "1",
                 "--num-workers", "0", "--device", "cpu", "--no-progress"])
    assert code == 0

    (workdir / "merge").mkdir()
    monkeypatch.chdir(workdir / "merge")
    # no --data: the shard manifests name the data file, and must name it from any folder
    assert main(["pad", "merge", "../shards", "--out", "pad.jsonl"]) == 0
    # a relative --data is recorded absolute in the merged manifest
    assert main(["pad", "merge", "../shards", "--out", "again.jsonl", "--data", f"../{relative_data}"]) == 0
    for name in ("pad", "again"):
        assert json.loads((workdir / "merge" / f"{name}.manifest.json").read_text())["data"] == str(data)
    assert len((workdir / "merge" / "pad.jsonl").read_text().splitlines()) >= 1
