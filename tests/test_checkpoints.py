"""Specification of checkpoint kinds, side files and save/load round trips (`llava.model.checkpoints`).

Round trips use upstream's tiny fixtures (tests/data/upstream_golden): a LLaVA model is assembled
from the fixture LLM and CLIP tower, saved in each upstream layout and loaded back with
`load_pretrained_model`; the logits must not change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from llava.model.builder import load_pretrained_model
from llava.model.checkpoints import (
    PEFT_0_10_LORA_KEYS,
    CheckpointKind,
    atomic_torch_save,
    detect_checkpoint_kind,
    load_projector_file,
    make_adapter_config_portable,
    projector_state_dict,
    save_projector,
)
from llava.model.language_model.llava_llama import LlavaConfig

REPO = Path(__file__).resolve().parents[1]
PROJECTOR_KEYS = {f"model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}


def make_folder(root: Path, name: str, files: list[str]) -> Path:
    folder = root / name
    folder.mkdir()
    for file in files:
        (folder / file).write_text("{}")
    return folder


@pytest.mark.parametrize(
    ("folder_name", "files", "kind"),
    [
        # names that would mislead a name-based loader
        ("llava-v1.5-7b-lora", ["config.json", "model.safetensors"], CheckpointKind.FULL),
        ("llava-full", ["config.json", "adapter_config.json", "non_lora_trainables.bin"],
         CheckpointKind.LORA),
        ("llava-v1.5-7b", ["config.json", "mm_projector.bin"], CheckpointKind.PROJECTOR),
        ("run7", ["config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json"],
         CheckpointKind.FULL),
        ("run8", ["config.json", "pytorch_model.bin"], CheckpointKind.FULL),
    ],
)
def test_checkpoint_kind_follows_the_files_not_the_folder_name(tmp_path, folder_name, files, kind):
    assert detect_checkpoint_kind(make_folder(tmp_path, folder_name, files)) is kind


def test_folder_without_weights_is_not_a_checkpoint(tmp_path):
    folder = make_folder(tmp_path, "llava-empty", ["config.json"])
    with pytest.raises(ValueError, match=r"llava-empty is not a LLaVA checkpoint.*found \['config.json'\]"):
        detect_checkpoint_kind(folder)


def test_missing_folder_is_named_in_the_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        detect_checkpoint_kind(tmp_path / "nowhere")


@pytest.fixture(scope="module")
def fixtures(golden_dir: Path) -> Path:
    return golden_dir / "fixtures-437"


@pytest.fixture(scope="module")
def assembled(fixtures: Path):
    """(tokenizer, model): the fixture LLM with the CLIP tower and a fresh mlp2x_gelu projector."""
    from transformers import AutoTokenizer

    from llava.model import LlavaLlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(fixtures / "llm"))
    model = LlavaLlamaForCausalLM.from_pretrained(str(fixtures / "llm"), dtype=torch.float32)
    vision_args = SimpleNamespace(
        vision_tower=str(fixtures / "clip"), mm_vision_select_layer=-2, mm_vision_select_feature="patch",
        mm_patch_merge_type="flat", mm_projector_type="mlp2x_gelu", pretrain_mm_mlp_adapter=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model.get_model().initialize_vision_modules(vision_args)
    return tokenizer, model.eval()


@pytest.fixture(scope="module")
def probe(golden_dir: Path):
    """Prompt ids with one image token (161,) and its pixels (1, 3, 56, 56) from upstream's golden set."""
    case = torch.load(golden_dir / "infer_full.pt", weights_only=True)["cases"]["pad/wide_96x48"]
    return case["input_ids"][None], case["pixel_values"]


def logits_of(model, probe) -> torch.Tensor:
    ids, pixels = probe
    with torch.inference_mode():
        return model.eval()(input_ids=ids, images=pixels).logits


def test_projector_only_checkpoint_plus_base_round_trips(assembled, probe, fixtures, tmp_path):
    _, model = assembled
    stage1 = tmp_path / "stage1-output"
    save_projector(model, stage1)
    model.config.save_pretrained(stage1)
    assert detect_checkpoint_kind(stage1) is CheckpointKind.PROJECTOR
    _, loaded, _, _ = load_pretrained_model(str(stage1), str(fixtures / "llm"), "stage1-output", device="cpu")
    assert torch.equal(logits_of(loaded, probe), logits_of(model, probe))


def test_projector_only_checkpoint_without_a_base_is_an_error(assembled, tmp_path):
    _, model = assembled
    stage1 = tmp_path / "stage1"
    save_projector(model, stage1)
    model.config.save_pretrained(stage1)
    config_path = stage1 / "config.json"
    config_path.write_text(config_path.read_text().replace(model.config._name_or_path, "/no/such/base"))
    with pytest.raises(ValueError, match="needs the language model it was trained on"):
        load_pretrained_model(str(stage1), None, "stage1", device="cpu")


def test_full_checkpoint_round_trips(assembled, probe, tmp_path):
    tokenizer, model = assembled
    full = tmp_path / "run-full"
    model.save_pretrained(full)
    tokenizer.save_pretrained(full)
    assert detect_checkpoint_kind(full) is CheckpointKind.FULL
    loaded_tokenizer, loaded, processor, _ = load_pretrained_model(str(full), None, "run-full", device="cpu")
    assert processor is not None
    assert loaded_tokenizer("a red box").input_ids == tokenizer("a red box").input_ids
    assert torch.equal(logits_of(loaded, probe), logits_of(model, probe))


@pytest.fixture(scope="module")
def merged_lora(golden_dir: Path, fixtures: Path):
    """Upstream's LoRA checkpoint, merged into the fixture LLM by our loader."""
    return load_pretrained_model(
        str(golden_dir / "llava-v1.5-tiny-lora"), str(fixtures / "llm"), "llava-v1.5-tiny-lora", device="cpu"
    )


def test_lora_merged_model_saved_as_full_round_trips(merged_lora, probe, tmp_path):
    tokenizer, model, _, _ = merged_lora
    merged = tmp_path / "merged"
    model.save_pretrained(merged)
    tokenizer.save_pretrained(merged)
    assert not any("lora" in name for name in os.listdir(merged))
    _, loaded, _, _ = load_pretrained_model(str(merged), None, "merged", device="cpu")
    assert torch.equal(logits_of(loaded, probe), logits_of(model, probe))


@pytest.mark.slow
def test_merge_lora_weights_script_writes_an_equivalent_full_checkpoint(
    merged_lora, probe, golden_dir, fixtures, tmp_path
):
    script = REPO / "scripts" / "merge_lora_weights.py"
    out = tmp_path / "merged-by-script"
    run = subprocess.run(
        [sys.executable, str(script), "--model-path", str(golden_dir / "llava-v1.5-tiny-lora"),
         "--model-base", str(fixtures / "llm"), "--save-model-path", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert detect_checkpoint_kind(out) is CheckpointKind.FULL
    _, loaded, _, _ = load_pretrained_model(str(out), None, "merged-by-script", device="cpu")
    assert torch.allclose(logits_of(loaded, probe), logits_of(merged_lora[1], probe), atol=1e-6, rtol=0)


def test_projector_file_has_exactly_upstreams_key_names(assembled, tmp_path):
    _, model = assembled
    path = save_projector(model, tmp_path)
    assert path == tmp_path / "mm_projector.bin"
    state = torch.load(path, weights_only=True)
    assert set(state) == PROJECTOR_KEYS
    assert [tuple(state[f"model.mm_projector.{i}.weight"].shape) for i in (0, 2)] == [(64, 32), (64, 64)]


def test_projector_keys_lose_the_peft_prefix():
    class Wrapped(nn.Module):  # the module path PEFT gives: base_model.model.model.mm_projector
        def __init__(self):
            super().__init__()
            self.base_model = nn.Module()
            self.base_model.model = nn.Module()
            self.base_model.model.model = nn.Module()
            self.base_model.model.model.mm_projector = nn.Linear(2, 3)

    assert set(projector_state_dict(Wrapped())) == {"model.mm_projector.weight", "model.mm_projector.bias"}


def test_upstream_projector_file_loads_into_a_matching_projector(golden_dir):
    projector = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64))
    path = golden_dir / "llava-tiny-pretrain" / "mm_projector.bin"
    load_projector_file(projector, path)
    upstream = torch.load(path, weights_only=True)
    assert torch.equal(projector[2].weight, upstream["model.mm_projector.2.weight"])


def test_projector_file_of_another_type_fails_naming_the_file(golden_dir):
    linear = nn.Linear(32, 64)  # a `linear` projector, given an mlp2x_gelu file
    path = golden_dir / "llava-tiny-pretrain" / "mm_projector.bin"
    with pytest.raises(ValueError, match=r"mm_projector\.bin does not fit this projector"):
        load_projector_file(linear, path)


def test_file_without_projector_keys_fails(tmp_path):
    path = tmp_path / "not_a_projector.bin"
    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ValueError, match="no 'mm_projector.' keys"):
        load_projector_file(nn.Linear(2, 2), path)


def test_atomic_save_leaves_only_the_target_file(tmp_path):
    atomic_torch_save({"x": torch.ones(2)}, tmp_path / "sub" / "state.bin")
    assert os.listdir(tmp_path / "sub") == ["state.bin"]
    assert torch.equal(torch.load(tmp_path / "sub" / "state.bin", weights_only=True)["x"], torch.ones(2))


def test_failed_atomic_save_keeps_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "state.bin"
    atomic_torch_save({"x": torch.zeros(1)}, target)
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises for a local function
        atomic_torch_save({"f": lambda: None}, target)
    assert os.listdir(tmp_path) == ["state.bin"]
    assert torch.equal(torch.load(target, weights_only=True)["x"], torch.zeros(1))


# What peft 0.21 writes beyond peft 0.10's fields for a plain LoRA (issue 18, case 7).
PEFT_0_21_ONLY_KEYS = {
    "alora_invocation_tokens", "arrow_config", "corda_config", "ensure_weight_tying", "eva_config",
    "exclude_modules", "kasa_config", "lora_bias", "lora_ga_config", "monteclora_config", "peft_version",
    "qalora_group_size", "target_parameters", "trainable_token_indices", "use_bdlora", "use_qalora",
    "velora_config",
}


def saved_lora_config(folder: Path, **overrides):
    """A LoraConfig as `apply_lora` builds it, saved by peft into `folder`; returns the config."""
    from peft import LoraConfig

    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.05, task_type="CAUSAL_LM",
        **overrides,
    )
    config.save_pretrained(folder)
    return config


def test_adapter_config_drops_exactly_the_newer_peft_keys_that_hold_defaults(tmp_path):
    saved_lora_config(tmp_path)
    written = set(json.loads((tmp_path / "adapter_config.json").read_text()))
    assert written - PEFT_0_10_LORA_KEYS == PEFT_0_21_ONLY_KEYS  # what peft 0.10 rejects today
    assert make_adapter_config_portable(tmp_path) == {}
    portable = json.loads((tmp_path / "adapter_config.json").read_text())
    assert set(portable) == written - PEFT_0_21_ONLY_KEYS
    assert portable["r"] == 4 and portable["lora_alpha"] == 8 and portable["lora_dropout"] == 0.05


def test_portable_adapter_config_loads_back_as_the_same_config_in_current_peft(tmp_path):
    from peft import PeftConfig

    original = saved_lora_config(tmp_path)
    make_adapter_config_portable(tmp_path)
    assert PeftConfig.from_pretrained(str(tmp_path)).to_dict() == original.to_dict()


def test_non_default_value_peft_0_10_cannot_represent_is_kept_and_reported(tmp_path, caplog):
    saved_lora_config(tmp_path, exclude_modules=["lm_head"])
    with caplog.at_level("WARNING", logger="llava.model.checkpoints"):
        assert make_adapter_config_portable(tmp_path) == {"exclude_modules": ["lm_head"]}
    assert json.loads((tmp_path / "adapter_config.json").read_text())["exclude_modules"] == ["lm_head"]
    assert "keeps ['exclude_modules']: peft 0.10 (upstream LLaVA) cannot load this adapter" in caplog.text


def test_adapter_config_of_another_peft_method_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3", "target_modules": []}))
    with pytest.raises(ValueError, match=r"adapter_config\.json: not a LoRA adapter config \(peft_type 'IA3"):
        make_adapter_config_portable(tmp_path)


TINY_LLAMA = {
    "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
    "num_attention_heads": 2,
}


@pytest.mark.parametrize(
    ("rope_parameters", "rope_scaling"),
    [
        ({"rope_type": "default", "rope_theta": 500000.0}, None),  # Llama-3
        ({"rope_type": "linear", "rope_theta": 1e6, "factor": 4}, {"type": "linear", "factor": 4.0}),
        # not representable in 4.37: written so that 4.37 refuses it rather than using plain RoPE
        (
            {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
             "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
            {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 256},
        ),
    ],
)
def test_config_json_carries_the_rope_keys_transformers_4_reads(tmp_path, rope_parameters, rope_scaling):
    config = LlavaConfig(**TINY_LLAMA, max_position_embeddings=512, rope_parameters=dict(rope_parameters))
    config.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["rope_theta"] == rope_parameters["rope_theta"]
    assert written["rope_scaling"] == rope_scaling
    assert LlavaConfig.from_pretrained(str(tmp_path)).rope_parameters == config.rope_parameters


def test_transformers_4_config_with_linear_rope_scaling_keeps_it_through_a_save(tmp_path):
    # the way vicuna-7b-v1.5-16k's config.json (transformers 4.x) states it
    old = {"model_type": "llava_llama", **TINY_LLAMA, "rope_theta": 10000.0,
           "rope_scaling": {"factor": 4.0, "type": "linear"}}
    (tmp_path / "config.json").write_text(json.dumps(old))
    loaded = LlavaConfig.from_pretrained(str(tmp_path))
    resaved = tmp_path / "resaved"
    loaded.save_pretrained(resaved)
    written = json.loads((resaved / "config.json").read_text())
    assert (written["rope_theta"], written["rope_scaling"]) == (10000.0, {"type": "linear", "factor": 4.0})
    assert LlavaConfig.from_pretrained(str(resaved)).rope_parameters == loaded.rope_parameters


def test_rope_theta_edited_without_rope_parameters_is_an_error(tmp_path):
    rope = {"rope_type": "default", "rope_theta": 500000.0}
    LlavaConfig(**TINY_LLAMA, rope_parameters=rope).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "rope_theta": 10000.0}))
    with pytest.raises(ValueError, match=r"top-level \{'rope_theta': 10000.0\} \(read by transformers 4.x\)"):
        LlavaConfig.from_pretrained(str(tmp_path))


def test_full_checkpoint_of_a_non_default_rope_llm_writes_rope_theta_and_keeps_its_logits(tmp_path):
    from llava.model import LlavaLlamaForCausalLM

    config = LlavaConfig(**TINY_LLAMA, rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlavaLlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["rope_theta"] == 500000.0
    loaded = LlavaLlamaForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    ids = torch.arange(1, 40)[None]
    with torch.inference_mode():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
