"""Does alignment survive finetuning? `patch-align analyze` on a stage-2 (full finetune) checkpoint.

The projector that stage 2 keeps is what the LLM reads at test time, so the analysis must run on
the stage-2 folder itself (no --model-base) and measure its projector, not stage 1's.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from patch_align.cli import main

FIXTURES = Path(__file__).parent / "data" / "upstream_golden" / "fixtures-437"


def _flags(**values) -> list[str]:
    return [part for key, value in values.items() for part in (f"--{key}", str(value))]


@pytest.mark.slow  # two tiny training runs and two analyses: ~20 s on 2 cores
def test_analyze_measures_the_stage2_projector_of_a_finetuned_checkpoint(tmp_path):
    from llava.train.train import train
    from patch_align.train import main as train_patch_aligned

    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    stage1 = dict(
        model_name_or_path=data / "llm", version="plain", data_path=data / "pretrain.json",
        image_folder=data / "images", vision_tower=data / "clip", mm_projector_type="mlp2x_gelu",
        tune_mm_mlp_adapter=True, mm_vision_select_layer=-2, image_aspect_ratio="pad",
        mm_use_im_patch_token=False,  # upstream's default True adds a token a --model-base load lacks
        per_device_train_batch_size=4, max_steps=1, learning_rate=1e-3, save_strategy="no", report_to="none",
        model_max_length=256, dataloader_num_workers=0, disable_tqdm=True, seed=0, output_dir=tmp_path / "s1",
    )
    train_patch_aligned(_flags(**stage1, pad_path=data / "pad.json"))  # stage 1 as the demo runs it
    common = ["--pad", str(data / "pad.json"), "--image-folder", str(data / "images"), "--device", "cpu",
              "--no-progress", "--examples", "0", "--caption-file", str(data / "pretrain.json")]
    # stage 1 is a projector folder: its LLM is the base
    assert main(["analyze", "--model-path", str(tmp_path / "s1"), "--model-base", str(data / "llm"),
                 "--out", str(tmp_path / "a1"), *common]) == 0
    stage2 = {**stage1, "version": "v1", "data_path": data / "finetune.json", "tune_mm_mlp_adapter": False,
              "pretrain_mm_mlp_adapter": tmp_path / "s1" / "mm_projector.bin", "learning_rate": 1e-2,
              "output_dir": tmp_path / "s2"}
    train(argv=_flags(**stage2))

    assert main(["analyze", "--model-path", str(tmp_path / "s2"), "--out", str(tmp_path / "a2"),
                 *common]) == 0
    after, before = (json.loads((tmp_path / a / "metrics.json").read_text()) for a in ("a2", "a1"))
    assert after["run"]["model_base"] is None and after["alignment"]["regions_scored"] > 0
    assert after["alignment"]["chance_miou"] is not None
    assert after["entropy"]["captions"]["per_set"]["sets"] > 0
    # the same images and masks, a different projector: chance lines equal, projected tokens differ
    assert after["alignment"]["chance_miou"] == before["alignment"]["chance_miou"]
    assert after["alignment"]["mean_cos_inside"] != before["alignment"]["mean_cos_inside"]
    assert after["compression"]["h_vision"] == pytest.approx(before["compression"]["h_vision"])
