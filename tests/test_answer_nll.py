"""Specification of the held-out teacher-forced answer NLL (issue 20), on the tiny upstream checkpoint."""
from __future__ import annotations

import json
import math

import pytest
import torch

from llava.constants import IGNORE_INDEX
from patch_align.evaluation.nll import answer_nll, sequence_nll, task_of_record


def test_sequence_nll_sums_the_next_token_nll_of_supervised_positions_only():
    # vocabulary of 2, uniform logits: every supervised next token costs log 2
    logits = torch.zeros(1, 4, 2)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1, 0]])
    sums, counts = sequence_nll(logits, labels)
    assert counts.tolist() == [2] and sums.tolist() == [pytest.approx(2 * math.log(2))]


def test_records_are_grouped_by_the_task_named_at_the_end_of_their_id():
    assert [task_of_record({"id": i}) for i in ("eval-000003-vqa", "eval-000003", "plain")] == [
        "vqa", "all", "all"]


@pytest.mark.slow  # loads the tiny checkpoint
def test_answer_nll_equals_the_models_own_loss_and_does_not_depend_on_batching(golden_dir):
    from llava.model.builder import load_pretrained_model

    fixtures = golden_dir / "fixtures-437"
    checkpoint = str(golden_dir / "llava-v1.5-tiny")
    tokenizer, model, processor, _ = load_pretrained_model(checkpoint, None, device="cpu")
    model.eval()
    records = json.loads((fixtures / "finetune.json").read_text())[:3]
    loaded = (tokenizer, model, processor)
    images = fixtures / "images"
    one_by_one = [answer_nll(loaded, [r], images, "llava_v1", batch_size=1)["all"] for r in records]
    together = answer_nll(loaded, records, fixtures / "images", "llava_v1", batch_size=3)["all"]
    assert together["samples"] == 3 and together["tokens"] == sum(g["tokens"] for g in one_by_one)
    assert together["nll_sum"] == pytest.approx(sum(g["nll_sum"] for g in one_by_one), rel=1e-4)
    # the model's training loss of one sample is its mean answer-token NLL
    from PIL import Image

    from llava.mm_utils import process_images
    from llava.train.data import conversation_template
    from llava.train.preprocess import preprocess_multimodal, tokenize_conversation

    record = records[0]
    ids, labels = tokenize_conversation(preprocess_multimodal(record["conversations"]), tokenizer,
                                        conversation_template("llava_v1"), has_image=True)
    image = process_images([Image.open(fixtures / "images" / record["image"]).convert("RGB")], processor,
                           model.config)
    with torch.no_grad():
        loss = model(input_ids=ids[None], labels=labels[None], images=image).loss
    assert one_by_one[0]["mean_nll"] == pytest.approx(float(loss), rel=1e-4)


@pytest.mark.slow  # loads the tiny checkpoint
def test_the_nll_command_writes_the_groups_and_checks_the_template_first(golden_dir, tmp_path, capsys):
    from patch_align.evaluation.nll import main

    fixtures = golden_dir / "fixtures-437"
    with pytest.raises(SystemExit):
        main(["--model-path", "nowhere", "--data", str(fixtures / "finetune.json"), "--conv-mode", "nope"])
    assert "not a known conversation template" in capsys.readouterr().err
    out = tmp_path / "nll.json"
    checkpoint, data = str(golden_dir / "llava-v1.5-tiny"), str(fixtures / "finetune.json")
    assert main(["--model-path", checkpoint, "--data", data, "--image-folder", str(fixtures / "images"),
                 "--conv-mode", "llava_v1", "--device", "cpu", "--out", str(out)]) == 0
    groups = json.loads(out.read_text())
    assert list(groups) == ["all"] and groups["all"]["mean_nll"] > 0
