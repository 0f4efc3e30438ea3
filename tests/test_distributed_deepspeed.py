"""DeepSpeed with 2 ranks through the `deepspeed` launcher on CPU, the way LLaVA-1.5 trains.

- Stage 2 under ZeRO-3 (`scripts/zero3.json`), full finetune and LoRA, started from a stage-1
  projector (`--pretrain_mm_mlp_adapter`, loaded into the partitioned model): 2 ranks × batch 2
  equal 1 process × batch 4, per-step loss and gradient norm and every saved weight. LoRA runs
  with `--lora_dropout 0`: dropout masks are drawn per process, so with dropout the two layouts
  differ by design.
- Stage 1 (patch-aligned, linear β) under ZeRO-2 and ZeRO-3 with `checkpoint-2` and `checkpoint-4`:
  only rank 0 writes the projector files and configs, each through an atomic write (no temporary
  file left); the projector-only checkpoints hold the full, gathered weights (equal to a
  1-process run's); resuming from `checkpoint-2` continues exactly as the uninterrupted run.

Tolerances: 1e-6 relative on logged values, 1e-5 absolute on weights (rounding only:
measured ≤ 1.3e-7 relative on logged values and ≤ 6.3e-7 on weights after 3 stage-2 steps, where
Adam's first steps scale tiny gradient differences up to the learning rate); resuming is exact
(0 difference measured), so it is compared at the same tolerances.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from distributed_runs import (
    FIXTURES,
    LLAVA_ENTRY,
    PATCH_ENTRY,
    REPO,
    assert_succeeded,
    free_port,
    launch,
    log_differences,
    run_differences,
    run_env,
    run_process_group,
    stage1_flags,
    step_logs,
    write_uneven_stage1_data,
)
from safetensors.torch import load_file

from llava.model.checkpoints import NON_LORA_FILE, PROJECTOR_FILE
from patch_align.trainer import REGION_TOTALS_FILE

pytestmark = pytest.mark.slow  # each 2-rank DeepSpeed run takes 12-25 s on 2 cores

RELATIVE_TOLERANCE = 1e-6
WEIGHT_TOLERANCE = 1e-5
STAGE1_PROJECTOR = REPO / "tests" / "data" / "upstream_golden" / "llava-tiny-pretrain" / PROJECTOR_FILE
PROJECTOR_SHAPES = {
    "model.mm_projector.0.weight": (64, 32), "model.mm_projector.0.bias": (64,),
    "model.mm_projector.2.weight": (64, 64), "model.mm_projector.2.bias": (64,),
}
STAGE1_KEYS = (
    "loss", "grad_norm", "learning_rate", "loss_caption", "loss_patch", "patch_beta", "patch_cosine",
    "patch_regions", "pad_regions_skipped", "pad_regions_outside", "pad_regions_fallback",
)

# The patch-aligned entry, recording per process every checkpoint file it writes (atomically, or
# as a config) into `$WRITES_LOG.rank<R>`.
RECORDING_ENTRY = """
import os, sys
import transformers
import llava.model.checkpoints as checkpoints
from llava.train.train import train
from patch_align.recipe import PatchAlignRecipe

LOG = f"{os.environ['WRITES_LOG']}.rank{os.environ['RANK']}"

def record(kind, path):
    with open(LOG, "a") as log:
        log.write(f"{kind} {os.path.relpath(path, sys.argv[sys.argv.index('--output_dir') + 1])}\\n")

atomic_write = checkpoints._atomic_write
def recording_atomic_write(path, write):
    record("atomic", path)
    atomic_write(path, write)
checkpoints._atomic_write = recording_atomic_write

save_config = transformers.PretrainedConfig.save_pretrained
def recording_save_config(self, save_directory, *args, **kwargs):
    record("config", os.path.join(save_directory, "config.json"))
    return save_config(self, save_directory, *args, **kwargs)
transformers.PretrainedConfig.save_pretrained = recording_save_config

train(PatchAlignRecipe(), sys.argv[1:])
"""


def stage2_flags(out: Path, **overrides) -> list[str]:
    """finetune.sh's flags (v1 template, pad, modality-grouped batches) on the fixture models."""
    flags = dict(
        version="v1", tune_mm_mlp_adapter=False, pretrain_mm_mlp_adapter=STAGE1_PROJECTOR,
        image_aspect_ratio="pad", group_by_modality_length=True, gradient_checkpointing=True,
        learning_rate=1e-3, max_steps=3,
    )
    flags.update(overrides)
    return stage1_flags(out, FIXTURES / "finetune.json", **flags)


def weight_difference(reference: dict, other: dict) -> float:
    assert reference.keys() == other.keys()
    for key, tensor in reference.items():
        assert other[key].shape == tensor.shape, key  # full tensors, not ZeRO-3 partitions
    return max(float((reference[k].float() - other[k].float()).abs().max()) for k in reference)


def stage2_pair(tmp_path_factory, name: str, **flags) -> tuple[Path, Path]:
    """(1 process × batch 4, 2 ranks × batch 2 under ZeRO-3) stage-2 runs with the same flags."""
    root = tmp_path_factory.mktemp(name)
    single, zero3 = root / "1x4", root / "zero3-2x2"
    assert_succeeded(launch(LLAVA_ENTRY, stage2_flags(single, **flags), launcher="python"))
    zero3_flags = stage2_flags(zero3, per_device_train_batch_size=2, deepspeed="scripts/zero3.json", **flags)
    assert_succeeded(launch(LLAVA_ENTRY, zero3_flags, processes=2, launcher="deepspeed"))
    return single, zero3


def test_full_finetune_under_zero3_on_two_ranks_equals_one_process(tmp_path_factory):
    single, zero3 = stage2_pair(tmp_path_factory, "full")
    logged = log_differences(single, zero3, ("loss", "grad_norm", "learning_rate"))
    assert max(logged.values()) <= RELATIVE_TOLERANCE, logged
    # step 1's loss is computed with the projector loaded from STAGE1_PROJECTOR on both sides
    reference, gathered = load_file(single / "model.safetensors"), load_file(zero3 / "model.safetensors")
    assert any(".vision_tower." in key for key in gathered) and any(".layers." in key for key in gathered)
    assert weight_difference(reference, gathered) <= WEIGHT_TOLERANCE


def test_lora_finetune_under_zero3_on_two_ranks_equals_one_process(tmp_path_factory):
    single, zero3 = stage2_pair(tmp_path_factory, "lora", lora_enable=True, lora_r=4, lora_dropout=0.0)
    logged = log_differences(single, zero3, ("loss", "grad_norm", "learning_rate"))
    assert max(logged.values()) <= RELATIVE_TOLERANCE, logged
    adapters = load_file(single / "adapter_model.safetensors"), load_file(zero3 / "adapter_model.safetensors")
    assert weight_difference(*adapters) <= WEIGHT_TOLERANCE
    non_lora = [torch.load(run / NON_LORA_FILE, weights_only=True) for run in (single, zero3)]
    assert set(non_lora[0]) == {f"base_model.model.{key}" for key in PROJECTOR_SHAPES}
    assert weight_difference(*non_lora) <= WEIGHT_TOLERANCE


CHECKPOINTED = dict(patch_beta_schedule="linear", save_strategy="steps", save_steps=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    return write_uneven_stage1_data(tmp_path_factory.mktemp("uneven"))


@pytest.fixture(scope="module")
def single_stage1(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stage1") / "1x4"
    assert_succeeded(launch(PATCH_ENTRY, stage1_flags(out, *data, **CHECKPOINTED), launcher="python"))
    return out


def zero_flags(out: Path, data, zero: str) -> list[str]:
    zero_config = f"scripts/{zero}.json"
    return stage1_flags(out, *data, per_device_train_batch_size=2, deepspeed=zero_config, **CHECKPOINTED)


@pytest.fixture(scope="module", params=["zero2", "zero3"])
def zero_stage1(request, data, tmp_path_factory) -> tuple[str, Path]:
    """A 2-rank stage-1 run under ZeRO-2 / ZeRO-3 with checkpoints, its file writes recorded."""
    root = tmp_path_factory.mktemp(request.param)
    entry = root / "recording_entry.py"
    entry.write_text(RECORDING_ENTRY)
    out = root / "run"
    run = launch((str(entry),), zero_flags(out, data, request.param), processes=2, launcher="deepspeed",
                 env={"WRITES_LOG": str(root / "writes")})
    assert_succeeded(run)
    return request.param, out


def recorded_writes(out: Path, rank: int) -> list[str]:
    log = out.parent / f"writes.rank{rank}"
    return log.read_text().splitlines() if log.exists() else []


def test_only_rank_zero_writes_checkpoint_files_and_every_write_is_atomic(zero_stage1):
    _, out = zero_stage1
    assert recorded_writes(out, 1) == []
    final = (("atomic", PROJECTOR_FILE), ("config", "config.json"))
    checkpoint = (*final, ("atomic", REGION_TOTALS_FILE))
    expected = [
        f"{kind} {folder}{name}"
        for folder, files in (("checkpoint-2/", checkpoint), ("checkpoint-4/", checkpoint), ("", final))
        for kind, name in files
    ]
    assert sorted(recorded_writes(out, 0)) == sorted(expected)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_projector_only_checkpoints_hold_the_full_gathered_weights(zero_stage1, single_stage1):
    _, out = zero_stage1
    for folder in ("checkpoint-2", "checkpoint-4", "."):
        saved = torch.load(out / folder / PROJECTOR_FILE, weights_only=True)
        reference = torch.load(single_stage1 / folder / PROJECTOR_FILE, weights_only=True)
        assert {key: tuple(value.shape) for key, value in saved.items()} == PROJECTOR_SHAPES
        assert weight_difference(reference, saved) <= WEIGHT_TOLERANCE, folder
    logged = log_differences(single_stage1, out, STAGE1_KEYS)
    assert max(logged.values()) <= RELATIVE_TOLERANCE, logged


def test_resuming_from_checkpoint_2_continues_as_the_uninterrupted_run(zero_stage1, data, tmp_path):
    zero, out = zero_stage1
    stopped = tmp_path / "stopped"  # the state of a run stopped right after checkpoint-2
    shutil.copytree(out / "checkpoint-2", stopped / "checkpoint-2")
    written = (stopped / "checkpoint-2" / PROJECTOR_FILE).stat().st_mtime_ns
    assert_succeeded(launch(PATCH_ENTRY, zero_flags(stopped, data, zero), processes=2, launcher="deepspeed"))
    assert (stopped / "checkpoint-2" / PROJECTOR_FILE).stat().st_mtime_ns == written  # not started over
    assert [e["step"] for e in step_logs(stopped)] == [1, 2, 3, 4]
    assert json.loads((stopped / "trainer_state.json").read_text())["global_step"] == 4
    differences = run_differences(out, stopped, STAGE1_KEYS)
    assert differences.pop("mm_projector") <= WEIGHT_TOLERANCE
    assert max(differences.values()) <= RELATIVE_TOLERANCE, differences
    assert [e["patch_beta"] for e in step_logs(stopped)] == pytest.approx([0.0, 1.25, 2.5, 3.75])


def test_a_two_rank_cpu_run_leaves_no_deepspeed_shared_memory_behind(data, tmp_path):
    # DeepSpeed's CPU comm op makes a 69 MB /dev/shm file per rank and never removes it
    def shm_files() -> set[str]:
        return {path.name for path in Path("/dev/shm").glob("deepspeed*")}

    before = shm_files()
    out = tmp_path / "run"
    flags = stage1_flags(out, *data, per_device_train_batch_size=2, deepspeed="scripts/zero2.json",
                         max_steps=1)
    assert_succeeded(launch(PATCH_ENTRY, flags, processes=2, launcher="deepspeed"))
    assert shm_files() - before == set()


def test_the_stage1_launch_script_trains_on_two_processes(tmp_path):
    # scripts/v1_5/pretrain_patch_align.sh as a user runs it, on 2 processes through DEEPSPEED_ARGS
    data, pad = write_uneven_stage1_data(tmp_path / "data")
    out = tmp_path / "run"
    env = run_env({
        "DEEPSPEED_ARGS": f"--num_gpus 2 --master_port {free_port()}", "OUTPUT_DIR": str(out),
        "MODEL_NAME_OR_PATH": str(FIXTURES / "llm"), "VISION_TOWER": str(FIXTURES / "clip"),
        "DATA_PATH": str(data), "IMAGE_FOLDER": str(FIXTURES / "images"), "PAD_PATH": str(pad),
        "PER_DEVICE_BATCH": "2",
    })
    cpu_flags = ["--bf16", "False", "--max_steps", "2", "--report_to", "none", "--model_max_length", "256",
                 "--dataloader_num_workers", "0"]
    run = run_process_group(["bash", "scripts/v1_5/pretrain_patch_align.sh", *cpu_flags], cwd=REPO, env=env)
    assert_succeeded(run)
    logs = step_logs(out)
    assert [entry["epoch"] for entry in logs] == pytest.approx([4 / 24, 8 / 24])  # 2 processes x 2 per step
    assert all("loss_patch" in entry for entry in logs)
    saved = torch.load(out / PROJECTOR_FILE, weights_only=True)
    assert {key: tuple(value.shape) for key, value in saved.items()} == PROJECTOR_SHAPES
