"""Pictures of an analysis run (PNG through matplotlib's Agg canvas; pyplot's global state is never used).

Per image: the cosine map of each region label over the image, the predicted vs true patch
regions, and the patch grid annotated with its top matching-pursuit words. Per set of runs: bars
comparing ΔH, mIoU and pointing accuracy. Patch-grid pictures are drawn in original-image pixel
coordinates through the inverse of the model's input transform, so a patch lands on the pixels
it saw; the axes span the whole model input, so padding (``pad`` mode) shows as a grey band.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps, patheffects
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

if TYPE_CHECKING:
    from patch_align.analysis.runner import ImageExample

__all__ = [
    "MIOU_NO_ALIGNMENT",
    "grid_outline_segments",
    "plot_patch_words",
    "plot_region_maps",
    "plot_run_comparison",
]

MIOU_NO_ALIGNMENT = 0.15  # PA: below this mIoU a projector has learned no real patch-level alignment
MAX_LABEL_PANELS = 6
MAX_ANNOTATED_SIDE = 12  # at most this many annotated patches per grid side, so the words stay legible
_PADDING_GREY = "#b0b0b0"
_LABEL_COLOURS = colormaps["tab10"].colors


def _new_figure(*grid: int, figsize: tuple[float, float], **kwargs: Any) -> tuple[Figure, Any]:
    """A constrained-layout figure on its own Agg canvas, with ``Figure.subplots(*grid, **kwargs)``."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(*grid, **kwargs)


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def grid_outline_segments(mask: np.ndarray) -> np.ndarray:
    """Cell edges between a mask's inside and outside: (S, 2, 2) segments of (x, y) endpoints.

    ``mask`` is (rows, cols) bool; cell (i, j) spans x in [j, j+1], y in [i, i+1] (grid units).
    Edges on the grid border count as outside. Each unit edge appears once, so a lone cell
    gives its 4 sides.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (rows, cols), got shape {mask.shape}")
    padded = np.pad(mask, 1)
    segments = []
    # a horizontal edge at y = i separates rows i-1 and i; a vertical edge at x = j columns j-1 and j
    rows, cols = np.nonzero(padded[:-1, 1:-1] != padded[1:, 1:-1])
    segments += [((c, r), (c + 1, r)) for r, c in zip(rows, cols, strict=True)]
    rows, cols = np.nonzero(padded[1:-1, :-1] != padded[1:-1, 1:])
    segments += [((c, r), (c, r + 1)) for r, c in zip(rows, cols, strict=True)]
    return np.asarray(segments, dtype=np.float64).reshape(-1, 2, 2)


def _grid_to_image(example: ImageExample, points: np.ndarray) -> np.ndarray:
    """Grid-unit points (..., 2) → original-image pixel points (..., 2)."""
    xs, ys = example.transform.invert(
        points[..., 0] * example.patch_size, points[..., 1] * example.patch_size
    )
    return np.stack([xs, ys], axis=-1)


def _grid_extent(example: ImageExample) -> tuple[float, float, float, float]:
    """``imshow`` extent (left, right, bottom, top) of the whole patch grid in image pixels."""
    rows, cols = example.grid_shape
    (left, top), (right, bottom) = _grid_to_image(example, np.array([[0.0, 0.0], [cols, rows]]))
    return left, right, bottom, top


def _draw_image(ax: Axes, example: ImageExample, image: Image.Image, grey: bool = False) -> None:
    """The image at its pixel coordinates, axes spanning the model's view (padding in grey)."""
    left, right, bottom, top = _grid_extent(example)
    ax.set_facecolor(_PADDING_GREY)
    shown = image.convert("L") if grey else image
    ax.imshow(
        shown,
        extent=(0, image.width, image.height, 0),
        cmap="gray" if grey else None,
        interpolation="nearest",
    )
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_xticks([])
    ax.set_yticks([])


def _outline(
    ax: Axes, example: ImageExample, patch_mask: np.ndarray, colour: Any, width: float, style: Any = "solid"
) -> None:
    """A patch mask's outline, with a dark halo so it stays visible on any picture."""
    segments = grid_outline_segments(patch_mask.reshape(example.grid_shape))
    if len(segments):
        halo = [patheffects.Stroke(linewidth=width + 2, foreground="black"), patheffects.Normal()]
        lines = LineCollection(
            _grid_to_image(example, segments), colors=[colour], linewidths=width, linestyles=style
        )
        lines.set_path_effects(halo)
        ax.add_collection(lines)


def plot_region_maps(example: ImageExample, path: str | Path) -> Path:
    """One PNG: predicted vs true regions, then one cosine heatmap per label (at most 6).

    Panel 1 fills each label's predicted patches and outlines its true patch region in the
    label's colour (dashed after the first label). Each heatmap shows cos(patch, label) on a
    colour scale shared by the panels, the true region outlined in white and the most similar
    patch (pointing) starred.
    """
    path = Path(path)
    shown = min(len(example.labels), MAX_LABEL_PANELS)
    with Image.open(example.image_path) as opened:
        image = opened.convert("RGB")
    fig, axes = _new_figure(1, shown + 1, figsize=(3.6 * (shown + 1), 4.0), squeeze=False)
    axes = axes[0]
    _draw_image(axes[0], example, image)
    rows, cols = example.grid_shape
    handles = []
    for r in range(shown):
        colour = _LABEL_COLOURS[r % len(_LABEL_COLOURS)]
        fill = np.zeros((rows, cols, 4))
        fill[example.predicted_masks[r].reshape(rows, cols)] = (*colour, 0.45)
        axes[0].imshow(fill, extent=_grid_extent(example), interpolation="nearest")
        # labels after the first are dashed, so outlines of regions on the same patches stay visible
        style = "solid" if r == 0 else (r % 3, (4, 4))
        _outline(axes[0], example, example.true_masks[r], colour, 3.0, style)
        handles.append(Patch(facecolor=(*colour, 0.45), edgecolor=colour, lw=2.5, label=example.labels[r]))
    axes[0].legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=2, fontsize=8, frameon=False
    )
    axes[0].set_title(f"{example.record_id}: predicted (fill) vs true (outline)", fontsize=10)
    cosines = example.cosines[:shown]
    vmin, vmax = float(cosines.min()), float(cosines.max())
    if vmin == vmax:
        vmin, vmax = vmin - 1e-3, vmax + 1e-3
    heat = None
    for r in range(shown):
        ax = axes[r + 1]
        _draw_image(ax, example, image, grey=True)
        heat = ax.imshow(
            cosines[r].reshape(rows, cols),
            extent=_grid_extent(example),
            cmap="magma",
            vmin=vmin,
            vmax=vmax,
            alpha=0.65,
            interpolation="nearest",
        )
        _outline(ax, example, example.true_masks[r], "white", 2.5)
        best = np.unravel_index(int(np.argmax(cosines[r])), (rows, cols))
        (star,) = _grid_to_image(example, np.array([[best[1] + 0.5, best[0] + 0.5]]))
        hit = "hit" if example.pointing_hit[r] else "miss"
        ax.plot(*star, marker="*", markersize=16, color="cyan", markeredgecolor="black")
        ax.set_title(f"{example.labels[r]!r}\nIoU {example.iou[r]:.2f}, pointing {hit}", fontsize=10)
    if heat is not None:
        fig.colorbar(heat, ax=list(axes[1:]), shrink=0.8, label="cosine(patch, label)")
    if shown < len(example.labels):
        fig.suptitle(f"first {shown} of {len(example.labels)} labels", fontsize=9)
    _save(fig, path)
    return path


def plot_patch_words(example: ImageExample, path: str | Path) -> Path:
    """One PNG: the image with its patch grid, each annotated patch labelled with its top MP words.

    Grids wider than 12 patches annotate one patch per k×k block (k in the title) so the text fits.
    """
    path = Path(path)
    rows, cols = example.grid_shape
    stride = max(1, -(-max(rows, cols) // MAX_ANNOTATED_SIDE))
    with Image.open(example.image_path) as opened:
        image = opened.convert("RGB")
    fig, ax = _new_figure(figsize=(8, 8 * rows / cols + 0.6))
    _draw_image(ax, example, image)
    grid_lines = [((0, r), (cols, r)) for r in range(rows + 1)] + [
        ((c, 0), (c, rows)) for c in range(cols + 1)
    ]
    ax.add_collection(
        LineCollection(
            _grid_to_image(example, np.array(grid_lines, dtype=float)),
            colors="white",
            linewidths=0.6,
            alpha=0.7,
        )
    )
    annotated = min(rows, cols) // stride
    font = float(np.clip(90 / max(annotated, 1), 6, 12))
    for r in range(0, rows, stride):
        for c in range(0, cols, stride):
            words = example.patch_words[r * cols + c]
            (centre,) = _grid_to_image(example, np.array([[c + 0.5, r + 0.5]]))
            ax.text(
                *centre,
                "\n".join(words) if words else "-",
                ha="center",
                va="center",
                fontsize=font,
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.75, "lw": 0},
            )
    every = f"; one patch per {stride}×{stride} block" if stride > 1 else ""
    ax.set_title(
        f"{example.record_id}: top matching-pursuit words per patch (largest |coef| first{every})",
        fontsize=11,
    )
    _save(fig, path)
    return path


def _run_ticks(ax: Axes, positions: np.ndarray, names: list[str]) -> None:
    long_names = max(map(len, names)) > 10  # slant long run names so neighbours do not overlap
    ax.set_xticks(positions, names, rotation=20 if long_names else 0, ha="right" if long_names else "center")


def _bars(
    ax: Axes, names: list[str], values: list[float | None], colour: Any, title: str, ylabel: str
) -> None:
    positions = np.arange(len(names))
    heights = [0.0 if v is None else v for v in values]
    bars = ax.bar(positions, heights, color=colour)
    for bar, value in zip(bars, values, strict=True):
        text = "n/a" if value is None else f"{value:.3f}"
        ax.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=9,
            xytext=(0, 2),
            textcoords="offset points",
        )
    _run_ticks(ax, positions, names)
    ax.set_title(title, fontsize=11)
    ax.set_ylabel(ylabel)
    ax.margins(y=0.15)


def plot_run_comparison(runs: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """One PNG comparing runs (name → metrics.json dict): entropies, ΔH, mIoU, pointing accuracy.

    mIoU carries PA's 0.15 line (below it: no real patch-level alignment).
    """
    if not runs:
        raise ValueError("plot_run_comparison needs at least one run")
    path = Path(path)
    names = list(runs)
    compression = [runs[n]["compression"] for n in names]
    alignment = [runs[n]["alignment"] for n in names]
    fig, axes = _new_figure(1, 4, figsize=(max(14, 3.2 * len(names) + 8), 4.2))
    width = 0.8 / 3
    positions = np.arange(len(names))
    for k, (key, label) in enumerate(
        (("h_vision", "H_vision"), ("h_projected", "H_projected"), ("h_words", "H_words"))
    ):
        axes[0].bar(positions + (k - 1) * width, [c[key] for c in compression], width, label=label)
    _run_ticks(axes[0], positions, names)
    axes[0].set_title("matrix entropy", fontsize=11)
    axes[0].set_ylabel("nats")
    axes[0].legend(fontsize=8, loc="upper center", ncol=3)
    axes[0].margins(y=0.2)
    _bars(
        axes[1],
        names,
        [c["delta_h"] for c in compression],
        "tab:purple",
        "compression ΔH = H_vision − H_projected",
        "nats",
    )
    _bars(axes[2], names, [a["miou"] for a in alignment], "tab:green", "Align mIoU", "mIoU")
    axes[2].axhline(MIOU_NO_ALIGNMENT, color="red", ls="--", lw=1, label=f"{MIOU_NO_ALIGNMENT}: no alignment")
    axes[2].legend(fontsize=8, loc="upper right")
    _bars(
        axes[3],
        names,
        [a["pointing_accuracy"] for a in alignment],
        "tab:orange",
        "pointing accuracy",
        "fraction of regions",
    )
    axes[2].set_ylim(0, max(1.0, *[a["miou"] for a in alignment]) * 1.05)
    axes[3].set_ylim(0, 1.1)
    _save(fig, path)
    return path
