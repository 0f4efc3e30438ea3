"""A SigLIP tower (no CLS, resize without crop, mean = std = 0.5) through LLaVA's training data and
patch-aligned stage 1, on the fixture LLM and images."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from llava.tiny import build_tiny_siglip

FIXTURES = Path(__file__).parent / "data" / "upstream_golden" / "fixtures-437"


@pytest.fixture(scope="module")
def siglip(tmp_path_factory) -> Path:
    return build_tiny_siglip(tmp_path_factory.mktemp("siglip") / "siglip")  # 64 px, 16-px patches: 4 x 4


def test_a_text_only_sample_in_a_siglip_run_gets_a_zero_image_of_siglips_input_size(siglip, tmp_path):
    from transformers import AutoTokenizer, SiglipImageProcessor

    from llava.train.data import LazySupervisedDataset

    data = tmp_path / "mixed.json"
    def turns(question: str, answer: str) -> list[dict[str, str]]:
        return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]

    data.write_text(json.dumps([
        {"id": "img", "image": "img000.png", "conversations": turns("<image>\nWhat is it?", "a box")},
        {"id": "txt", "conversations": turns("Hi", "Hello")},
    ]))
    data_args = SimpleNamespace(
        image_processor=SiglipImageProcessor.from_pretrained(siglip), image_folder=str(FIXTURES / "images"),
        is_multimodal=True, image_aspect_ratio="pad", mm_use_im_start_end=False, version="v1",
        label_mismatch="error",
    )
    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "llm", use_fast=False)
    dataset = LazySupervisedDataset(str(data), tokenizer, data_args)
    assert dataset[0]["image"].shape == (3, 64, 64)
    assert torch.equal(dataset[1]["image"], torch.zeros(3, 64, 64))


def test_patch_aligned_stage1_with_a_siglip_tower_puts_regions_on_its_4x4_grid_and_trains(siglip, tmp_path):
    from tests.test_patch_trainer import build_trainer, stage1_argv

    trainer = build_trainer(stage1_argv(tmp_path / "run", vision_tower=siglip, max_steps=2))
    dataset = trainer.train_dataset
    assert (dataset.grid.grid_shape, dataset.grid.num_tokens) == ((4, 4), 16)
    assert dataset[0]["region_masks"].shape[1] == 16
    assert trainer.model.config.mm_hidden_size == 32
    trainer.train()
    patch_losses = [log["loss_patch"] for log in trainer.state.log_history if "loss_patch" in log]
    assert len(patch_losses) == 2 and all(loss > 0 for loss in patch_losses)
