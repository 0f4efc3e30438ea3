"""Image and prompt helpers with upstream LLaVA's names and signatures.

Eval harnesses import `process_images`, `tokenizer_image_token` and
`get_model_name_from_path` from here; keep their behaviour bit-compatible.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from transformers import StoppingCriteria

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX


def pad_to_square_geometry(width: int, height: int) -> tuple[int, int, int]:
    """Where an image of `width`×`height` px lands on LLaVA's padded square canvas.

    Returns `(side, left, top)`: the canvas side (the longer edge) and the pixel offset
    of the image's top-left corner. Offsets use floor division, exactly as the paste in
    `expand2square` does, so masks, boxes and pixels move together.
    """
    side = max(width, height)
    return side, (side - width) // 2, (side - height) // 2


def expand2square(pil_img: Image.Image, background_color: tuple[int, ...]) -> Image.Image:
    """Paste `pil_img` centred on a square canvas of its longer edge, filled with `background_color`."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    side, left, top = pad_to_square_geometry(width, height)
    canvas = Image.new(pil_img.mode, (side, side), background_color)
    canvas.paste(pil_img, (left, top))
    return canvas


@dataclass(frozen=True)
class ProcessorGeometry:
    """How an image processor moves pixels before it normalises them (what the model input is made of).

    The resize is `shortest_edge` (the shorter edge becomes this, the longer one
    `int(shortest_edge * long / short)`: CLIP) or `resize_to` = (height, width) regardless of the
    aspect ratio (SigLIP); exactly one is set. `crop` = (height, width) of the centre crop that
    follows, or None (SigLIP does not crop).
    """

    shortest_edge: int | None = None
    resize_to: tuple[int, int] | None = None
    crop: tuple[int, int] | None = None

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the processor's output, the tower's input."""
        return self.crop or self.resize_to

    def describe(self) -> str:
        """Words for error messages, e.g. "resizes the shortest edge to 336 and centre crops 336x336"."""
        if self.resize_to is not None:
            words = f"resizes to {self.resize_to[0]}x{self.resize_to[1]} (height x width)"
        else:
            words = f"resizes the shortest edge to {self.shortest_edge}"
        if self.crop is None:
            return words + " without a crop"
        return words + f" and centre crops {self.crop[0]}x{self.crop[1]}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (pairs as lists), read back by `from_dict`."""
        return {"shortest_edge": self.shortest_edge,
                "resize_to": list(self.resize_to) if self.resize_to else None,
                "crop": list(self.crop) if self.crop else None}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ProcessorGeometry:
        resize_to, crop = values.get("resize_to"), values.get("crop")
        return cls(shortest_edge=values.get("shortest_edge"),
                   resize_to=tuple(resize_to) if resize_to else None, crop=tuple(crop) if crop else None)


def processor_geometry(image_processor: Any) -> ProcessorGeometry:
    """Read the resize and crop of a transformers image processor (CLIP- or SigLIP-style).

    Raises `ValueError` naming the processor when its output has no fixed size (no resize, or a
    shortest-edge resize without a centre crop), which no LLaVA tower can take.
    """
    name = type(image_processor).__name__
    if not getattr(image_processor, "do_resize", False):
        raise ValueError(f"image processor {name} does not resize (do_resize=False): "
                         "its inputs have no fixed size")
    size = image_processor.size
    crop = None
    if getattr(image_processor, "do_center_crop", False):
        crop_size = image_processor.crop_size
        crop = (crop_size["height"], crop_size["width"])
    if size.get("shortest_edge"):
        if crop is None:
            raise ValueError(f"image processor {name} resizes by shortest_edge without a centre crop: "
                             "its inputs have no fixed size")
        return ProcessorGeometry(shortest_edge=size["shortest_edge"], crop=crop)
    if size.get("height") and size.get("width"):
        return ProcessorGeometry(resize_to=(size["height"], size["width"]), crop=crop)
    raise ValueError(f"image processor {name} has size {size}: expected shortest_edge, or height and width")


def processor_input_size(image_processor: Any) -> tuple[int, int]:
    """(height, width) of the pixel values `image_processor` makes (its crop, else its resize)."""
    return processor_geometry(image_processor).input_size


def pad_fill(image_processor: Any) -> tuple[int, ...]:
    """The colour `pad` fills the square canvas with: the processor's mean as 0-255 ints, floored as
    upstream does (CLIP: (122, 116, 104); SigLIP's mean 0.5: (127, 127, 127))."""
    return tuple(int(channel_mean * 255) for channel_mean in image_processor.image_mean)


def process_images(images: list[Image.Image], image_processor: Any, model_cfg: Any) -> torch.Tensor:
    """Turn PIL images into the vision tower's input, `(N, 3, H, W)` float pixel values.

    With `model_cfg.image_aspect_ratio == "pad"` each image is first centred on a square
    canvas filled with `pad_fill` (the processor's mean colour), so the later centre crop
    (CLIP) keeps the whole picture and the later resize (SigLIP) keeps its aspect ratio; any
    other value hands the list to the processor as is.
    """
    if getattr(model_cfg, "image_aspect_ratio", None) != "pad":
        return image_processor(images, return_tensors="pt")["pixel_values"]
    background = pad_fill(image_processor)
    pixels = [
        image_processor(expand2square(image, background), return_tensors="pt")["pixel_values"][0]
        for image in images
    ]
    return torch.stack(pixels, dim=0)


def tokenizer_image_token(
    prompt: str,
    tokenizer: Any,
    image_token_index: int = IMAGE_TOKEN_INDEX,
    return_tensors: str | None = None,
) -> list[int] | torch.Tensor:
    """Token ids of `prompt` with each `<image>` replaced by `image_token_index`.

    Every text chunk between images is tokenised on its own (so each gets the tokenizer's
    dummy-prefix space, as upstream does); the BOS the tokenizer adds to each chunk is kept
    once, at the front. Returns a list, or a `(L,)` int64 tensor for `return_tensors="pt"`.
    """
    chunk_ids = [tokenizer(chunk).input_ids for chunk in prompt.split(DEFAULT_IMAGE_TOKEN)]
    bos = tokenizer.bos_token_id
    starts_with_bos = bos is not None and len(chunk_ids[0]) > 0 and chunk_ids[0][0] == bos
    input_ids = [bos] if starts_with_bos else []
    for index, ids in enumerate(chunk_ids):
        if index > 0:
            input_ids.append(image_token_index)
        input_ids.extend(ids[1:] if starts_with_bos and ids[:1] == [bos] else ids)
    if return_tensors is None:
        return input_ids
    if return_tensors == "pt":
        return torch.tensor(input_ids, dtype=torch.long)
    raise ValueError(f"Unsupported return_tensors={return_tensors!r}; use None or 'pt'")


def get_model_name_from_path(model_path: str) -> str:
    """The model's name: the folder name, or `<parent>_checkpoint-N` for a trainer checkpoint."""
    parts = model_path.strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stop each sequence of a batch once its generated text ends with one of `keywords`.

    `input_ids` is the prompt batch `(B, L0)` given to `generate`; only tokens after
    position `L0` count as generated. A row stops when its generated ids end with a
    keyword's ids, or when its decoded generated text ends with the keyword (the
    keyword may tokenise differently in context than on its own).
    """

    def __init__(self, keywords: list[str], tokenizer: Any, input_ids: torch.Tensor) -> None:
        self.keywords = list(keywords)
        self.tokenizer = tokenizer
        self.start_len = input_ids.shape[1]
        self.keyword_ids = [
            tokenizer(keyword, add_special_tokens=False).input_ids for keyword in self.keywords
        ]

    def _row_should_stop(self, generated_ids: list[int]) -> bool:
        if not generated_ids:
            return False
        for ids in self.keyword_ids:
            if ids and generated_ids[-len(ids):] == ids:
                return True
        text = self.tokenizer.decode(generated_ids, skip_special_tokens=False)
        return any(text.endswith(keyword) for keyword in self.keywords)

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        """Return `(B,)` bool: True where that row has just produced a keyword."""
        rows = input_ids[:, self.start_len:].tolist()
        stops = [self._row_should_stop(row) for row in rows]
        return torch.tensor(stops, dtype=torch.bool, device=input_ids.device)
