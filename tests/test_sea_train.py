"""Specification of SEA inside the plugin's training: flags, data, λ schedule, the loss term, end-to-end runs.

The label folder used here is planted, not made by CLIP: each patch of a fixture image is labelled
with the colour words of the PAD regions covering it, scored by the covered fraction (the same
geometry as training). Colours are visible to the projector, so a working SEA loss must fall.
"""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from patch_align.geometry import mask_to_patch_coverage, processor_transform
from patch_align.pad import decode_region_mask, load_pad_index
from patch_align.sea.store import (
    INDEX_FILE,
    SETTINGS_FILE,
    VOCAB_FILE,
    build_index,
    shard_name,
    write_json,
    write_shard,
)
from patch_align.sea.vocab import write_word_list

FIXTURES = Path(__file__).parent / "data" / "upstream_golden" / "fixtures-437"
WORDS = ["box", "red", "green", "blue", "yellow", "purple"]
TOP_N = 3
SEA_LOG_KEYS = ("loss_sea", "sea_lambda", "sea_temperature", "sea_pairs", "sea_accuracy")


def write_colour_labels(out_dir: Path, aspect: str = "square") -> Path:
    """A finished SEA label folder for fixtures-437: colour words per patch, score = coverage."""
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor.from_pretrained(str(FIXTURES / "clip"))
    ids, word_rows, score_rows = [], [], []
    for record in load_pad_index(FIXTURES / "pad.json").values():
        scores = np.zeros((16, len(WORDS)))
        transform = processor_transform(record.width, record.height, aspect, processor)
        for region in record.regions:
            mask = decode_region_mask(region, record.height, record.width)
            coverage = mask_to_patch_coverage(mask, transform, patch_size=14).reshape(-1)
            scores[:, WORDS.index(region.label.split()[0])] += coverage
        order = np.argsort(-scores, axis=1, kind="stable")[:, :TOP_N]
        best = np.take_along_axis(scores, order, axis=1)
        word_rows.append(torch.from_numpy(np.where(best > 0, order, -1)).to(torch.int32))
        score_rows.append(torch.from_numpy(best).float())
        ids.append(record.id)
    out_dir.mkdir(parents=True)
    settings = {"grid": [4, 4], "image_aspect_ratio": aspect, "top_n": TOP_N, "vocab_size": len(WORDS),
                "sign": "planted"}
    write_word_list(WORDS, out_dir / VOCAB_FILE)
    write_json(out_dir / SETTINGS_FILE, settings)
    write_shard(out_dir / shard_name(0), ids, torch.stack(word_rows), torch.stack(score_rows), {})
    write_json(out_dir / INDEX_FILE, build_index(out_dir, settings, 1))
    return out_dir


@pytest.fixture(scope="module")
def labels_dir(tmp_path_factory):
    return write_colour_labels(tmp_path_factory.mktemp("sea") / "labels")


def stage1_argv(output_dir, labels, objective="sea", **flags):
    """LLaVA-1.5 stage-1 flags on the fixture models plus the plugin's; `flags` override."""
    base = {
        "model_name_or_path": FIXTURES / "llm",
        "version": "plain",
        "data_path": FIXTURES / "pretrain.json",
        "image_folder": FIXTURES / "images",
        "align_objective": objective,
        "sea_labels": labels,
        "vision_tower": FIXTURES / "clip",
        "mm_projector_type": "mlp2x_gelu",
        "tune_mm_mlp_adapter": True,
        "mm_vision_select_layer": -2,
        "output_dir": output_dir,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "model_max_length": 256,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "seed": 0,
    }
    if objective != "sea":
        base["pad_path"] = FIXTURES / "pad.json"
    base.update(flags)
    return [part for key, value in base.items() for part in (f"--{key}", str(value))]


def build_trainer(argv):
    """What `llava.train.train.train(PatchAlignRecipe())` builds, stopping before `trainer.train()`."""
    from llava.train.train import build_trainer as build_llava_trainer
    from patch_align.recipe import PatchAlignRecipe

    return build_llava_trainer(PatchAlignRecipe(), argv)[0]


# --- flags and schedule -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("constant", [0.0, 0.0, 2.0, 2.0]),
        ("linear", [0.0, 0.0, 0.5, 1.0]),
        ("cosine", [0.0, 0.0, 1.0 - math.cos(math.pi / 4), 1.0]),
    ],
)
def test_lambda_at_steps_follows_its_schedule_after_the_warmup(kind, expected):
    from patch_align.schedules import LambdaSchedule, lambda_at_step

    schedule = LambdaSchedule(kind, 2.0, warmup_steps=2)  # 6 steps: 2 at 0, then a 4-step ramp
    assert [lambda_at_step(step, 6, schedule) for step in (0, 1, 3, 4)] == pytest.approx(expected)


def test_lambda_default_is_a_constant_one(tmp_path):
    from patch_align.recipe import PatchAlignArguments
    from patch_align.schedules import lambda_at_step

    schedule = PatchAlignArguments(align_objective="sea", sea_labels=str(tmp_path)).lambda_schedule()
    assert [lambda_at_step(s, 10, schedule) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"align_objective": "sea"}, "--sea_labels is required"),
        ({"align_objective": "both", "sea_labels": "x"}, "--pad_path is required"),
        ({}, "--pad_path is required"),  # the default objective is patch_cosine, as before
        ({"align_objective": "clip", "pad_path": "p"}, "--align_objective must be one of"),
        ({"align_objective": "sea", "sea_labels": "x", "sea_window": 0}, "--sea_window"),
        ({"align_objective": "sea", "sea_labels": "x", "sea_temperature": 0.001}, "temperature"),
        ({"align_objective": "sea", "sea_labels": "x", "sea_loss_weight": -1.0}, "--sea_loss_weight"),
        ({"align_objective": "sea", "sea_labels": "x", "sea_lambda_schedule": "up"}, "--sea_lambda_schedule"),
    ],
)
def test_flags_that_cannot_work_are_refused_at_parse_time(flags, message):
    from patch_align.recipe import PatchAlignArguments

    with pytest.raises(ValueError, match=message):
        PatchAlignArguments(**flags)


# --- the loss term -------------------------------------------------------------------------------


class DigitTokenizer:
    """Tokenizes the word "k" as the single token k."""

    def __call__(self, text, add_special_tokens):
        return SimpleNamespace(input_ids=[int(text)])


def test_a_batch_without_pairs_adds_an_exact_zero_with_a_valid_backward():
    from patch_align.objectives.sea import sea_pair_loss
    from patch_align.sea import SeaTemperature, VocabularyTargets

    features = torch.randn(2, 16, 8, requires_grad=True)
    temperature = SeaTemperature()
    empty = torch.zeros(0, dtype=torch.long)
    targets = VocabularyTargets(DigitTokenizer(), ["1"])
    result = sea_pair_loss(features, empty, empty, empty, targets, torch.nn.Embedding(4, 8), temperature())
    assert result.loss_sum.item() == 0.0 and result.pairs == 0 and result.correct == 0.0
    result.loss_sum.backward()
    assert torch.equal(features.grad, torch.zeros_like(features))
    assert temperature.log_temperature.grad.item() == 0.0


def test_pair_loss_is_the_info_nce_of_the_gathered_tokens_times_the_pair_count():
    from patch_align.objectives.sea import sea_pair_loss
    from patch_align.sea import VocabularyTargets, sea_info_nce

    features = torch.randn(2, 17, 8)  # cls_patch: token 0 is CLS
    table = torch.nn.Embedding(5, 8)
    targets = VocabularyTargets(DigitTokenizer(), ["1", "2", "3"])  # word id w is token w + 1
    batch, patch, words = torch.tensor([0, 1, 1]), torch.tensor([0, 5, 15]), torch.tensor([2, 0, 1])
    tau = torch.tensor(0.1)
    result = sea_pair_loss(features, batch, patch, words, targets, table, tau, token_offset=1)
    expected = sea_info_nce(features[batch, patch + 1], table.weight[words + 1].detach(), tau)
    assert result.pairs == 3
    torch.testing.assert_close(result.loss_sum, 3 * expected.loss)
    assert result.correct == pytest.approx(3 * expected.accuracy)


def test_step_pairs_are_a_pure_function_of_seed_step_and_process():
    from patch_align.objectives.sea import SEA_PAIR_KEYS, sample_batch_pairs, step_generator

    word_ids = torch.randint(0, 6, (2, 16, 3))
    scores = torch.rand(2, 16, 3)

    def pairs(seed, step, process):
        batch = {"sea_word_ids": word_ids, "sea_scores": scores}
        sample_batch_pairs(batch, (4, 4), 2, step_generator(seed, step, process))
        return json.dumps([batch[k].tolist() for k in SEA_PAIR_KEYS])

    assert pairs(0, 7, 0) == pairs(0, 7, 0)
    assert len({pairs(0, 7, 0), pairs(0, 8, 0), pairs(0, 7, 1), pairs(1, 7, 0)}) == 4


# --- data and trainer ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sea_trainer(labels_dir, tmp_path_factory):
    return build_trainer(stage1_argv(tmp_path_factory.mktemp("run"), labels_dir))


def test_items_carry_their_samples_labels_and_batches_stack_them(sea_trainer, labels_dir):
    from patch_align.sea import SeaLabels

    dataset = sea_trainer.train_dataset
    item = dataset[3]
    word_ids, scores = SeaLabels(labels_dir).labels(dataset.sample_id(3))
    assert torch.equal(item["sea_word_ids"], word_ids.long()) and torch.equal(item["sea_scores"], scores)
    assert "region_masks" not in item  # sea alone reads no PAD file
    batch = next(iter(sea_trainer.get_train_dataloader()))
    assert batch["sea_word_ids"].shape == batch["sea_scores"].shape == (4, 16, TOP_N)


def test_sea_gradients_reach_only_the_projector_and_the_temperature(sea_trainer):
    from patch_align.objectives.sea import step_generator

    trainer, model = sea_trainer, sea_trainer.model
    batch = next(iter(trainer.get_train_dataloader()))
    pairs = trainer._sample_pairs(batch, step_generator(0, 0, 0))
    trainer._pairs_in_step = torch.tensor(pairs)
    trainer.weight_callback.sea_lambda = 1.0
    model.train()
    model.zero_grad()
    num_items = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
    trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert pairs > 0
    assert with_grad == trainable == {n for n, _ in model.named_parameters()
                                      if "mm_projector" in n or "sea_temperature" in n}
    assert "model.sea_temperature.log_temperature" not in trainer.get_decay_parameter_names(model)


def test_labels_made_for_another_geometry_are_refused(tmp_path):
    from patch_align.data import SeaLabelError

    labels = write_colour_labels(tmp_path / "pad-labels", aspect="pad")
    with pytest.raises(SeaLabelError, match="--image-aspect-ratio pad"):
        build_trainer(stage1_argv(tmp_path / "run", labels))


def test_sea_needs_a_stage_one_run(tmp_path, labels_dir):
    with pytest.raises(ValueError, match="--tune_mm_mlp_adapter True"):
        build_trainer(stage1_argv(tmp_path / "run", labels_dir, tune_mm_mlp_adapter=False))


# --- end to end ------------------------------------------------------------------------------------


def read_logs(output_dir, key="loss_sea"):
    state = json.loads((Path(output_dir) / "trainer_state.json").read_text())
    return [d for d in state["log_history"] if key in d]


def quarter_means(values):
    k = max(1, len(values) // 4)
    return sum(values[:k]) / k, sum(values[-k:]) / k


def assert_projector_loads_for_finetuning(out):
    from llava.train.arguments import ModelArguments
    from llava.train.train import load_language_model

    saved = torch.load(out / "mm_projector.bin", weights_only=True)
    assert saved and all("mm_projector" in key for key in saved)  # no temperature in the projector file
    model_args = ModelArguments(
        model_name_or_path=str(FIXTURES / "llm"), version="v1", vision_tower=str(FIXTURES / "clip"),
        mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
        pretrain_mm_mlp_adapter=str(out / "mm_projector.bin"),
    )
    training_args = SimpleNamespace(
        cache_dir=None, bf16=False, fp16=False, bits=16, gradient_checkpointing=False
    )
    model = load_language_model(model_args, training_args, None)
    model.get_model().initialize_vision_modules(model_args)
    loaded = model.get_model().mm_projector.state_dict()
    for key, value in saved.items():
        torch.testing.assert_close(loaded[key.split("mm_projector.", 1)[1]], value)


@pytest.mark.slow
def test_sea_run_lowers_loss_sea_logs_every_key_and_saves_a_loadable_projector(tmp_path, labels_dir):
    from patch_align.train import main

    out = tmp_path / "run"
    main(stage1_argv(out, labels_dir, max_steps=24, lr_scheduler_type="cosine", warmup_ratio=0.03))
    logs = read_logs(out)
    assert len(logs) == 24 and all(key in d for d in logs for key in (*SEA_LOG_KEYS, "loss_caption"))
    assert not any("loss_patch" in d for d in logs)
    first, last = quarter_means([d["loss_sea"] for d in logs])
    assert last < 0.8 * first
    assert all(d["sea_lambda"] == 1.0 and 0 < d["sea_pairs"] <= len(WORDS) for d in logs)
    assert all(0.0 <= d["sea_accuracy"] <= 1.0 for d in logs)
    assert logs[0]["sea_temperature"] != logs[-1]["sea_temperature"]  # learnable by default
    config = json.loads((out / "config.json").read_text())
    assert config["patch_align_objective"] == "sea" and config["patch_align_sea_labels"] == str(labels_dir)
    assert config["patch_align_sea_loss_weight"] == 1.0 and config["patch_align_sea_window"] == 2
    assert config["patch_align_sea_label_settings"]["sign"] == "planted"
    saved = torch.load(out / "sea_temperature.bin", weights_only=True)
    assert math.exp(saved["log_temperature"].item()) == pytest.approx(logs[-1]["sea_temperature"], rel=1e-6)
    assert_projector_loads_for_finetuning(out)


@pytest.mark.slow
def test_both_objectives_run_together_and_each_loss_falls(tmp_path, labels_dir):
    from patch_align.train import main

    out = tmp_path / "run"
    main(stage1_argv(out, labels_dir, objective="both", max_steps=24, sea_lambda_schedule="linear",
                     sea_loss_weight=2.0, sea_learnable_temperature=False))
    logs = read_logs(out)
    assert len(logs) == 24 and all("loss_patch" in d and "patch_beta" in d for d in logs)
    for key in ("loss_sea", "loss_patch"):
        first, last = quarter_means([d[key] for d in logs])
        assert last < 0.8 * first, key
    assert [d["sea_lambda"] for d in logs] == pytest.approx([2.0 * s / 24 for s in range(24)])
    assert [d["patch_beta"] for d in logs] == pytest.approx([5.0 * s / 24 for s in range(24)])
    assert all(d["sea_temperature"] == pytest.approx(0.07) for d in logs)  # fixed by flag
    for d in logs:
        expected = d["loss_caption"] + d["patch_beta"] * d["loss_patch"] + d["sea_lambda"] * d["loss_sea"]
        assert d["loss"] == pytest.approx(expected, rel=1e-3)
    assert_projector_loads_for_finetuning(out)


@pytest.mark.slow
def test_a_resumed_sea_run_repeats_the_pairs_losses_and_temperature(tmp_path, labels_dir):
    import shutil

    from patch_align.train import main

    flags = {"max_steps": 6, "save_strategy": "steps", "save_steps": 3, "sea_lambda_schedule": "linear"}
    main(stage1_argv(tmp_path / "full", labels_dir, **flags))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-3", resumed / "checkpoint-3")
    main(stage1_argv(resumed, labels_dir, **flags))  # finds checkpoint-3 and resumes from it
    full, after = read_logs(tmp_path / "full"), read_logs(resumed)
    assert [d["step"] for d in after] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(full[3:], after[3:], strict=True):
        assert b["sea_lambda"] == a["sea_lambda"] == pytest.approx((a["step"] - 1) / 6)
        assert b["sea_pairs"] == a["sea_pairs"]
        for key in ("loss_sea", "sea_temperature", "sea_accuracy"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
