"""The LLaVA training data: a lazy dataset over the JSON list, and the batch collator.

`LazySupervisedDataset[i]` → `{"input_ids": (L,), "labels": (L,), "image": (3, H, W)}`
(no `image` key for text-only samples of a text-only run). The collator pads right,
truncates to `tokenizer.model_max_length`, and stacks images (B, 3, H, W).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from llava.constants import IGNORE_INDEX
from llava.conversation import Conversation, conv_templates
from llava.mm_utils import process_images, processor_input_size

from .llava_json import load_llava_json, sample_id
from .preprocess import LabelAlignmentError, preprocess_multimodal, tokenize_conversation

logger = logging.getLogger(__name__)

# Upstream's length proxy for an image when grouping by length (words + 128).
IMAGE_LENGTH_PROXY = 128


def conversation_template(version: str) -> Conversation:
    """The template `--version` names; an unknown name is an error listing the known ones.

    Upstream falls back to vicuna_v1 for an unknown name, which silently changes stage 1's
    prompt format (plain → v1) on a typo; anyone who wants vicuna_v1 can name it.
    """
    if version not in conv_templates:
        raise ValueError(
            f"--version {version!r} is not a known conversation template; known: {', '.join(conv_templates)}"
        )
    return conv_templates[version]


class LazySupervisedDataset(Dataset):
    """Tokenises and loads each sample when it is asked for (upstream's class name).

    The whole file is checked when the dataset is built (`llava_json`'s rules: ids, one
    image path and one `<image>` per image record, string turns), and image records need a
    vision tower (`data_args.is_multimodal`). Samples whose labels cannot be aligned raise
    `LabelAlignmentError` naming the id; with `data_args.label_mismatch == "skip"` they are
    replaced by the next good sample and counted in `self.skipped` (per process) with a
    logged warning.
    """

    def __init__(self, data_path: str, tokenizer, data_args, template: Conversation | None = None):
        super().__init__()
        self.list_data_dict = load_llava_json(data_path)
        if not data_args.is_multimodal:
            image_ids = [sample_id(s) for s in self.list_data_dict if "image" in s]
            if image_ids:
                raise ValueError(
                    f"{data_path}: {len(image_ids)} record(s) have an 'image' (ids {image_ids[:5]}) but the "
                    "run has no vision tower: pass --vision_tower, or train on text-only records"
                )
        self.tokenizer = tokenizer
        self.data_args = data_args
        self.template = template or conversation_template(getattr(data_args, "version", "vicuna_v1"))
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.list_data_dict)

    @property
    def lengths(self) -> list[int]:
        return [
            self._word_count(s) + (IMAGE_LENGTH_PROXY if "image" in s else 0) for s in self.list_data_dict
        ]

    @property
    def modality_lengths(self) -> list[int]:
        """Word counts, negative for text-only samples (what the modality-grouped sampler reads)."""
        return [self._word_count(s) if "image" in s else -self._word_count(s) for s in self.list_data_dict]

    @staticmethod
    def _word_count(sample: dict) -> int:
        return sum(len(turn["value"].split()) for turn in sample["conversations"])

    def sample_id(self, i: int) -> str:
        return sample_id(self.list_data_dict[i])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.data_args.label_mismatch == "error":
            return self.get_item(i)
        for offset in range(len(self)):
            j = (i + offset) % len(self)
            try:
                return self.get_item(j)
            except LabelAlignmentError as err:
                self.skipped.append(self.sample_id(j))
                logger.warning("skipping sample (%d skipped so far): %s", len(self.skipped), err)
        raise RuntimeError("every sample in the dataset failed label alignment")

    def get_item(self, i: int) -> dict[str, torch.Tensor]:
        sample = self.list_data_dict[i]
        has_image = "image" in sample
        conversations = sample["conversations"]  # only read: preprocess_multimodal returns new turns
        if has_image:
            conversations = preprocess_multimodal(
                conversations,
                is_multimodal=self.data_args.is_multimodal,
                mm_use_im_start_end=getattr(self.data_args, "mm_use_im_start_end", False),
                use_mmtag="mmtag" in self.template.version,
            )
        input_ids, labels = tokenize_conversation(
            conversations, self.tokenizer, self.template, has_image=has_image, sample_id=self.sample_id(i)
        )
        item = {"input_ids": input_ids, "labels": labels}
        if has_image:
            item["image"] = self.load_image(sample, i)
        elif self.data_args.is_multimodal:
            # Text-only samples in a multimodal run carry a zero image (upstream's convention):
            # the model consumes it without splicing so the projector stays in every graph.
            height, width = processor_input_size(self.data_args.image_processor)
            item["image"] = torch.zeros(3, height, width)
        return item

    def load_image(self, sample: dict, i: int) -> torch.Tensor:
        """The sample's image as the model sees it, (3, H, W)."""
        path = Path(self.data_args.image_folder or "") / sample["image"]
        try:
            image = Image.open(path).convert("RGB")
        except (FileNotFoundError, OSError) as err:
            raise FileNotFoundError(f"sample {self.sample_id(i)}: cannot read image {path}: {err}") from err
        return process_images([image], self.data_args.image_processor, self.data_args)[0]


@dataclass
class DataCollatorForSupervisedDataset:
    """Pads a list of dataset items into a batch (right padding, upstream's class name).

    Returns `input_ids` (B, L), `labels` (B, L), `attention_mask` (B, L) bool and, when
    items carry images, `images` (B, 3, H, W) (a list when their shapes differ).
    """

    tokenizer: object

    def __call__(self, instances: list[dict]) -> dict[str, torch.Tensor]:
        max_length = self.tokenizer.model_max_length
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            raise ValueError("the tokenizer has no pad token: set tokenizer.pad_token before training")
        ids = [inst["input_ids"][:max_length] for inst in instances]
        labels = [inst["labels"][:max_length] for inst in instances]
        longest = max(len(x) for x in ids)
        batch_ids = torch.full((len(ids), longest), pad_id, dtype=torch.long)
        batch_labels = torch.full((len(ids), longest), IGNORE_INDEX, dtype=torch.long)
        # The mask comes from the lengths, not from `ids != pad_id`: LLaMA pads with <unk>,
        # which may also occur as a real token.
        attention_mask = torch.zeros((len(ids), longest), dtype=torch.bool)
        for row, (x, y) in enumerate(zip(ids, labels, strict=True)):
            batch_ids[row, : len(x)] = x
            batch_labels[row, : len(y)] = y
            attention_mask[row, : len(x)] = True
        batch = {"input_ids": batch_ids, "labels": batch_labels, "attention_mask": attention_mask}
        if "image" in instances[0]:
            images = [inst["image"] for inst in instances]
            same_shape = all(im.shape == images[0].shape for im in images)
            batch["images"] = torch.stack(images) if same_shape else images
        return batch
