"""The app's views as pure functions over the analysis code (no web framework here).

Shapes: one image's projected patch tokens ``(P, D)`` row-major over the ``G_h × G_w`` grid
(CLS removed), the filtered word dictionary ``(V_w, D)`` of ``AnalysisModel.word_dictionary``.
Every number is the analysis code's: nearest words are ``probes.nearest_words`` (cosine to the
input-embedding rows), a phrase is embedded as region labels are (``tokenize_label`` + mean of its
token embeddings), decompositions are ``AnalysisAccumulator.pursue``, region scores are
``image_alignment`` with the ``AnalysisOptions`` that ``patch-align analyze`` uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from patch_align.analysis.alignment import cosine_maps, image_alignment
from patch_align.analysis.decomposition import _BYTE_TOKEN  # the one definition of a byte piece
from patch_align.analysis.probes import nearest_words
from patch_align.analysis.runner import AnalysisAccumulator, AnalysisOptions
from patch_align.geometry import ImageTransform
from patch_align.objectives.label_embedding import tokenize_label

__all__ = [
    "PatchWords",
    "RegionScore",
    "ViewInputError",
    "decompose_patch",
    "display_scale",
    "grid_overlay",
    "heatmap_overlay",
    "patch_at",
    "patch_box_in_original",
    "patch_nearest_words",
    "phrase_token_ids",
    "region_overlay",
    "region_scores",
    "seen_image",
    "word_heatmap",
]


class ViewInputError(ValueError):
    """Input a view cannot use (an unknown word, a click outside the image); the message says which."""


@dataclass(frozen=True)
class PatchWords:
    """Words of one patch, best first: ``(word, value)`` pairs (a cosine or an MP coefficient)."""

    patch: int
    words: list[tuple[str, float]]
    explained_variance: float | None = None  # decompositions only


@dataclass(frozen=True)
class RegionScore:
    """One scored PAD region of an image, as ``image_alignment`` scores it."""

    label: str
    iou: float
    pointing_hit: bool
    cos_inside: float
    cos_outside: float | None  # None when the region covers every patch


def seen_image(pixels: torch.Tensor, image_mean: Sequence[float], image_std: Sequence[float]) -> Image.Image:
    """The model's input (3, H, W) normalised pixels → the RGB image it saw (square crop or padded square)."""
    mean = torch.tensor(image_mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(image_std, dtype=torch.float32).view(3, 1, 1)
    rgb = (pixels.float().cpu() * std + mean).clamp(0, 1).mul(255).round().byte()
    return Image.fromarray(rgb.permute(1, 2, 0).numpy(), "RGB")


def patch_at(x: float, y: float, grid_shape: tuple[int, int], patch_size: int) -> int:
    """Row-major index of the patch holding model-input pixel ``(x, y)``; ViewInputError outside the grid."""
    rows, cols = grid_shape
    col, row = int(x // patch_size), int(y // patch_size)
    if not (0 <= row < rows and 0 <= col < cols):
        raise ViewInputError(f"point ({x:g}, {y:g}) is outside the {rows}x{cols} patch grid")
    return row * cols + col


def patch_box_in_original(
    patch: int, grid_shape: tuple[int, int], patch_size: int, transform: ImageTransform
) -> tuple[float, float, float, float]:
    """The patch's box ``(x0, y0, x1, y1)`` in original-image pixels (may extend past the image: padding)."""
    cols = grid_shape[1]
    row, col = divmod(patch, cols)
    xs, ys = transform.invert(
        np.array([col, col + 1]) * patch_size, np.array([row, row + 1]) * patch_size
    )
    return float(xs[0]), float(ys[0]), float(xs[1]), float(ys[1])


def patch_nearest_words(
    patch_tokens: torch.Tensor, dictionary: torch.Tensor, word_texts: Sequence[str], top_k: int = 5
) -> list[PatchWords]:
    """Per patch of (P, D) tokens, its ``top_k`` nearest dictionary words by cosine (``nearest_words``)."""
    top_k = min(top_k, dictionary.shape[0])
    ids, cosines = nearest_words(patch_tokens.float(), dictionary, top_k=top_k)
    return [
        PatchWords(patch, [(word_texts[i], float(c)) for i, c in zip(row_ids, row_cos, strict=True)])
        for patch, (row_ids, row_cos) in enumerate(zip(ids.tolist(), cosines.tolist(), strict=True))
    ]


def phrase_token_ids(tokenizer, phrase: str) -> list[int]:
    """A word or phrase as region labels are tokenised; ViewInputError when it is empty or unknown.

    Unknown: one of its tokens is the unknown token or a SentencePiece byte piece ``<0x..>``, i.e.
    characters the vocabulary does not hold (their embeddings say nothing of the phrase).
    """
    ids = tokenize_label(tokenizer, phrase)
    if not ids:
        raise ViewInputError("type a word or phrase (it has no tokens)")
    pieces = tokenizer.convert_ids_to_tokens(ids)
    unk = getattr(tokenizer, "unk_token_id", None)
    if (unk is not None and unk in ids) or any(_BYTE_TOKEN.match(piece) for piece in pieces):
        raise ViewInputError(f"{phrase.strip()!r} is not in the vocabulary (its tokens: {pieces})")
    return ids


def word_heatmap(
    patch_tokens: torch.Tensor, phrase_embedding: torch.Tensor, grid_shape: tuple[int, int]
) -> np.ndarray:
    """Cosine of a phrase embedding (D,) with every patch token (P, D) → (G_h, G_w) float32 (cosine_maps)."""
    cos = cosine_maps(patch_tokens.float(), phrase_embedding.float().unsqueeze(0))[0]
    return cos.reshape(grid_shape).cpu().numpy().astype(np.float32)


def decompose_patch(accumulator: AnalysisAccumulator, patch_tokens: torch.Tensor, patch: int) -> PatchWords:
    """Matching-pursuit code of one patch (the accumulator's pursuit, options): words in selection order."""
    if not 0 <= patch < patch_tokens.shape[0]:
        raise ViewInputError(f"patch {patch} is not in 0..{patch_tokens.shape[0] - 1}")
    code = accumulator.pursue(patch_tokens[patch : patch + 1].float())
    words = [
        (accumulator.word_texts[atom], float(coef))
        for atom, coef in zip(code.atom_ids[0].tolist(), code.coefficients[0].tolist(), strict=True)
        if atom >= 0
    ]
    return PatchWords(patch, words, float(code.explained_variance[0]))


def region_scores(
    patch_tokens: torch.Tensor,
    label_embeddings: torch.Tensor,
    true_masks: torch.Tensor,
    labels: Sequence[str],
    options: AnalysisOptions,
) -> list[RegionScore]:
    """IoU, pointing and inside/outside cosine of each non-empty region, as ``analyze`` scores them.

    patch_tokens (P, D), label_embeddings (R, D), true_masks (R, P) bool, labels R strings.
    """
    if label_embeddings.shape[0] == 0:
        return []
    result = image_alignment(
        patch_tokens.float(), label_embeddings.float(), true_masks, **options.alignment_options()
    )
    return [
        RegionScore(
            label=labels[int(index)],
            iou=float(iou),
            pointing_hit=bool(hit),
            cos_inside=float(inside),
            cos_outside=float(outside) if has_outside else None,
        )
        for index, iou, hit, inside, outside, has_outside in zip(
            result.region_index.tolist(),
            result.iou.tolist(),
            result.pointing_hit.tolist(),
            result.cos_inside.tolist(),
            result.cos_outside.tolist(),
            result.has_outside.tolist(),
            strict=True,
        )
    ]


def _scaled(image: Image.Image, display: int) -> tuple[Image.Image, float]:
    # The tiny towers see 56 px; scale up (nearest) so a patch is big enough to click.
    factor = max(1, display // max(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST), float(factor)


def grid_overlay(
    image: Image.Image,
    grid_shape: tuple[int, int],
    patch_size: int,
    selected: int | None = None,
    display: int = 448,
) -> Image.Image:
    """The model-input image scaled to about ``display`` px, its patch grid (and selected patch) drawn."""
    canvas, factor = _scaled(image.convert("RGB"), display)
    draw = ImageDraw.Draw(canvas)
    rows, cols = grid_shape
    step = patch_size * factor
    for col in range(cols + 1):
        draw.line([(col * step, 0), (col * step, rows * step)], fill=(255, 255, 255), width=1)
    for row in range(rows + 1):
        draw.line([(0, row * step), (cols * step, row * step)], fill=(255, 255, 255), width=1)
    if selected is not None:
        row, col = divmod(selected, cols)
        box = [col * step, row * step, (col + 1) * step, (row + 1) * step]
        draw.rectangle(box, outline=(255, 0, 0), width=3)
    return canvas


def display_scale(image: Image.Image, display: int = 448) -> float:
    """The factor ``grid_overlay`` scales ``image`` by (display px per model-input px)."""
    return _scaled(image, display)[1]


def _color_map(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    from matplotlib import colormaps

    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return (colormaps["viridis"](np.clip(scaled, 0, 1))[..., :3] * 255).astype(np.uint8)


def heatmap_overlay(
    image: Image.Image, heatmap: np.ndarray, patch_size: int, display: int = 448, alpha: float = 0.55
) -> Image.Image:
    """The image with a (G_h, G_w) map blended over its patches (viridis over the map's own range)."""
    canvas, factor = _scaled(image.convert("RGB"), display)
    colors = _color_map(heatmap, float(heatmap.min()), float(heatmap.max()))
    step = int(patch_size * factor)
    size = (colors.shape[1] * step, colors.shape[0] * step)
    layer = Image.fromarray(colors, "RGB").resize(size, Image.NEAREST)
    base = canvas.crop((0, 0, layer.width, layer.height))
    return Image.blend(base, layer, alpha)


def region_overlay(
    image: Image.Image, masks: np.ndarray, grid_shape: tuple[int, int], patch_size: int, display: int = 448
) -> Image.Image:
    """The image with each region's (R, P) patch mask tinted in its own colour (tab10, region order)."""
    from matplotlib import colormaps

    canvas, factor = _scaled(image.convert("RGB"), display)
    tint = np.zeros((*grid_shape, 3), dtype=np.float32)
    weight = np.zeros(grid_shape, dtype=np.float32)
    for index, mask in enumerate(np.asarray(masks, dtype=bool)):
        color = np.array(colormaps["tab10"](index % 10)[:3], dtype=np.float32) * 255
        grid_mask = mask.reshape(grid_shape)
        tint[grid_mask] += color
        weight[grid_mask] += 1
    covered = weight > 0
    tint[covered] /= weight[covered, None]
    step = int(patch_size * factor)
    size = (grid_shape[1] * step, grid_shape[0] * step)
    base = np.asarray(canvas.crop((0, 0, *size)), dtype=np.float32)
    layer = Image.fromarray(tint.astype(np.uint8), "RGB").resize(size, Image.NEAREST)
    layer = np.asarray(layer, dtype=np.float32)
    alpha = np.asarray(
        Image.fromarray((covered * 255).astype(np.uint8), "L").resize(size, Image.NEAREST), dtype=np.float32
    )[..., None] / 255.0 * 0.6
    return Image.fromarray((base * (1 - alpha) + layer * alpha).round().astype(np.uint8), "RGB")
