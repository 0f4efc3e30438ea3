"""Training runs launched the way LLaVA-1.5's scripts launch them: subprocesses with upstream's flags.

Runs are few and tiny (the `tiny_setup` LLM and tower, 24 images + 2 text-only samples) and shared
through module-scoped fixtures: one stage-1 pretrain and one finetune fed by its projector (both
record the full model state at the start and the end of training), one LoRA finetune, and resumed
runs of the pretrain and the LoRA finetune.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_runs import assert_succeeded, free_port, run_process_group

from llava.model.checkpoints import PROJECTOR_FILE

REPO = Path(__file__).resolve().parents[1]
PROJECTOR_KEYS = {f"model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}

# train_mem.py's entry, plus a callback (through the recipe extension point) that saves the whole
# model state when training begins and ends, so the test can see what the run changed.
STATE_RECORDING_ENTRY = """
import sys, torch
from transformers import TrainerCallback
from llava.train.recipe import TrainRecipe
from llava.train.train import train

class RecordState(TrainerCallback):
    def _dump(self, args, model, name):
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save(state, f"{args.output_dir}/{name}")
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._dump(args, model, "state_begin.pt")
    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._dump(args, model, "state_end.pt")

class RecordingRecipe(TrainRecipe):
    def make_callbacks(self, ctx):
        return [RecordState()]

train(recipe=RecordingRecipe(), argv=sys.argv[1:], attn_implementation="flash_attention_2")
"""


def upstream_flags(setup, output_dir: Path) -> list[str]:
    """The flags of the LLaVA-1.5 launch scripts (no bf16/tf32 on CPU), for the tiny setup."""
    return [
        "--output_dir", str(output_dir), "--report_to", "none", "--dataloader_num_workers", "0",
        "--per_device_eval_batch_size", "4", "--evaluation_strategy", "no",
        "--gradient_accumulation_steps", "1", "--num_train_epochs", "1",
        "--logging_steps", "1", "--model_max_length", "256", "--lazy_preprocess", "True",
        "--gradient_checkpointing", "True", "--warmup_ratio", "0.03", "--lr_scheduler_type", "cosine",
        "--weight_decay", "0.", "--vision_tower", str(setup.clip), "--mm_projector_type", "mlp2x_gelu",
        "--mm_vision_select_layer", "-2", "--mm_use_im_start_end", "False",
        "--mm_use_im_patch_token", "False", "--image_folder", str(setup.image_folder),
    ]


def pretrain_flags(setup, output_dir: Path) -> list[str]:
    # 24 image samples at batch 4: 6 steps; checkpoints after steps 3 and 6
    return [
        "--model_name_or_path", str(setup.llm), "--version", "plain", "--data_path", str(setup.pretrain_json),
        "--tune_mm_mlp_adapter", "True", "--learning_rate", "1e-3", "--per_device_train_batch_size", "4",
        "--save_strategy", "steps", "--save_steps", "3", *upstream_flags(setup, output_dir),
    ]


def run_training(entry: list[str], flags: list[str], launcher: list[str] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_DISABLED": "true", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [*launcher, *entry, *flags] if launcher else [sys.executable, *entry, *flags]
    return run_process_group(cmd, cwd=REPO, env=env)


def losses(output_dir: Path) -> list[float]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


@pytest.fixture(scope="module")
def pretrain_dir(tiny_setup, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stage1") / "pretrain"
    assert_succeeded(run_training(["-c", STATE_RECORDING_ENTRY], pretrain_flags(tiny_setup, out)))
    return out


@pytest.fixture(scope="module")
def finetune_dir(tiny_setup, pretrain_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stage2") / "run-ft"  # no "llava" in the name
    flags = [
        "--model_name_or_path", str(tiny_setup.llm), "--version", "v1",
        "--data_path", str(tiny_setup.finetune_json),
        "--pretrain_mm_mlp_adapter", str(pretrain_dir / PROJECTOR_FILE), "--image_aspect_ratio", "pad",
        "--group_by_modality_length", "True", "--learning_rate", "2e-5", "--per_device_train_batch_size", "2",
        "--max_steps", "2", "--save_strategy", "no", *upstream_flags(tiny_setup, out),
    ]
    assert_succeeded(run_training(["-c", STATE_RECORDING_ENTRY], flags))
    return out


@pytest.fixture(scope="module")
def lora_dir(tiny_setup, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "run-lora"
    assert_succeeded(run_training(["-m", "llava.train.train"], lora_flags(tiny_setup, out)))
    return out


def lora_flags(setup, output_dir: Path) -> list[str]:
    # 2 steps, a checkpoint after each
    return [
        "--model_name_or_path", str(setup.llm), "--version", "v1",
        "--data_path", str(setup.finetune_json), "--lora_enable", "True", "--lora_r", "4",
        "--learning_rate", "2e-4", "--per_device_train_batch_size", "2", "--max_steps", "2",
        "--save_strategy", "steps", "--save_steps", "1", *upstream_flags(setup, output_dir),
    ]


def base_llm_state(setup) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(setup.llm / "model.safetensors"))


def test_pretrain_trains_only_the_projector(pretrain_dir):
    begin = torch.load(pretrain_dir / "state_begin.pt", weights_only=True)
    end = torch.load(pretrain_dir / "state_end.pt", weights_only=True)
    assert set(begin) == set(end)
    assert any(".vision_tower." in k for k in begin) and any(".layers." in k for k in begin)
    changed = {k for k in begin if not torch.equal(begin[k], end[k])}
    assert changed == PROJECTOR_KEYS


def test_pretrain_lowers_the_loss(pretrain_dir):
    history = losses(pretrain_dir)
    assert len(history) == 6
    assert history[-1] < history[0]


def test_pretrain_writes_upstreams_projector_file_and_config_only(pretrain_dir):
    state = torch.load(pretrain_dir / PROJECTOR_FILE, weights_only=True)
    assert set(state) == PROJECTOR_KEYS
    final = torch.load(pretrain_dir / "state_end.pt", weights_only=True)
    for key, tensor in state.items():
        assert torch.equal(tensor, final[key]), key
    config = json.loads((pretrain_dir / "config.json").read_text())
    assert config["model_type"] == "llava_llama"
    assert config["mm_projector_type"] == "mlp2x_gelu"
    assert config["tune_mm_mlp_adapter"] is True
    assert config["mm_conv_template"] == "plain"  # the --version it was trained with
    assert not list(pretrain_dir.glob("*.safetensors"))
    assert sorted(p.name for p in pretrain_dir.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    checkpoint_state = torch.load(pretrain_dir / "checkpoint-3" / PROJECTOR_FILE, weights_only=True)
    assert set(checkpoint_state) == PROJECTOR_KEYS


def test_finetune_from_the_pretrained_projector_loads_from_a_neutral_folder(finetune_dir, tiny_setup):
    from PIL import Image

    from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import get_model_name_from_path, process_images, tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    config = json.loads((finetune_dir / "config.json").read_text())
    assert config["image_aspect_ratio"] == "pad" and config["mm_vision_tower"] == str(tiny_setup.clip)
    assert config["mm_conv_template"] == "v1"
    tokenizer, model, processor, _ = load_pretrained_model(
        str(finetune_dir), None, get_model_name_from_path(str(finetune_dir)), device_map="cpu", device="cpu"
    )
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\nWhat is in the picture?")
    conv.append_message(conv.roles[1], None)
    ids = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
    image = Image.open(tiny_setup.image_folder / "img000.png").convert("RGB")
    pixels = process_images([image], processor, model.config)
    with torch.inference_mode():
        out = model(input_ids=ids, labels=ids.clamp(min=0), images=pixels, image_sizes=[image.size])
    patches = model.get_vision_tower().num_patches
    assert out.logits.shape == (1, ids.shape[1] - 1 + patches, len(tokenizer))
    assert torch.isfinite(out.loss)


def test_finetune_starts_from_the_stage1_projector_and_the_base_llm(finetune_dir, pretrain_dir, tiny_setup):
    begin = torch.load(finetune_dir / "state_begin.pt", weights_only=True)
    stage1 = torch.load(pretrain_dir / PROJECTOR_FILE, weights_only=True)
    for key, tensor in stage1.items():
        assert torch.equal(begin[key], tensor), key
    for key, tensor in base_llm_state(tiny_setup).items():
        assert torch.equal(begin[key], tensor), key


def test_finetune_trains_the_llm_and_projector_but_not_the_tower(finetune_dir):
    from safetensors.torch import load_file

    begin = torch.load(finetune_dir / "state_begin.pt", weights_only=True)
    end = torch.load(finetune_dir / "state_end.pt", weights_only=True)
    changed = {k for k in begin if not torch.equal(begin[k], end[k])}
    llm = {k for k in begin if ".vision_tower." not in k and "mm_projector" not in k}
    # every LLM tensor gets a gradient, and at lr 2e-5 two Adam steps move each one
    assert changed == llm | PROJECTOR_KEYS
    saved = load_file(str(finetune_dir / "model.safetensors"))
    for key in llm | PROJECTOR_KEYS:
        assert torch.equal(saved[key], end[key]), key


def assert_readable_by_peft_0_10(adapter_dir: Path) -> None:
    from llava.model.checkpoints import ADAPTER_CONFIG, PEFT_0_10_LORA_KEYS

    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    assert set(config) <= PEFT_0_10_LORA_KEYS, sorted(set(config) - PEFT_0_10_LORA_KEYS)
    assert (config["r"], config["lora_alpha"]) == (4, 16)


def test_lora_adapter_configs_are_readable_by_upstreams_peft(lora_dir):
    assert sorted(p.name for p in lora_dir.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    for folder in (lora_dir, lora_dir / "checkpoint-1", lora_dir / "checkpoint-2"):
        assert_readable_by_peft_0_10(folder)


def test_lora_finetune_writes_only_the_projector_as_non_lora_trainables_and_loads(tiny_setup, lora_dir):
    from llava.model.builder import load_pretrained_model
    from llava.model.checkpoints import NON_LORA_FILE

    non_lora = torch.load(lora_dir / NON_LORA_FILE, weights_only=True)
    assert set(non_lora) == {f"base_model.model.{key}" for key in PROJECTOR_KEYS}  # model.mm_projector.*
    _, model, _, _ = load_pretrained_model(str(lora_dir), str(tiny_setup.llm), "run-lora", device="cpu")
    loaded = dict(model.named_parameters())
    for key, tensor in non_lora.items():
        assert torch.equal(loaded[key.removeprefix("base_model.model.")], tensor), key
    # the merged LoRA changed the LLM
    base = base_llm_state(tiny_setup)
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(loaded[q_proj], base[q_proj])


@pytest.mark.slow
def test_resumed_lora_finetune_ends_where_the_uninterrupted_run_ended(lora_dir, tiny_setup, tmp_path):
    from safetensors.torch import load_file

    # the state of a run stopped right after checkpoint-1: its trimmed adapter config is read back
    stopped = tmp_path / "run-lora"
    shutil.copytree(lora_dir / "checkpoint-1", stopped / "checkpoint-1")
    assert_readable_by_peft_0_10(stopped / "checkpoint-1")
    checkpoint_file = stopped / "checkpoint-1" / "adapter_model.safetensors"
    written = checkpoint_file.stat().st_mtime_ns
    assert_succeeded(run_training(["-m", "llava.train.train"], lora_flags(tiny_setup, stopped)))
    assert checkpoint_file.stat().st_mtime_ns == written  # resumed, not started over
    assert losses(stopped)[1:] == pytest.approx(losses(lora_dir)[1:], abs=1e-6)
    resumed = load_file(str(stopped / "adapter_model.safetensors"))
    uninterrupted = load_file(str(lora_dir / "adapter_model.safetensors"))
    assert resumed.keys() == uninterrupted.keys()
    for key, tensor in uninterrupted.items():
        assert torch.allclose(resumed[key], tensor, atol=1e-7, rtol=0), key


@pytest.mark.slow
def test_resumed_pretrain_ends_where_the_uninterrupted_run_ended(pretrain_dir, tiny_setup, tmp_path):
    # the state of a run stopped right after checkpoint-3: later checkpoints and final files absent
    stopped = tmp_path / "pretrain"
    shutil.copytree(pretrain_dir / "checkpoint-3", stopped / "checkpoint-3")
    checkpoint_file = stopped / "checkpoint-3" / PROJECTOR_FILE
    written = checkpoint_file.stat().st_mtime_ns
    run = run_training(["llava/train/train_mem.py"], pretrain_flags(tiny_setup, stopped))
    assert_succeeded(run)
    # a run that started over would have rewritten checkpoint-3 at step 3
    assert checkpoint_file.stat().st_mtime_ns == written
    resumed_history = json.loads((stopped / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in resumed_history if "loss" in e] == [1, 2, 3, 4, 5, 6]
    assert losses(stopped)[3:] == pytest.approx(losses(pretrain_dir)[3:], abs=1e-6)
    resumed = torch.load(stopped / PROJECTOR_FILE, weights_only=True)
    uninterrupted = torch.load(pretrain_dir / PROJECTOR_FILE, weights_only=True)
    for key in PROJECTOR_KEYS:
        assert torch.allclose(resumed[key], uninterrupted[key], atol=1e-7, rtol=0), key


@pytest.mark.slow
def test_label_mismatch_error_names_the_sample(tiny_setup, tmp_path):
    records = json.loads(tiny_setup.finetune_json.read_text())[:1]
    records.append({"id": "empty-answer-17", "conversations": [
        {"from": "human", "value": "What colour is the sky?"}, {"from": "gpt", "value": ""},
    ]})
    data = tmp_path / "bad.json"
    data.write_text(json.dumps(records))
    flags = [
        "--model_name_or_path", str(tiny_setup.llm), "--version", "v1", "--data_path", str(data),
        "--learning_rate", "2e-5", "--per_device_train_batch_size", "2", "--max_steps", "1",
        "--save_strategy", "no", "--label_mismatch", "error", *upstream_flags(tiny_setup, tmp_path / "out"),
    ]
    run = run_training(["-m", "llava.train.train"], flags)
    assert run.returncode != 0
    assert "LabelAlignmentError" in run.stderr
    assert "sample empty-answer-17: no token is supervised" in run.stderr


@pytest.mark.slow
@pytest.mark.parametrize("zero_config", ["scripts/zero2.json", "scripts/zero3.json"])
def test_pretrain_under_the_deepspeed_launcher_completes(zero_config, tiny_setup, tmp_path):
    deepspeed = Path(sys.executable).parent / "deepspeed"
    out = tmp_path / "pretrain-zero"
    flags = [*pretrain_flags(tiny_setup, out), "--max_steps", "2", "--deepspeed", zero_config]
    launcher = [str(deepspeed), "--num_gpus", "1", "--master_port", str(free_port())]
    run = run_training(["llava/train/train_mem.py"], flags, launcher=launcher)
    assert_succeeded(run)
    assert set(torch.load(out / PROJECTOR_FILE, weights_only=True)) == PROJECTOR_KEYS
    assert len(losses(out)) == 2
