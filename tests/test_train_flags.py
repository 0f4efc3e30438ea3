"""Specification of the training flags: every flag is honoured or refused when parsed, never ignored.

A value this code base cannot honour (a merge type it does not implement, k-bit training, a
behaviour transformers 5 removed) is a `ValueError` naming the flag and why, raised while the
flags are parsed, before any tokenizer or model loads.
"""

import os

import pytest
from transformers import HfArgumentParser

from llava.train.arguments import UNSUPPORTED_VALUES, DataArguments, ModelArguments, TrainingArguments


def parse(*argv: str):
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    return parser.parse_args_into_dataclasses(args=["--output_dir", "unused", *argv])


def test_the_llava_1_5_pretrain_flags_still_parse():
    model_args, data_args, training_args = parse(
        "--version", "plain", "--mm_projector_type", "mlp2x_gelu", "--tune_mm_mlp_adapter", "True",
        "--mm_vision_select_layer", "-2", "--mm_use_im_start_end", "False",
        "--mm_use_im_patch_token", "False",
        "--evaluation_strategy", "no", "--lazy_preprocess", "True", "--group_by_modality_length", "True",
        "--lora_enable", "True", "--lora_r", "128", "--mm_projector_lr", "2e-5",
    )
    assert model_args.mm_projector_type == "mlp2x_gelu" and model_args.mm_patch_merge_type == "flat"
    assert training_args.eval_strategy == "no" and training_args.group_by_modality_length
    assert training_args.bits == 16 and training_args.lora_r == 128


@pytest.mark.parametrize("merge", ["spatial_unpad", "spatial", "unpad"])
def test_patch_merge_types_other_than_flat_are_refused(merge):
    with pytest.raises(ValueError, match=f"--mm_patch_merge_type '{merge}' is not supported: only 'flat'"):
        parse("--mm_patch_merge_type", merge)


@pytest.mark.parametrize(
    ("projector", "message"),
    [
        ("mlp2x_relu", "unknown mm_projector_type 'mlp2x_relu': use linear, mlp<N>x_gelu or identity"),
        ("mlp0x_gelu", "mm_projector_type 'mlp0x_gelu': depth must be >= 1"),
    ],
)
def test_unbuildable_projector_types_are_refused(projector, message):
    with pytest.raises(ValueError, match=message):
        parse("--mm_projector_type", projector)


def test_every_buildable_projector_type_is_accepted():
    for projector in ("linear", "identity", "mlp3x_gelu"):
        assert parse("--mm_projector_type", projector)[0].mm_projector_type == projector


def test_unknown_select_feature_is_refused():
    with pytest.raises(ValueError, match="--mm_vision_select_feature must be one of .*got 'cls'"):
        parse("--mm_vision_select_feature", "cls")


@pytest.mark.parametrize("bits", ["4", "8", "32"])
def test_k_bit_training_is_refused_with_the_reason(bits):
    with pytest.raises(ValueError, match=f"--bits {bits} is not supported: only 16. k-bit \\(QLoRA\\)"):
        parse("--bits", bits)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("mpt_attn_impl", "torch"),
        ("double_quant", "False"),
        ("quant_type", "fp4"),
        ("lora_weight_path", "lora.bin"),
        ("group_by_length", "True"),
        ("overwrite_output_dir", "True"),
        ("save_safetensors", "False"),
    ],
)
def test_values_that_would_be_ignored_are_refused_and_defaults_accepted(flag, value):
    with pytest.raises(ValueError, match=f"--{flag} {value} is not supported: "):
        parse(f"--{flag}", value)
    default = next(f.default for f in TrainingArguments.__dataclass_fields__.values() if f.name == flag)
    assert getattr(parse(f"--{flag}", str(default))[2], flag) == default


def test_every_refused_value_is_tested():
    assert set(UNSUPPORTED_VALUES) == {
        "mpt_attn_impl", "double_quant", "quant_type", "lora_weight_path", "group_by_length",
        "overwrite_output_dir", "save_safetensors",
    }


def test_unknown_lora_bias_is_refused():
    with pytest.raises(ValueError, match="--lora_bias must be one of \\('none', 'all', 'lora_only'\\)"):
        parse("--lora_bias", "some")


def test_logging_dir_becomes_tensorboards_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "")  # recorded, so the teardown restores it
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR")
    parse("--logging_dir", str(tmp_path / "tb"))
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "tb")


def test_logging_dir_contradicting_the_environment_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(ValueError, match="--logging_dir .*tb contradicts TENSORBOARD_LOGGING_DIR="):
        parse("--logging_dir", str(tmp_path / "tb"))
