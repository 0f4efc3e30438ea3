"""Specification of `patch-align bench`: named shapes, FLOP counts, each command at the tiny shape."""

import json
import re
from dataclasses import asdict

import pytest

from patch_align.bench.shapes import (
    SHAPES,
    BenchShape,
    LlmShape,
    VisionShape,
    generation_flops,
    shape_named,
    stage_one_flops,
)


def test_7b_shape_is_vicuna_7b_with_clip_l_336_and_the_llava_projector():
    shape = SHAPES["7b"]
    assert asdict(shape.llm) == {
        "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
    }
    assert asdict(shape.vision) == {
        "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
        "image_size": 336, "patch_size": 14,
    }
    assert shape.projector_type == "mlp2x_gelu"  # 1024 -> 4096 -> 4096
    assert shape.vision.num_patches == 576


def test_13b_shape_is_vicuna_13b_with_the_same_tower():
    llm = SHAPES["13b"].llm
    assert (llm.hidden_size, llm.intermediate_size, llm.num_hidden_layers, llm.num_attention_heads) == (
        5120, 13824, 40, 40)
    assert SHAPES["13b"].vision == SHAPES["7b"].vision


def test_llm_layers_truncates_only_the_llm_and_refuses_out_of_range():
    shape = shape_named("7b", 2)
    assert shape.llm.num_hidden_layers == 2 and shape.llm.hidden_size == 4096
    assert shape.vision == SHAPES["7b"].vision
    with pytest.raises(ValueError, match=r"--llm-layers must be in \[1, 32\] for shape 7b, got 33"):
        shape_named("7b", 33)
    with pytest.raises(ValueError, match="--shape '70b': choose one of"):
        shape_named("70b")


# a shape small enough to count by hand: D=8, F=16, L=2, V=10, C=4, F_v=8, L_v=1, 28 px / 14 px patches
HAND = BenchShape(
    "hand",
    LlmShape(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, vocab_size=10, max_position_embeddings=64),
    VisionShape(hidden_size=4, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
                image_size=28, patch_size=14),
)


def test_stage_one_flops_equal_a_hand_count():
    flops = stage_one_flops(HAND, text_tokens=3)  # 4 patches + 3 text tokens: T = 7
    # tower, N = 5 with CLS: q,k,v,o 4·2·5·4·4 = 640; MLP 2·2·5·4·8 = 640; scores+values 2·2·5·5·4 = 400;
    # patch embedding 2·4·(3·14·14)·4 = 18816
    assert flops.tower_forward == 640 + 640 + 400 + 18816
    # projector on 4 tokens: 2·4·(4·8 + 8·8) = 768; backward = weight grads 768 + layer-2 input grad 2·4·64
    assert (flops.projector_forward, flops.projector_backward) == (768, 768 + 512)
    # per LLM layer, T = 7, D = 8, D_kv = 4: q,o 2·2·7·8·8 = 1792; k,v 2·2·7·8·4 = 896;
    # gate,up,down 3·2·7·8·16 = 5376; scores+values 2·2·7·7·8 = 1568 (backward twice that); head 2·7·8·10
    assert flops.llm_forward == 2 * (1792 + 896 + 5376 + 1568) + 1120
    assert flops.llm_backward == 2 * (1792 + 896 + 5376 + 2 * 1568) + 1120
    assert flops.total == 20496 + 768 + 1280 + 20384 + 23520


def test_generation_flops_count_the_prompt_once_then_one_token_per_step():
    # T = 3 prompt tokens, 2 new: the prompt's forward (whose logits give token 1) + one step over 4 positions
    per_token = 2 * 2 * 8 * 8 + 2 * 2 * 8 * 4 + 3 * 2 * 8 * 16  # 1280
    prompt = 2 * (3 * per_token + 4 * 3 * 3 * 8) + 3 * 160
    step = 2 * (per_token + 4 * 4 * 8) + 160
    assert generation_flops(HAND.llm, prompt_tokens=3, new_tokens=2) == prompt + step


@pytest.fixture(scope="module")
def tiny_train_result(tmp_path_factory):
    from patch_align.cli import main

    root = tmp_path_factory.mktemp("bench")
    out = root / "train.json"
    argv = ["bench", "train", "--shape", "tiny", "--work", str(root / "work"), "--batch-size", "2",
            "--steps", "2", "--rounds", "2", "--warmup", "1", "--out", str(out), "--device", "cpu",
            "--clock", "process"]
    assert main(argv) == 0
    return json.loads(out.read_text()), root


def test_bench_train_times_every_method_and_reports_ratio_mfu_and_flops(tiny_train_result):
    result, _ = tiny_train_result
    methods = [m["method"] for m in result["methods"]]
    assert methods == ["caption", "patch_cosine", "sea"]
    shape = shape_named("tiny")
    text_tokens = result["tokens_per_sample"] - shape.vision.num_patches
    assert text_tokens == 24 + 2  # the caption's 24 tokens, BOS and the plain template's newline
    expected = stage_one_flops(shape, text_tokens)
    assert result["flops_by_part"] == asdict(expected)
    for m in result["methods"]:
        assert m["step"]["count"] == 2 and m["step"]["minimum"] <= m["step"]["median"] <= m["step"]["maximum"]
        assert m["data"]["count"] == 2 and m["data"]["median"] > 0  # batch fetch, timed apart
        assert m["samples_per_s"] == pytest.approx(2 / m["step"]["median"])
        assert m["tokens_per_s"] == pytest.approx(m["samples_per_s"] * result["tokens_per_sample"])
        assert m["mfu"] == pytest.approx(expected.total * m["samples_per_s"] / (result["peak_tflops"] * 1e12))
        assert m["peak_memory"] > 0
    assert result["methods"][0]["ratio_to_caption"] == 1.0
    # CPU: a measured matmul on the run's clock, not a spec sheet
    assert result["peak_source"] == "measured 1024x1024 matmul on this CPU, process clock (approximate)"
    assert result["settings"]["clock"] == "process"


def test_bench_train_data_has_four_pad_regions_per_image_at_the_tower_size(tiny_train_result):
    _, root = tiny_train_result
    pad = json.loads((root / "work" / "tiny" / "data-4" / "pad.json").read_text())
    assert pad[0] == {"pad_version": 1}
    assert [len(r["regions"]) for r in pad[1:]] == [4, 4, 4, 4]
    assert {(r["width"], r["height"]) for r in pad[1:]} == {(56, 56)}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--methods", "caption,lora"], "--methods caption,lora: choose from"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--dtype", "int8"], "--dtype 'int8'"),
        (["--shape", "7b", "--llm-layers", "40"], r"--llm-layers must be in \[1, 32\]"),
        (["--deepspeed", "missing.json"], "--deepspeed missing.json: no such file"),
        (["--deepspeed", "scripts/zero2.json"], "--deepspeed times one method in one round per process"),
        (["--clock", "cpu"], r"--clock 'cpu': choose one of \('wall', 'process'\)"),
    ],
)
def test_bench_train_refuses_bad_flags_before_building_anything(tmp_path, capsys, flags, message):
    from patch_align.cli import main

    assert main(["bench", "train", "--work", str(tmp_path / "work"), *flags]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "work").exists()


def test_flop_formula_equals_torch_flop_counter_on_a_real_stage_one_step(tmp_path):
    """The formula against what torch counts in one caption-only forward + backward of the tiny LLaVA
    (eager attention everywhere: torch's counter does not see CPU SDPA kernels)."""
    from torch.utils.flop_counter import FlopCounterMode

    from llava.train.train import build_trainer
    from patch_align.bench.synthetic import build_bench_folders
    from patch_align.bench.train import TrainBenchOptions, training_argv

    shape = shape_named("tiny")
    options = TrainBenchOptions(shape=shape, work=str(tmp_path), batch_size=1, steps=1, warmup=0, rounds=1,
                                device="cpu")
    folders = build_bench_folders(tmp_path, shape, samples=1)
    trainer, _ = build_trainer(None, training_argv(options, folders, str(tmp_path / "out")), "eager")
    model = trainer.model
    model.get_vision_tower().vision_tower.set_attn_implementation("eager")
    batch = next(iter(trainer.get_train_dataloader()))
    model.train()
    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    text_tokens = batch["input_ids"].shape[1] - 1
    assert counter.get_total_flops() == stage_one_flops(shape, text_tokens).total


def test_bench_generate_compares_batched_with_one_at_a_time_on_the_same_prompts(tmp_path):
    from patch_align.bench.shapes import projector_flops, tower_forward_flops
    from patch_align.cli import main

    out = tmp_path / "generate.json"
    argv = ["bench", "generate", "--work", str(tmp_path / "work"), "--prompts", "3", "--batch-size", "3",
            "--new-tokens", "4", "--rounds", "1", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    batched, single = result["modes"]
    assert (batched["mode"], batched["batch_size"], single["mode"], single["batch_size"]) == (
        "batched", 3, "one at a time", 1)
    assert result["speedup"] == pytest.approx(single["seconds"]["median"] / batched["seconds"]["median"])
    assert result["same_tokens"] is True  # left re-padding: a batch answers as one prompt at a time does
    shape = shape_named("tiny")
    assert result["flops_per_prompt"] == (tower_forward_flops(shape.vision) + projector_flops(shape)[0]
                                          + generation_flops(shape.llm, result["prompt_tokens"], 4))
    assert result["prompt_tokens"] > shape.vision.num_patches


def test_bench_pad_runs_the_pipeline_and_splits_its_time_by_stage(tmp_path):
    from patch_align.cli import main

    out = tmp_path / "pad.json"
    argv = ["bench", "pad", "--models", "tiny", "--work", str(tmp_path / "work"), "--images", "3",
            "--batch-size", "2", "--image-width", "64", "--image-height", "48", "--device", "cpu",
            "--out", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 3
    assert 0 < result["regions"] <= 3 * 4  # random boxes at threshold 0, at most --max-regions 4 each
    assert result["images_per_s"] == pytest.approx(3 / result["seconds"])
    stages = result["stage_seconds"]
    assert set(stages) == {"tagger", "detector", "segmenter", "other"}
    assert min(stages["detector"], stages["segmenter"]) > 0
    assert sum(stages.values()) == pytest.approx(result["seconds"] / 3)


def test_bench_pad_refuses_unknown_models_before_building_any(tmp_path, capsys):
    from patch_align.cli import main

    assert main(["bench", "pad", "--models", "huge", "--work", str(tmp_path / "work")]) == 2
    assert "--models 'huge': choose one of ('tiny', 'full')" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


@pytest.mark.slow  # a subprocess that builds the tiny setup and trains two methods: ~25 s
def test_step_time_script_reports_the_benchmarks_ratio(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "scripts" / "tiny" / "measure_patch_align_step_time.py"
    done = subprocess.run([sys.executable, str(script), "3", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    last_line = done.stdout.splitlines()[-1]  # libraries log to stdout before it
    assert re.fullmatch(r"batch 4, 3 steps each: caption-only [\d.]+ ms \(batch fetch [\d.]+ ms\), "
                        r"patch-aligned [\d.]+ ms \(batch fetch [\d.]+ ms\), ratio [\d.]+", last_line)


@pytest.mark.slow  # a subprocess that starts DeepSpeed: ~30 s on 2 CPU cores
def test_bench_train_with_deepspeed_times_one_method_through_the_engine(tmp_path):
    """One process, ZeRO-2 on CPU: the environment a `deepspeed`/`torchrun` launch would set."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    out = tmp_path / "ds.json"
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29533", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "patch_align.cli", "bench", "train", "--work", str(tmp_path / "work"),
            "--device", "cpu", "--steps", "2", "--rounds", "1", "--warmup", "1", "--methods", "patch_cosine",
            "--deepspeed", str(root / "scripts" / "zero2.json"), "--out", str(out)]
    done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["settings"]["deepspeed"].endswith("zero2.json")
    assert [m["method"] for m in result["methods"]] == ["patch_cosine"]
    assert result["methods"][0]["step"]["count"] == 2
