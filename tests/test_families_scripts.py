"""scripts/qwen2/: the Qwen2.5 + SigLIP launchers call the right entry with flags that parse.

`deepspeed` is replaced by a stub on PATH that records its argv; the recorded flags are parsed with
the entry's own dataclasses (without `--deepspeed`, which would start torch.distributed).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def launched_argv(script: str, tmp_path: Path, **env) -> list[str]:
    stub_dir = tmp_path / "bin"
    stub_dir.mkdir()
    record = tmp_path / "argv.txt"
    stub = stub_dir / "deepspeed"
    stub.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {record}\n')
    stub.chmod(0o755)
    run_env = {**os.environ, "PATH": f"{stub_dir}:{os.environ['PATH']}", **env}
    run = subprocess.run(["bash", script, "--report_to", "none"], cwd=REPO, env=run_env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return record.read_text().splitlines()


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(f"--{name}") + 1]


def parse(argv: list[str], extra_arguments: tuple = ()):
    from transformers import HfArgumentParser

    from llava.train.arguments import DataArguments, ModelArguments, TrainingArguments

    i = argv.index("--deepspeed")
    flags = argv[1:i] + argv[i + 2:]
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments, *extra_arguments))
    return parser.parse_args_into_dataclasses(args=flags)


@pytest.mark.parametrize(
    ("script", "entry", "zero", "version"),
    [
        ("scripts/qwen2/pretrain_patch_align.sh", "patch_align/train_mem.py", "./scripts/zero2.json",
         "plain"),
        ("scripts/qwen2/finetune.sh", "llava/train/train_mem.py", "./scripts/zero3.json", "qwen_2"),
    ],
)
def test_qwen2_siglip_launchers_pass_the_backbones_and_their_template(tmp_path, script, entry, zero, version):
    from patch_align.recipe import PatchAlignRecipe

    # the plugin checks at parse time that the PAD file exists
    pad = REPO / "tests" / "data" / "upstream_golden" / "fixtures-437" / "pad.json"
    argv = launched_argv(script, tmp_path, DEEPSPEED_ARGS="--num_gpus 2", PAD_PATH=str(pad))
    assert argv[:3] == ["--num_gpus", "2", entry]
    argv = argv[2:]
    assert flag(argv, "deepspeed") == zero
    assert flag(argv, "model_name_or_path") == "Qwen/Qwen2.5-7B-Instruct"
    assert flag(argv, "vision_tower") == "google/siglip-so400m-patch14-384"
    extra = PatchAlignRecipe().extra_arguments if entry.startswith("patch_align") else ()
    model_args, data_args, training_args, *_ = parse(argv, extra)
    assert model_args.version == version
    assert (model_args.mm_vision_select_layer, model_args.mm_vision_select_feature) == (-2, "patch")
    assert data_args.image_aspect_ratio == ("square" if version == "plain" else "pad")
    assert model_args.tune_mm_mlp_adapter is (version == "plain")
    assert training_args.report_to == []


def test_the_finetune_template_can_be_switched_to_qwen25s_system_prompt(tmp_path):
    argv = launched_argv("scripts/qwen2/finetune.sh", tmp_path, VERSION="qwen_2_5")
    assert flag(argv, "version") == "qwen_2_5"
