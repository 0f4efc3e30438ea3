"""Where image pixels and region masks land on the vision tower's patch grid (pure numpy).

Coordinates are continuous pixel-edge coordinates: pixel (row i, column j) of an image is
the unit square [j, j+1) × [i, i+1), so an image of width W spans x in [0, W].

The tower's image processor owns the resize and the crop (`llava.mm_utils.processor_geometry`),
never assumed here:
- CLIP (`CLIPImageProcessor`): resize so the shorter edge is `shortest_edge` (longer edge
  `int(shortest_edge * long / short)`, i.e. floored), then centre crop `crop_size` at offset
  `(resized - crop) // 2` (floor; negative when the crop is larger, in which case the
  processor pads with zeros).
- SigLIP (`SiglipImageProcessor`): resize to `size` = height × width whatever the aspect ratio,
  no crop.

Two preprocessing modes, as LLaVA's `image_aspect_ratio`:
- `square`: the processor alone (a non-square image loses its margins to CLIP's crop, and is
  stretched to a square by SigLIP's resize).
- `pad`: first `llava.mm_utils.expand2square` (paste at `pad_to_square_geometry` offsets on
  a square of the longer edge), then the same processor steps on that square.

PIL's resize maps pixel edges to pixel edges (x_out = x_in · out / in), so each mode is an
axis-aligned affine map from original pixels to model-input pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import numpy as np

from llava.mm_utils import ProcessorGeometry, pad_to_square_geometry, processor_geometry

AspectMode = Literal["pad", "square"]
SelectFeature = Literal["patch", "cls_patch"]

DEFAULT_PATCH_MASK_THRESHOLD = 0.5


@dataclass(frozen=True)
class ImageTransform:
    """x_model = scale_x · x + offset_x, y_model = scale_y · y + offset_y (pixel-edge coordinates).

    `output_width` × `output_height` is the model input (the crop); model pixels outside
    the transformed image are padding.
    """

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    output_width: int
    output_height: int

    def apply(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Original-image points (any shape, px) → model-input points (px)."""
        return self.scale_x * np.asarray(xs) + self.offset_x, self.scale_y * np.asarray(ys) + self.offset_y

    def invert(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model-input points (px) → original-image points (px)."""
        xs, ys = np.asarray(xs), np.asarray(ys)
        return (xs - self.offset_x) / self.scale_x, (ys - self.offset_y) / self.scale_y


def _resized_size(width: int, height: int, geometry: ProcessorGeometry) -> tuple[int, int]:
    """Output (width, height) of the processor's resize."""
    if geometry.resize_to is not None:
        return geometry.resize_to[1], geometry.resize_to[0]
    shortest_edge = geometry.shortest_edge
    if width <= height:
        return shortest_edge, int(shortest_edge * height / width)
    return int(shortest_edge * width / height), shortest_edge


def geometry_transform(width: int, height: int, mode: AspectMode,
                       geometry: ProcessorGeometry) -> ImageTransform:
    """The affine map from a `width` × `height` image to the model input under `mode`, for a
    processor that resizes and (optionally) centre crops as `geometry` says."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if mode == "pad":
        side, left, top = pad_to_square_geometry(width, height)
        canvas_width, canvas_height = side, side
    elif mode == "square":
        left, top = 0, 0
        canvas_width, canvas_height = width, height
    else:
        raise ValueError(f"image aspect mode must be 'pad' or 'square', got {mode!r}")
    resized_width, resized_height = _resized_size(canvas_width, canvas_height, geometry)
    scale_x, scale_y = resized_width / canvas_width, resized_height / canvas_height
    output_height, output_width = geometry.input_size
    # without a crop the resized image is the input: offset 0
    crop_left, crop_top = (resized_width - output_width) // 2, (resized_height - output_height) // 2
    return ImageTransform(scale_x=scale_x, scale_y=scale_y,
                          offset_x=left * scale_x - crop_left, offset_y=top * scale_y - crop_top,
                          output_width=output_width, output_height=output_height)


def model_input_transform(width: int, height: int, mode: AspectMode, shortest_edge: int = 336,
                          crop_size: tuple[int, int] | None = None) -> ImageTransform:
    """`geometry_transform` for a CLIP-style processor: resize the shortest edge to `shortest_edge`,
    then centre crop `crop_size` = (crop height, crop width), by default `(shortest_edge, shortest_edge)`.
    """
    crop = crop_size if crop_size is not None else (shortest_edge, shortest_edge)
    return geometry_transform(width, height, mode, ProcessorGeometry(shortest_edge=shortest_edge, crop=crop))


def processor_transform(width: int, height: int, mode: AspectMode, image_processor: Any) -> ImageTransform:
    """`geometry_transform` with the resize and crop the tower's image processor itself does
    (`processor_geometry`: CLIP's shortest edge + centre crop, SigLIP's resize to height × width);
    `ValueError` for a processor whose output has no fixed size."""
    return geometry_transform(width, height, mode, processor_geometry(image_processor))


def patch_placement(geometry: ProcessorGeometry, patch_size: int, mode: AspectMode) -> tuple:
    """Where a processor's patches land on an image under `mode`, independent of its pixel size.

    Two (processor, patch size) pairs with equal placements put patch (row, col) on the same part
    of every image (up to the sub-pixel floors of the resize and crop): e.g. CLIP 224 px / 16-px
    patches and CLIP 336 px / 24-px patches do, CLIP and SigLIP do in `pad` mode when CLIP's crop
    is its whole resize, never in `square` mode (CLIP crops a non-square image, SigLIP stretches it).
    Per axis (rows, columns): the crop's start and the patch side as exact fractions of the resized
    length, and the patch count; with `square` also the resize kind (aspect kept or not).
    """
    resize = geometry.resize_to or (geometry.shortest_edge, geometry.shortest_edge)
    axes = tuple((Fraction(length - kept, 2 * length), Fraction(patch_size, length), kept // patch_size)
                 for length, kept in zip(resize, geometry.input_size, strict=True))
    if mode == "pad":  # the canvas is square: both resize kinds scale it the same way
        return axes
    return ("shortest_edge" if geometry.resize_to is None else "resize_to", *axes)


def _prefix_sums_at(values: np.ndarray, points: np.ndarray, axis: int) -> np.ndarray:
    """Sums of `values` over [0, p) along `axis` for every integer p of `points` (0 ≤ p ≤ size);
    int64 (exact) for a bool or integer mask.

    One pass (`reduceat` over the segments between the points), not a full cumulative sum.
    """
    size = values.shape[axis]
    boundaries = np.unique(np.concatenate([[0, size], points]))
    exact = np.int64 if values.dtype == bool or np.issubdtype(values.dtype, np.integer) else np.float64
    segments = np.add.reduceat(values, boundaries[:-1], axis=axis, dtype=exact)
    zero = np.zeros_like(np.take(segments, [0], axis=axis))
    prefix = np.concatenate([zero, segments.cumsum(axis=axis)], axis=axis)
    return np.take(prefix, np.searchsorted(boundaries, points), axis=axis)


def _mask_integral(mask: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """∫∫ mask over [0, x] × [0, y] for every pair of `ys` (rows) and `xs` (columns): (len(ys), len(xs)).

    The mask is constant on each pixel, so the integral is bilinear between integer corners:
    interpolating the summed-area table is exact. Only the table's entries at those corners are
    computed (exact integer counts): the full (H+1, W+1) table cost 1.7 ms per 336 px region in
    the dataloader, 7x more than this (docs/performance.md).
    """
    height, width = mask.shape
    xs, ys = np.clip(xs, 0, width), np.clip(ys, 0, height)
    x0 = np.minimum(np.floor(xs).astype(int), width - 1)
    y0 = np.minimum(np.floor(ys).astype(int), height - 1)
    fx, fy = (xs - x0)[None, :], (ys - y0)[:, None]
    n_x, n_y = len(x0), len(y0)
    columns = _prefix_sums_at(mask, np.concatenate([x0, x0 + 1]), axis=1)
    table = _prefix_sums_at(columns, np.concatenate([y0, y0 + 1]), axis=0).astype(np.float64)
    top = table[:n_y, :n_x] * (1 - fx) + table[:n_y, n_x:] * fx
    bottom = table[n_y:, :n_x] * (1 - fx) + table[n_y:, n_x:] * fx
    return top * (1 - fy) + bottom * fy


def mask_to_patch_coverage(mask: np.ndarray, transform: ImageTransform | AspectMode = "pad",
                           image_size: int = 336, patch_size: int = 14) -> np.ndarray:
    """Fraction of each patch's area covered by the transformed mask: (G_h, G_w) float64 in [0, 1].

    `mask` is (H, W) bool in original-image pixels. `transform` is an `ImageTransform`,
    or a mode name with `image_size` as both shortest edge and crop (CLIP-L/336: 336 →
    24 × 24 grid). Each patch rectangle is pulled back to original coordinates and the
    mask integrated over it exactly (fractional pixels included); padding counts as uncovered.
    The grid is G = input // `patch_size` patches per side, as the tower's unpadded patch
    convolution cuts it: an input that is not a whole number of patches (SigLIP so400m:
    384 = 27 · 14 + 6) has its last rows and columns seen by no patch.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape[0] == 0 or mask.shape[1] == 0:
        raise ValueError(f"mask must be a non-empty (H, W) array, got shape {mask.shape}")
    height, width = mask.shape
    if isinstance(transform, str):
        transform = model_input_transform(width, height, transform, image_size)
    grid_width, grid_height = transform.output_width // patch_size, transform.output_height // patch_size
    if grid_width == 0 or grid_height == 0:
        raise ValueError(f"model input {transform.output_width}x{transform.output_height} is smaller than "
                         f"one {patch_size}-px patch")
    edges_x = np.arange(grid_width + 1, dtype=np.float64) * patch_size
    edges_y = np.arange(grid_height + 1, dtype=np.float64) * patch_size
    xs, ys = transform.invert(edges_x, edges_y)
    integral = _mask_integral(mask, xs, ys)
    covered = integral[1:, 1:] - integral[:-1, 1:] - integral[1:, :-1] + integral[:-1, :-1]
    patch_area = patch_size * patch_size / (transform.scale_x * transform.scale_y)  # in original px²
    # clip only float rounding (|error| ~ 1e-12); the exact value is always within [0, 1]
    return np.clip(covered / patch_area, 0.0, 1.0)


def coverage_to_patch_mask(coverage: np.ndarray, threshold: float = DEFAULT_PATCH_MASK_THRESHOLD,
                           fallback: Literal["argmax", "none"] = "argmax") -> tuple[np.ndarray, bool]:
    """Patches owned by a region: `coverage >= threshold`, same shape as `coverage`, bool.

    With `fallback="argmax"`, a region that owns no patch gets its single highest-coverage
    patch (first in row-major order on ties), and the second value is True so callers can
    count it. A region with zero coverage everywhere (e.g. cropped away in `square` mode)
    owns nothing either way.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"patch mask threshold must be in (0, 1], got {threshold}")
    if fallback not in ("argmax", "none"):
        raise ValueError(f"fallback must be 'argmax' or 'none', got {fallback!r}")
    coverage = np.asarray(coverage)
    owned = coverage >= threshold
    if owned.any() or fallback == "none" or coverage.max(initial=0.0) <= 0.0:
        return owned, False
    owned.flat[int(np.argmax(coverage))] = True
    return owned, True


def vision_token_offset(select_feature: SelectFeature) -> int:
    """Index of the first patch token among the vision tokens: 1 with `cls_patch` (CLS first), else 0.

    `patch` is the patches alone for every tower (a CLS-less one such as SigLIP has nothing to drop);
    `cls_patch` exists only for towers with one CLS token (CLIP): a tower without refuses it
    (`SiglipVisionTower`), and `PatchGrid.of_tower` checks the count against the tower's.
    """
    if select_feature == "patch":
        return 0
    if select_feature == "cls_patch":
        return 1
    raise ValueError(f"select_feature must be 'patch' or 'cls_patch', got {select_feature!r}")


def patch_token_index(grid_index: int | np.ndarray,
                      select_feature: SelectFeature = "patch") -> int | np.ndarray:
    """Vision-token index of patch `grid_index` = row · G + column (row-major), for int or int array."""
    return grid_index + vision_token_offset(select_feature)
