"""Specification of patch-aligned training: the trainer's loss, accumulation, logging, entry point, resume."""

import json
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "data" / "upstream_golden" / "fixtures-437"


def stage1_argv(output_dir, data_path=FIXTURES / "pretrain.json", **flags):
    """The LLaVA-1.5 stage-1 flags on the fixture models, plus the plugin's; `flags` override
    (a None value drops the flag)."""
    base = {
        "model_name_or_path": FIXTURES / "llm",
        "version": "plain",
        "data_path": data_path,
        "image_folder": FIXTURES / "images",
        "pad_path": FIXTURES / "pad.json",
        "vision_tower": FIXTURES / "clip",
        "mm_projector_type": "mlp2x_gelu",
        "tune_mm_mlp_adapter": True,
        "mm_vision_select_layer": -2,
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
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
    base.update(flags)
    return [part for key, value in base.items() if value is not None for part in (f"--{key}", str(value))]


def build_trainer(argv, callbacks=()):
    """What `llava.train.train.train(PatchAlignRecipe())` builds, stopping before `trainer.train()`."""
    from llava.train.train import build_trainer as build_llava_trainer
    from patch_align.recipe import PatchAlignRecipe

    trainer, _ = build_llava_trainer(PatchAlignRecipe(), argv)
    for callback in callbacks:
        trainer.add_callback(callback)
    return trainer


class GradientRecorder:
    """Keeps the projector's gradients just before the optimizer step."""

    def __init__(self):
        self.grads = None
        self.trainer = None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        model = self.trainer.model
        self.grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    def __getattr__(self, name):  # every other TrainerCallback event: nothing to do
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


@pytest.fixture(scope="module")
def four_samples(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "four.json"
    path.write_text(json.dumps(json.loads((FIXTURES / "pretrain.json").read_text())[:4]))
    return path


def run_one_step(tmp_path, data_path, batch, accumulation):
    recorder = GradientRecorder()
    trainer = build_trainer(
        stage1_argv(
            tmp_path / f"b{batch}x{accumulation}",
            data_path,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            patch_beta_schedule="constant",
            patch_loss_weight=5.0,
            learning_rate=0.0,
        ),
        callbacks=[recorder],
    )
    recorder.trainer = trainer
    trainer.train()
    logs = next(d for d in trainer.state.log_history if "loss_patch" in d)
    return logs, recorder.grads


def test_accumulation_1x4_equals_4x1(tmp_path, four_samples):
    logs_1x4, grads_1x4 = run_one_step(tmp_path, four_samples, batch=4, accumulation=1)
    logs_4x1, grads_4x1 = run_one_step(tmp_path, four_samples, batch=1, accumulation=4)
    assert logs_1x4["patch_regions"] == logs_4x1["patch_regions"] == 8
    assert logs_1x4["patch_beta"] == logs_4x1["patch_beta"] == 5.0
    for key in ("loss_patch", "loss_caption", "loss", "patch_cosine"):
        assert logs_4x1[key] == pytest.approx(logs_1x4[key], rel=1e-5), key
    assert logs_1x4["loss"] == pytest.approx(
        logs_1x4["loss_caption"] + 5.0 * logs_1x4["loss_patch"], rel=1e-5
    )
    assert grads_1x4.keys() == grads_4x1.keys()
    for name in grads_1x4:
        torch.testing.assert_close(grads_4x1[name], grads_1x4[name], rtol=1e-4, atol=1e-7)


def test_patch_loss_gradients_reach_only_the_projector(tmp_path, four_samples):
    trainer = build_trainer(stage1_argv(tmp_path, four_samples, patch_beta_schedule="constant"))
    model = trainer.model
    batch = next(iter(trainer.get_train_dataloader()))
    trainer._regions_in_step = batch["region_masks"].new_tensor(batch["region_masks"].shape[0])
    model.train()
    num_items = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
    trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all("mm_projector" in n for n in with_grad)
    assert {n for n, p in model.named_parameters() if "mm_projector" in n} == with_grad


def test_label_targets_are_the_mean_input_embeddings(tmp_path, four_samples):
    trainer = build_trainer(stage1_argv(tmp_path, four_samples))
    table = trainer.model.get_input_embeddings().weight.detach()
    ids = trainer.train_dataset[0]["region_label_ids"][0]
    label_ids = torch.tensor([ids])
    mask = torch.ones_like(label_ids, dtype=torch.bool)
    target = trainer.label_embeddings(trainer.model.get_input_embeddings(), label_ids, mask)
    torch.testing.assert_close(target[0], table[ids].mean(0))
    assert len(trainer.label_embeddings) == 1  # frozen table: cached


def read_logs(output_dir):
    state = json.loads((Path(output_dir) / "trainer_state.json").read_text())
    return [d for d in state["log_history"] if "loss_patch" in d]


@pytest.mark.slow
def test_end_to_end_run_lowers_patch_loss_and_its_projector_loads_for_finetuning(tmp_path):
    from patch_align.train import main

    out = tmp_path / "run"
    main(stage1_argv(out, max_steps=24, lr_scheduler_type="cosine", warmup_ratio=0.03))
    logs = read_logs(out)
    assert len(logs) == 24
    patch = [d["loss_patch"] for d in logs]
    caption = [d["loss_caption"] for d in logs]
    assert sum(patch[-6:]) / 6 < 0.8 * sum(patch[:6]) / 6
    assert sum(caption[-6:]) / 6 < sum(caption[:6]) / 6
    assert [d["patch_beta"] for d in logs] == pytest.approx([5.0 * s / 24 for s in range(24)])
    assert all(d["patch_regions"] == 8 and d["pad_regions_skipped"] == 0 for d in logs)
    config = json.loads((out / "config.json").read_text())
    assert config["patch_align_loss_weight"] == 5.0 and config["patch_align_pooling"] == "mean"
    assert config["patch_align_pad_path"] == str(FIXTURES / "pad.json")

    from types import SimpleNamespace

    from llava.train.arguments import ModelArguments
    from llava.train.train import load_language_model

    saved = torch.load(out / "mm_projector.bin", weights_only=True)
    model_args = ModelArguments(
        model_name_or_path=str(FIXTURES / "llm"),
        version="v1",
        vision_tower=str(FIXTURES / "clip"),
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2,
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
def test_resumed_run_continues_on_the_same_beta_curve(tmp_path):
    import shutil

    from patch_align.train import main

    flags = {"max_steps": 6, "save_strategy": "steps", "save_steps": 3}
    main(stage1_argv(tmp_path / "full", **flags))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-3", resumed / "checkpoint-3")
    main(stage1_argv(resumed, **flags))  # finds checkpoint-3 and resumes from it
    full, after = read_logs(tmp_path / "full"), read_logs(resumed)
    assert [d["step"] for d in after] == [1, 2, 3, 4, 5, 6]  # log_history restored, then extended
    for a, b in zip(full[3:], after[3:], strict=True):
        assert b["patch_beta"] == a["patch_beta"] == pytest.approx(5.0 * (a["step"] - 1) / 6)
        assert b["loss_patch"] == pytest.approx(a["loss_patch"], rel=1e-4)
    # the running region totals continue from checkpoint-3's, not from 0
    assert [d["pad_regions_fallback"] for d in after] == [d["pad_regions_fallback"] for d in full]
    assert full[-1]["pad_regions_fallback"] > full[2]["pad_regions_fallback"] > 0


def test_sea_refuses_ddp_searching_for_unused_parameters(tmp_path):
    # τ is used outside the model's forward: the search would mark it ready twice under DDP
    from test_sea_train import write_colour_labels

    labels = write_colour_labels(tmp_path / "labels")
    argv = stage1_argv(tmp_path, align_objective="sea", sea_labels=labels, pad_path=None)
    with pytest.raises(ValueError, match="--ddp_find_unused_parameters True does not work with SEA"):
        build_trainer([*argv, "--ddp_find_unused_parameters", "True"])
