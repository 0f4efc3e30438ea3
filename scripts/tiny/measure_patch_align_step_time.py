"""Step-time ratio patch-aligned / caption-only on one batch, in one process (CPU, tiny models).

Both variants run forward + backward on the same collated batch with the same model:
caption-only = `model(**batch).loss`; patch-aligned = `PatchAlignTrainer.compute_loss` (caption
loss + beta * L_patch, the label embeddings cached as in stage 1). The variants alternate,
after warm-up, and the medians are compared.
Usage: python scripts/tiny/measure_patch_align_step_time.py LLM CLIP PRETRAIN_JSON IMAGE_FOLDER PAD [REPEATS]
"""

from __future__ import annotations

import pathlib
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from llava.train.train import build_trainer  # noqa: E402
from patch_align.data import REGION_COUNTERS  # noqa: E402
from patch_align.recipe import PatchAlignRecipe  # noqa: E402
from patch_align.trainer import REGION_KEYS  # noqa: E402


def build_patch_align_trainer(llm: str, clip: str, data: str, images: str, pad: str, output_dir: str):
    argv = [
        "--model_name_or_path",
        llm,
        "--version",
        "plain",
        "--data_path",
        data,
        "--image_folder",
        images,
        "--pad_path",
        pad,
        "--vision_tower",
        clip,
        "--mm_projector_type",
        "mlp2x_gelu",
        "--tune_mm_mlp_adapter",
        "True",
        "--mm_vision_select_layer",
        "-2",
        "--mm_use_im_patch_token",
        "False",
        "--output_dir",
        output_dir,
        "--per_device_train_batch_size",
        "4",
        "--report_to",
        "none",
        "--patch_beta_schedule",
        "constant",
    ]
    return build_trainer(PatchAlignRecipe(), argv)[0]


def main(llm: str, clip: str, data: str, images: str, pad: str, repeats: str = "30") -> None:
    trainer = build_patch_align_trainer(llm, clip, data, images, pad, "/tmp/patch_align_step_time")
    model = trainer.model
    model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    caption_inputs = {
        k: v for k, v in batch.items() if k not in (*REGION_KEYS, *REGION_COUNTERS)
    }
    num_items = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
    trainer._regions_in_step = torch.tensor(batch["region_masks"].shape[0])
    trainer.current_gradient_accumulation_steps = 1
    trainer.weight_callback.beta = 5.0

    def caption_step():
        model(**caption_inputs, num_items_in_batch=num_items).loss.backward()

    def patch_step():
        trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items).backward()

    times = {"caption": [], "patch": []}
    for step in range(int(repeats) + 5):
        for name, fn in (("caption", caption_step), ("patch", patch_step)):
            model.zero_grad()
            start = time.perf_counter()
            fn()
            if step >= 5:  # warm-up
                times[name].append(time.perf_counter() - start)
    caption, patch = statistics.median(times["caption"]), statistics.median(times["patch"])
    print(
        f"batch 4, {batch['region_masks'].shape[0]} regions, {len(times['patch'])} repeats, "
        f"{torch.get_num_threads()} threads: caption-only {caption * 1e3:.2f} ms, "
        f"patch-aligned {patch * 1e3:.2f} ms, ratio {patch / caption:.3f}"
    )


if __name__ == "__main__":
    if len(sys.argv) not in (6, 7):
        sys.exit(__doc__)
    main(*sys.argv[1:])
