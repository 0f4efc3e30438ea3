"""Held-out teacher-forced answer NLL: how likely a checkpoint finds the true answers (docs/evaluation.md).

Accuracy stays at a blind floor until a model reads the image well enough to emit a whole right
answer; the NLL of the answer tokens, given the prompt and the image, moves before that. Each
record of a LLaVA conversation file (the world's `*_eval.json`) is tokenised with the
checkpoint's template exactly as training does (`llava.train.preprocess`: only answer tokens are
supervised), and its image is processed as in training; the NLL is summed over the supervised
tokens and reported per group (by default the part of the record id after its last `-`, which
in the world names the task: `caption`, `rec`, `vqa`).

    python -m patch_align.evaluation.nll --model-path CKPT [--model-base BASE] --data EVAL.json \
        --image-folder DIR --conv-mode llava_v1 [--batch-size B] [--device D] [--out nll.json]
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from llava.constants import IGNORE_INDEX


def task_of_record(record: Mapping[str, Any]) -> str:
    """The record id's part after its last `-` (`eval-000003-vqa` → `vqa`), or `all` without one."""
    head, sep, tail = str(record["id"]).rpartition("-")
    return tail if sep and head and not tail.isdigit() else "all"


def _tokenised(record: Mapping[str, Any], tokenizer: Any, template: Any, use_im_start_end: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
    from llava.train.preprocess import preprocess_multimodal, tokenize_conversation

    has_image = "image" in record
    turns = record["conversations"]
    if has_image:
        turns = preprocess_multimodal(turns, mm_use_im_start_end=use_im_start_end,
                                      use_mmtag="mmtag" in template.version)
    return tokenize_conversation(turns, tokenizer, template, has_image=has_image, sample_id=str(record["id"]))


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed next-token NLL over supervised positions, and their count.

    logits (B, T, V), labels (B, T) with IGNORE_INDEX where unsupervised → (B,) float64 sums, (B,) counts.
    """
    shifted_logits, shifted_labels = logits[:, :-1].float(), labels[:, 1:]
    supervised = shifted_labels != IGNORE_INDEX
    log_probs = torch.log_softmax(shifted_logits, dim=-1)
    picked = log_probs.gather(-1, shifted_labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked.double() * supervised).sum(dim=-1), supervised.sum(dim=-1)


@torch.no_grad()
def answer_nll(
    loaded: tuple[Any, Any, Any],
    records: Sequence[Mapping[str, Any]],
    image_folder: str | Path | None,
    conv_mode: str,
    *,
    batch_size: int = 8,
    group_of: Callable[[Mapping[str, Any]], str] = task_of_record,
) -> dict[str, dict[str, float | int]]:
    """Teacher-forced NLL of every record's answer tokens; `loaded = (tokenizer, model, image_processor)`.

    Returns group → `{"samples", "tokens", "nll_sum", "mean_nll"}` (nats per answer token,
    summed over the group's tokens before dividing; lower is better). A sample longer than the
    tokenizer's `model_max_length` is truncated as in training (only the kept answer tokens count).
    """
    from llava.mm_utils import process_images
    from llava.train.data import DataCollatorForSupervisedDataset, conversation_template

    tokenizer, model, image_processor = loaded
    template = conversation_template(conv_mode)
    use_im_start_end = bool(getattr(model.config, "mm_use_im_start_end", False))
    collate = DataCollatorForSupervisedDataset(tokenizer)
    device = next(model.parameters()).device
    totals: dict[str, dict[str, Any]] = {}
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        items = []
        for record in batch:
            input_ids, labels = _tokenised(record, tokenizer, template, use_im_start_end)
            item: dict[str, Any] = {"input_ids": input_ids, "labels": labels}
            if "image" in record:
                path = Path(image_folder or "") / record["image"]
                try:
                    image = Image.open(path).convert("RGB")
                except OSError as error:
                    raise ValueError(f"record {record['id']}: cannot read image {path}: {error}") from error
                item["image"] = process_images([image], image_processor, model.config)[0]
            items.append(item)
        inputs = collate(items)
        images = inputs.get("images")
        tower = model.get_vision_tower()
        ids, _, mask, _, embeds, labels = model.prepare_inputs_labels_for_multimodal(
            inputs["input_ids"].to(device), None, inputs["attention_mask"].to(device), None,
            inputs["labels"].to(device),
            None if images is None else images.to(device=device, dtype=tower.dtype),
        )
        # a batch with nothing to splice (text-only records) comes back as token ids
        token_ids = ids if embeds is None else None
        logits = model(input_ids=token_ids, inputs_embeds=embeds, attention_mask=mask).logits
        sums, counts = sequence_nll(logits, labels)
        for record, nll, tokens in zip(batch, sums.tolist(), counts.tolist(), strict=True):
            group = totals.setdefault(group_of(record), {"samples": 0, "tokens": 0, "nll_sum": 0.0})
            group["samples"] += 1
            group["tokens"] += int(tokens)
            group["nll_sum"] += nll
    for group in totals.values():
        group["mean_nll"] = group["nll_sum"] / group["tokens"] if group["tokens"] else None
    return dict(sorted(totals.items()))


def main(argv: list[str] | None = None) -> int:
    """The command in the module docstring: prints (and with `--out` writes) the groups as JSON."""
    import argparse
    import json

    from llava.eval.run_llava import resolve_device
    from llava.model.builder import load_pretrained_model
    from llava.train.data import conversation_template
    from llava.train.llava_json import load_llava_json

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--model-base", default=None)
    parser.add_argument("--data", required=True,
                        help="LLaVA conversation JSON (e.g. the world's instruct_eval.json)")
    parser.add_argument("--image-folder", default=None)
    parser.add_argument("--conv-mode", required=True,
                        help="the checkpoint's template: plain (stage 1), llava_v1")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    try:  # cheap checks before the model loads
        conversation_template(args.conv_mode)
        records = load_llava_json(args.data)
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    except (ValueError, OSError) as error:
        parser.error(str(error))
    tokenizer, model, processor, _ = load_pretrained_model(
        args.model_path, args.model_base, device=resolve_device(args.device))
    model.eval()
    groups = answer_nll((tokenizer, model, processor), records, args.image_folder, args.conv_mode,
                        batch_size=args.batch_size)
    text = json.dumps(groups, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
