"""Scenes of the miniature world: sampling objects, rendering pixels and the exact object id map.

A scene is a non-square image with a few flat-coloured shapes on a textured grey background.
Objects are drawn in order, later ones on top; the id map says which object (1-based, 0 =
background) owns each final pixel, and the RGB image is painted *from* the id map, so an
object's mask is exactly its pixels after occlusion. Everything is a pure function of a numpy
`Generator`, so a scene is reproduced from its seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Saturated colours far from the low-saturation grey backgrounds, so colour is never ambiguous.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 215),
    "yellow": (230, 210, 40),
    "purple": (140, 60, 185),
    "orange": (240, 135, 30),
    "cyan": (40, 200, 210),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "hexagon")
# Object side as a fraction of the image's shorter edge: (low, high) of a uniform draw.
SIZE_FRACTIONS: dict[str, tuple[float, float]] = {
    "small": (0.22, 0.28),
    "medium": (0.32, 0.38),
    "large": (0.42, 0.50),
}
BACKGROUND_TEXTURES = ("noise", "stripes", "checker")
_PLACEMENT_TRIES = 60
_SCENE_TRIES = 40


@dataclass(frozen=True)
class SceneSpec:
    """What scenes may contain. Sizes in pixels; `min_visible` is the fraction of an object's
    own area that must stay visible after occlusion (overlap is allowed up to that)."""

    min_size: int = 64
    max_size: int = 160
    objects_min: int = 2
    objects_max: int = 4
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple")
    sizes: tuple[str, ...] = ("small", "large")
    min_visible: float = 0.6
    # 0: objects anywhere; G >= 2: each object centred in its own cell of a G×G layout of the image,
    # so positions are few and distinct (a tiny LLM can learn to name them in a box)
    layout_grid: int = 0

    def check(self) -> None:
        """Raise ValueError naming the bad property."""
        if not 16 <= self.min_size < self.max_size:
            raise ValueError(f"need 16 <= min_size < max_size (non-square images), got "
                             f"{self.min_size}, {self.max_size}")
        if not 1 <= self.objects_min <= self.objects_max:
            raise ValueError(f"need 1 <= objects_min <= objects_max, got {self.objects_min}, "
                             f"{self.objects_max}")
        for name, chosen, known in (("shape", self.shapes, SHAPES), ("colour", self.colours, PALETTE),
                                    ("size", self.sizes, SIZE_FRACTIONS)):
            unknown = [c for c in chosen if c not in known]
            if unknown or not chosen or len(set(chosen)) != len(chosen):
                raise ValueError(f"{name}s must be distinct names from {sorted(known)}, got {list(chosen)}")
        if self.objects_max > len(self.shapes) * len(self.colours):
            raise ValueError(f"objects_max {self.objects_max} exceeds the "
                             f"{len(self.shapes) * len(self.colours)} distinct colour-shape pairs "
                             "(each pair appears at most once per image)")
        if not 0.0 < self.min_visible <= 1.0:
            raise ValueError(f"min_visible must be in (0, 1], got {self.min_visible}")
        if self.layout_grid == 1 or self.layout_grid < 0 or self.objects_max > self.layout_grid ** 2 > 0:
            raise ValueError(f"layout_grid must be 0 (free) or G >= 2 with G² >= objects_max, got "
                             f"{self.layout_grid} for objects_max {self.objects_max}")


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its bounding square of `side` px has top-left corner (`left`, `top`)."""

    shape: str
    colour: str
    size: str
    left: int
    top: int
    side: int


@dataclass(frozen=True)
class Background:
    grey: int
    tint: tuple[int, int, int]
    gradient: tuple[float, float]
    texture: str
    period: int


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: Background
    objects: tuple[SceneObject, ...]


@dataclass(frozen=True)
class VisibleObject:
    """Ground truth of one object measured on the final pixels.

    `bbox_xyxy` uses pixel edges (x2 = last column + 1); `centroid` is (x, y) in px; `area` in px.
    """

    index: int
    shape: str
    colour: str
    size: str
    bbox_xyxy: tuple[int, int, int, int]
    centroid: tuple[float, float]
    area: int
    full_area: int


def _shape_polygons(shape: str, left: int, top: int, side: int) -> list[list[tuple[float, float]]]:
    """The shape as polygons in pixel coordinates of PIL's drawing grid (circle handled apart)."""
    right, bottom = left + side - 1, top + side - 1
    cx, cy = left + (side - 1) / 2, top + (side - 1) / 2
    if shape == "square":
        inset = side * 0.08  # a full-side square would look much bigger than a circle of that side
        return [[(left + inset, top + inset), (right - inset, top + inset), (right - inset, bottom - inset),
                 (left + inset, bottom - inset)]]
    if shape == "triangle":
        return [[(cx, top), (right, bottom), (left, bottom)]]
    if shape == "diamond":
        return [[(cx, top), (right, cy), (cx, bottom), (left, cy)]]
    if shape == "cross":
        arm = side / 6
        return [[(cx - arm, top), (cx + arm, top), (cx + arm, bottom), (cx - arm, bottom)],
                [(left, cy - arm), (right, cy - arm), (right, cy + arm), (left, cy + arm)]]
    if shape == "hexagon":
        angles = np.deg2rad(np.arange(6) * 60.0)
        radius = (side - 1) / 2
        return [[(cx + radius * float(np.cos(a)), cy + radius * float(np.sin(a))) for a in angles]]
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def object_mask(obj: SceneObject, width: int, height: int) -> np.ndarray:
    """The object's full (unoccluded) mask, (H, W) bool."""
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if obj.shape == "circle":
        draw.ellipse([obj.left, obj.top, obj.left + obj.side - 1, obj.top + obj.side - 1], fill=1)
    else:
        for polygon in _shape_polygons(obj.shape, obj.left, obj.top, obj.side):
            draw.polygon(polygon, fill=1)
    return np.array(canvas, dtype=bool)


def compose_id_map(objects: tuple[SceneObject, ...], width: int, height: int) -> np.ndarray:
    """(H, W) int16: 1 + index of the topmost object at each pixel, 0 for background."""
    id_map = np.zeros((height, width), dtype=np.int16)
    for index, obj in enumerate(objects):
        id_map[object_mask(obj, width, height)] = index + 1
    return id_map


def _visible_enough(objects: tuple[SceneObject, ...], width: int, height: int, min_visible: float) -> bool:
    id_map = compose_id_map(objects, width, height)
    for index, obj in enumerate(objects):
        full = int(object_mask(obj, width, height).sum())
        if full == 0 or (id_map == index + 1).sum() < min_visible * full:
            return False
    return True


def _cell_corner(cell: int, grid: int, side: int, width: int, height: int) -> tuple[int, int]:
    """Top-left corner of a `side` px object centred in cell `cell` (row-major) of a grid×grid layout,
    moved inside the image where the cell is too small for it."""
    row, col = divmod(cell, grid)
    left = round((col + 0.5) * width / grid - side / 2)
    top = round((row + 0.5) * height / grid - side / 2)
    return min(max(left, 0), width - side), min(max(top, 0), height - side)


def _sample_size(spec: SceneSpec, rng: np.random.Generator) -> tuple[int, int]:
    width = int(rng.integers(spec.min_size, spec.max_size + 1))
    height = width
    while height == width:
        height = int(rng.integers(spec.min_size, spec.max_size + 1))
    return width, height


def _sample_background(rng: np.random.Generator) -> Background:
    return Background(
        grey=int(rng.integers(80, 176)),
        tint=tuple(int(v) for v in rng.integers(-8, 9, size=3)),
        gradient=(float(rng.uniform(-25, 25)), float(rng.uniform(-25, 25))),
        texture=str(rng.choice(BACKGROUND_TEXTURES)),
        period=int(rng.integers(4, 13)),
    )


def sample_scene(spec: SceneSpec, rng: np.random.Generator) -> Scene:
    """A random scene: size, background, and `objects_min`..`objects_max` objects.

    Each colour-shape pair occurs at most once (so "the blue square" names one object), every
    object lies inside the image, and each keeps at least `min_visible` of its area visible.
    """
    for _ in range(_SCENE_TRIES):
        width, height = _sample_size(spec, rng)
        wanted = int(rng.integers(spec.objects_min, spec.objects_max + 1))
        pairs = [(c, s) for c in spec.colours for s in spec.shapes]
        chosen = rng.choice(len(pairs), size=wanted, replace=False)
        cells = rng.permutation(spec.layout_grid ** 2) if spec.layout_grid else None
        objects: tuple[SceneObject, ...] = ()
        for number, pair_index in enumerate(chosen):
            colour, shape = pairs[int(pair_index)]
            size = str(rng.choice(spec.sizes))
            low, high = SIZE_FRACTIONS[size]
            for _ in range(_PLACEMENT_TRIES):
                side = max(6, int(round(rng.uniform(low, high) * min(width, height))))
                if cells is None:
                    left = int(rng.integers(0, width - side + 1))
                    top = int(rng.integers(0, height - side + 1))
                else:
                    left, top = _cell_corner(int(cells[number]), spec.layout_grid, side, width, height)
                candidate = SceneObject(shape, colour, size, left, top, side)
                if _visible_enough(objects + (candidate,), width, height, spec.min_visible):
                    objects += (candidate,)
                    break
        if len(objects) >= spec.objects_min:
            return Scene(width, height, _sample_background(rng), objects)
    raise RuntimeError(f"could not place {spec.objects_min} objects in {_SCENE_TRIES} scenes: the sizes "
                       f"are too large for {spec.min_size}-{spec.max_size} px images with "
                       f"min_visible={spec.min_visible}")


def _background_pixels(background: Background, width: int, height: int,
                       rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float: grey level + linear gradient + faint texture + per-pixel noise + a slight tint."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp_x, ramp_y = background.gradient
    level = background.grey + ramp_x * (xs / width - 0.5) + ramp_y * (ys / height - 0.5)
    if background.texture == "stripes":
        level += 10.0 * ((xs + ys) // background.period % 2 * 2 - 1)
    elif background.texture == "checker":
        level += 10.0 * ((xs // background.period + ys // background.period) % 2 * 2 - 1)
    level = level + rng.normal(0.0, 9.0, size=(height, width))
    return level[..., None] + np.asarray(background.tint, dtype=np.float32)


def render_scene(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (H, W, 3) uint8 and the id map (H, W) int16 of `scene`; `rng` draws the noise.

    Object pixels are the palette colour with a per-object brightness shift and per-pixel noise
    (std 6), painted exactly where the id map names the object.
    """
    id_map = compose_id_map(scene.objects, scene.width, scene.height)
    pixels = _background_pixels(scene.background, scene.width, scene.height, rng)
    for index, obj in enumerate(scene.objects):
        where = id_map == index + 1
        shade = float(rng.uniform(-15, 15))
        colour = np.asarray(PALETTE[obj.colour], dtype=np.float32) + shade
        pixels[where] = colour + rng.normal(0.0, 6.0, size=(int(where.sum()), 3))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8), id_map


def measure_objects(scene: Scene, id_map: np.ndarray) -> list[VisibleObject]:
    """Each object's visible box, centroid and area, read off the final id map."""
    measured = []
    for index, obj in enumerate(scene.objects):
        ys, xs = np.nonzero(id_map == index + 1)
        full = int(object_mask(obj, scene.width, scene.height).sum())
        measured.append(VisibleObject(
            index=index, shape=obj.shape, colour=obj.colour, size=obj.size,
            bbox_xyxy=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
            centroid=(float(xs.mean()) + 0.5, float(ys.mean()) + 0.5), area=int(xs.size), full_area=full,
        ))
    return measured
