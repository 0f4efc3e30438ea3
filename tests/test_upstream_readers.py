"""Upstream LLaVA's own libraries read what our training writes (issue 18, cases 7 and 8).

Upstream LLaVA 1.2.2 runs on transformers 4.37.2 and peft 0.10.0. A side virtualenv with those two
(and this venv's torch version) reads the outputs of real training runs (stage 1, full finetune,
LoRA, each with a `checkpoint-1/`) on an LLM whose rope_theta is 500000 (Llama-3's): every
config.json through `LlamaConfig.from_pretrained`, every adapter_config.json through
`LoraConfig(**json)`, and the full and LoRA checkpoints' logits against ours.

The side venv is built once per version set (about 40 s, from PyPI; pip takes torch from the
machine's wheel when it has one) under $PATCH_ALIGN_UPSTREAM_VENV or the temp folder, then reused.
A failed build fails the test: CI must run it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from test_train_runs import assert_succeeded, run_training, upstream_flags

from llava.model.checkpoints import ADAPTER_CONFIG, PEFT_0_10_LORA_KEYS, PROJECTOR_FILE

pytestmark = pytest.mark.slow

UPSTREAM_PINS = ("transformers==4.37.2", "peft==0.10.0")
TORCH_PIN = f"torch=={torch.__version__.split('+')[0]}"  # this venv's: peft 0.10 imports torch
ROPE_THETA = 500000.0

# Runs in the side venv: argv[1] is a job file naming what to read; results go where it says.
READER = r"""
import dataclasses, json, sys
import peft, torch, transformers
from peft import LoraConfig, PeftModel
from transformers import LlamaConfig, LlamaForCausalLM

job = json.loads(open(sys.argv[1]).read())
plain = lambda d: {k: sorted(v) if isinstance(v, set) else v for k, v in d.items()}
result = {
    "versions": [transformers.__version__, peft.__version__],
    "lora_fields": sorted(f.name for f in dataclasses.fields(LoraConfig)),
    "configs": {f: LlamaConfig.from_pretrained(f).to_dict() for f in job["configs"]},
    "adapters": {},
}
for folder in job["adapters"]:
    try:
        written = json.load(open(folder + "/adapter_config.json"))
        result["adapters"][folder] = plain(LoraConfig(**written).to_dict())
    except TypeError as err:
        result["adapters"][folder] = {"error": str(err)}
ids = torch.tensor([job["ids"]])
load = lambda folder, **kw: LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32, **kw).eval()
with torch.inference_mode():
    logits = {
        "full": load(job["full"])(ids).logits,
        # what 4.37 gives a config.json without rope_theta: the test must be able to tell it apart
        "full_rope_10000": load(job["full"], rope_theta=10000.0)(ids).logits,
    }
    # upstream's LoRA branch: the base weights with the LoRA folder's config.json, then PEFT's adapter
    base = load(job["base"], config=LlamaConfig.from_pretrained(job["lora"]))
    logits["lora"] = PeftModel.from_pretrained(base, job["lora"]).eval()(input_ids=ids).logits
torch.save(logits, job["logits_out"])
open(job["json_out"], "w").write(json.dumps(result, default=str))
"""


def side_venv_dir() -> Path:
    identity = " ".join((platform.python_version(), TORCH_PIN, *UPSTREAM_PINS))
    key = hashlib.sha256(identity.encode()).hexdigest()
    parent = Path(os.environ.get("PATCH_ALIGN_UPSTREAM_VENV") or tempfile.gettempdir())
    return parent / f"patch-align-upstream-{key[:12]}"


@pytest.fixture(scope="module")
def upstream_python() -> Path:
    """The Python of a venv with upstream LLaVA's transformers and peft (built on first use)."""
    root = side_venv_dir()
    python = root / "bin" / "python"
    marker = root / ".built"
    if not marker.exists():  # written last: an interrupted build is redone
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120)
        install = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             TORCH_PIN, *UPSTREAM_PINS],
            capture_output=True, text=True, timeout=1200,
        )
        assert install.returncode == 0, f"building {root} failed:\n{install.stderr[-3000:]}"
        marker.write_text(" ".join(UPSTREAM_PINS) + "\n")
    return python


@pytest.fixture(scope="module")
def rope_llm(tiny_setup, tmp_path_factory) -> Path:
    """The tiny LLM (same weights and tokenizer) with rope_theta 500000, saved by transformers 5."""
    from transformers import LlamaForCausalLM

    out = tmp_path_factory.mktemp("rope") / "llm"
    shutil.copytree(tiny_setup.llm, out)
    model = LlamaForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    model.config.rope_parameters = {"rope_type": "default", "rope_theta": ROPE_THETA}
    model.save_pretrained(str(out))
    assert "rope_theta" not in json.loads((out / "config.json").read_text())  # only in rope_parameters
    return out


@pytest.fixture(scope="module")
def runs(tiny_setup, rope_llm, tmp_path_factory) -> dict[str, Path]:
    """Output folders of one-step stage-1, full and LoRA runs on `rope_llm`, each with checkpoint-1/."""
    root = tmp_path_factory.mktemp("upstream-readers")
    one_step = ["--max_steps", "1", "--save_strategy", "steps", "--save_steps", "1"]
    model = ["--model_name_or_path", str(rope_llm)]
    finetune = [*model, "--version", "v1", "--data_path", str(tiny_setup.finetune_json),
                "--per_device_train_batch_size", "2", *one_step]
    flags = {
        "stage1": [*model, "--version", "plain", "--data_path", str(tiny_setup.pretrain_json),
                   "--tune_mm_mlp_adapter", "True", "--learning_rate", "1e-3",
                   "--per_device_train_batch_size", "4", *one_step],
        "full": [*finetune, "--learning_rate", "1e-3"],
        "lora": [*finetune, "--lora_enable", "True", "--lora_r", "4", "--learning_rate", "1e-2"],
    }
    outputs = {}
    for name, run_flags in flags.items():
        outputs[name] = root / name
        if name == "full":  # stage 2 from the stage-1 projector, as LLaVA-1.5 does
            run_flags = [*run_flags, "--pretrain_mm_mlp_adapter", str(outputs["stage1"] / PROJECTOR_FILE)]
        # no warmup: the one step must change the weights (LoRA's B starts at zero)
        run_flags = [*run_flags, *upstream_flags(tiny_setup, outputs[name]), "--warmup_ratio", "0"]
        assert_succeeded(run_training(["-m", "llava.train.train"], run_flags))
    return outputs


@pytest.fixture(scope="module")
def probe_ids(rope_llm) -> list[int]:
    """A text-only prompt of 40-odd tokens: long enough that rope_theta changes the logits."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(rope_llm))
    ids = tokenizer("a red box and a blue box. " * 6).input_ids
    assert len(ids) > 30
    return ids


def written_folders(runs: dict[str, Path], file_name: str) -> list[str]:
    """Every folder of the runs (outputs and checkpoints) holding `file_name`."""
    return [str(p.parent) for run in runs.values() for p in sorted(run.glob(f"**/{file_name}"))]


def relative(folders, runs: dict[str, Path]) -> list[str]:
    root = next(iter(runs.values())).parent
    return sorted(str(Path(f).relative_to(root)) for f in folders)


@pytest.fixture(scope="module")
def upstream_read(upstream_python, runs, rope_llm, probe_ids, tmp_path_factory) -> tuple[dict, dict]:
    """(what 4.37 / peft 0.10 read, their logits) for every file the runs wrote, plus two controls."""
    from peft import LoraConfig

    work = tmp_path_factory.mktemp("upstream-read")
    raw_peft_021 = work / "raw-peft-0.21"  # an adapter config as peft 0.21 writes it, untrimmed
    LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM").save_pretrained(str(raw_peft_021))
    job = {
        "configs": [*written_folders(runs, "config.json"), str(rope_llm)],
        "adapters": [*written_folders(runs, ADAPTER_CONFIG), str(raw_peft_021)],
        "ids": probe_ids, "full": str(runs["full"]), "base": str(rope_llm), "lora": str(runs["lora"]),
        "logits_out": str(work / "logits.pt"), "json_out": str(work / "read.json"),
    }
    (work / "job.json").write_text(json.dumps(job))
    (work / "reader.py").write_text(READER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    run = subprocess.run(
        [str(upstream_python), str(work / "reader.py"), str(work / "job.json")],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((work / "read.json").read_text()), torch.load(work / "logits.pt", weights_only=True)


def test_the_side_venv_holds_upstreams_versions_and_their_lora_fields(upstream_read):
    read, _ = upstream_read
    assert read["versions"] == ["4.37.2", "0.10.0"]
    assert set(read["lora_fields"]) == PEFT_0_10_LORA_KEYS


def test_every_config_json_we_write_gives_transformers_4_the_llms_rope_theta(upstream_read, runs, rope_llm):
    read, _ = upstream_read
    ours = written_folders(runs, "config.json")
    assert relative(ours, runs) == ["full", "full/checkpoint-1", "lora", "stage1", "stage1/checkpoint-1"]
    for folder in ours:
        assert (read["configs"][folder]["rope_theta"], read["configs"][folder]["rope_scaling"]) == (
            ROPE_THETA, None,
        ), folder
    # control: the LLM's own config.json, as transformers 5 writes it, makes 4.37 fall back to 10000
    assert read["configs"][str(rope_llm)]["rope_theta"] == 10000.0


def test_transformers_4_and_5_read_our_config_json_alike(upstream_read, runs):
    from llava.model.language_model.llava_llama import LlavaConfig

    read, _ = upstream_read
    for folder in written_folders(runs, "config.json"):
        written = json.loads((Path(folder) / "config.json").read_text())
        seen_by_437 = read["configs"][folder]
        differing = {
            key: (value, seen_by_437[key]) for key, value in written.items()
            # model_type is the reading class's (upstream's own LlavaConfig says llava_llama)
            if key not in ("transformers_version", "model_type") and seen_by_437.get(key, value) != value
        }
        assert differing == {}, folder
        assert LlavaConfig.from_pretrained(folder).rope_parameters == {
            "rope_type": "default", "rope_theta": ROPE_THETA,
        }, folder


def test_every_adapter_config_we_write_loads_in_peft_0_10_as_written(upstream_read, runs):
    read, _ = upstream_read
    ours = written_folders(runs, ADAPTER_CONFIG)
    assert relative(ours, runs) == ["lora", "lora/checkpoint-1"]
    for folder in ours:
        written = json.loads((Path(folder) / ADAPTER_CONFIG).read_text())
        seen_by_010 = read["adapters"][folder]
        assert "error" not in seen_by_010, seen_by_010
        written["target_modules"] = sorted(written["target_modules"])
        assert {key: seen_by_010[key] for key in written} == written, folder
    # control: the file as peft 0.21 writes it is what upstream could not load
    (raw,) = (folder for folder in read["adapters"] if folder not in ours)
    assert "unexpected keyword argument" in read["adapters"][raw]["error"]


def test_upstreams_libraries_compute_our_logits_from_the_full_and_lora_checkpoints(
    upstream_read, runs, rope_llm, probe_ids
):
    from transformers import LlamaForCausalLM

    from llava.model.builder import load_pretrained_model

    _, upstream = upstream_read
    ids = torch.tensor([probe_ids])
    _, full, _, _ = load_pretrained_model(str(runs["full"]), None, "full", device="cpu")
    _, lora, _, _ = load_pretrained_model(str(runs["lora"]), str(rope_llm), "lora", device="cpu")
    base = LlamaForCausalLM.from_pretrained(str(rope_llm), dtype=torch.float32)
    with torch.inference_mode():
        ours = {"full": full(input_ids=ids).logits, "lora": lora(input_ids=ids).logits}
        base_logits = base.eval()(input_ids=ids).logits
    tolerance = 1e-5  # measured: 0 (full) and 3e-7 (LoRA, merged here, unmerged in peft 0.10)
    for name in ("full", "lora"):
        assert torch.allclose(upstream[name], ours[name], atol=tolerance, rtol=0), name
    # controls, 100 tolerances away: 4.37 with rope_theta 10000 (measured 4e-3), and the base LLM
    # without the LoRA adapter (measured 0.5)
    assert (upstream["full_rope_10000"] - ours["full"]).abs().max() > 100 * tolerance
    assert (ours["lora"] - base_logits).abs().max() > 100 * tolerance
