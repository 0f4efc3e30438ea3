"""The plugin's training data: LLaVA samples plus their PAD regions and/or their SEA patch labels.

`PadAlignedDataset[i]` is `LazySupervisedDataset[i]` plus, when a PAD index is given (patch-cosine),
- `region_masks` (R, N) bool: the vision tokens each region owns (N = grid patches, + 1 with
  `cls_patch`, whose CLS token no region owns),
- `region_label_ids`: R lists of token ids (see `objectives.label_embedding.tokenize_label`),
- counters `pad_regions_skipped` (bad PAD data, `--pad_on_error skip`), `pad_regions_outside`
  (regions with no patch in the model's view, e.g. cropped away in `square` mode) and
  `pad_regions_fallback` (regions given their best patch because none reached τ).
Masks are decoded and pooled here, i.e. in the dataloader workers, off the training
process's critical path. The counters travel with the batch so the trainer can log them
whatever process decoded the masks.

PAD coverage is a checked quantity: the dataset counts the image samples whose id has a PAD record
with regions (`pad_coverage`), logs it when built, and raises `PadCoverageError` when none is covered
or fewer than `min_pad_coverage` (`--pad_min_coverage`) are, so that ids which do not join never
turn a patch-aligned run into a caption-only one.

With SEA labels (`SeaLabels`), each item also carries `sea_word_ids` (N_grid, n) long (−1 = no
word) and `sea_scores` (N_grid, n) float32: the sample's labels on the training patch grid
(row-major patches only; with `cls_patch` the CLS token has no label and the trainer shifts by 1).
Text-only samples carry all −1 / 0. The labels must have been made with the training geometry:
the same grid and `--image_aspect_ratio` (checked when the dataset is built), and every image
sample must have labels (checked up front, naming the missing ids).

`PadAlignedCollator` batches the regions ragged: `region_masks` (ΣR, N), `region_sample_index`
(ΣR,), `region_label_ids` (ΣR, L_max) padded with 0 and `region_label_mask` (ΣR, L_max); and
stacks the SEA labels to `sea_word_ids` / `sea_scores` (B, N_grid, n).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from llava.mm_utils import ProcessorGeometry, processor_geometry, processor_input_size
from llava.train.data import DataCollatorForSupervisedDataset, LazySupervisedDataset
from llava.train.llava_trainer import unwrap_peft
from patch_align.geometry import (
    coverage_to_patch_mask,
    mask_to_patch_coverage,
    patch_placement,
    processor_transform,
    vision_token_offset,
)
from patch_align.objectives.label_embedding import pad_token_ids, tokenize_label
from patch_align.pad import MaskDecodeError, PadFormatError, PadRecord, decode_region_mask, find_pad_record
from patch_align.sea.store import SeaLabels

logger = logging.getLogger(__name__)

PAD_ON_ERROR = ("error", "skip")
REGION_COUNTERS = ("pad_regions_skipped", "pad_regions_outside", "pad_regions_fallback")


class PadRecordError(ValueError):
    """A PAD record (or one of its regions) that cannot be used for training; names the id."""


class SeaLabelError(ValueError):
    """SEA labels that do not fit the training run (geometry, missing samples); names the folder."""


class PadCoverageError(ValueError):
    """Too few training samples have PAD regions (ids that do not join); names the data file."""


@dataclass(frozen=True)
class PadCoverage:
    """How much of a training set a PAD index covers (`PadAlignedDataset.pad_coverage`).

    `covered` counts the image samples (the only ones a region can belong to) whose id has a PAD
    record with at least one region; `unmatched_records` the PAD records whose id is no sample's.
    """

    image_samples: int
    covered: int
    records: int
    unmatched_records: int

    @property
    def fraction(self) -> float:
        return self.covered / self.image_samples if self.image_samples else 0.0

    def describe(self) -> str:
        return (
            f"{self.covered} of {self.image_samples} image samples ({self.fraction:.1%}) have PAD regions; "
            f"{self.unmatched_records} of {self.records} PAD records match no sample"
        )

    def as_dict(self) -> dict[str, int | float]:
        """The counts and the fraction (what the saved config.json and the reporters record)."""
        return {**asdict(self), "fraction": self.fraction}


def check_min_pad_coverage(fraction: float) -> None:
    """`--pad_min_coverage` is a fraction of the image samples: `ValueError` outside [0, 1]."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"--pad_min_coverage must be in [0, 1], got {fraction}")


@dataclass(frozen=True)
class PatchGrid:
    """Where regions land: the image transform mode, the processor's sizes and the tower's patches.

    `aspect_mode` is `--image_aspect_ratio` (`pad` or `square`); `image_processor` the
    tower's processor (CLIP's or SigLIP's: it owns the resize and crop, see `patch_align.geometry`);
    `patch_size` the tower's patch side in model pixels;
    `select_feature` `--mm_vision_select_feature` (`cls_patch` puts CLS first).
    """

    aspect_mode: str
    image_processor: Any
    patch_size: int
    select_feature: str = "patch"

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, columns) of patches on the processor's output (CLIP's crop, SigLIP's resize)."""
        height, width = processor_input_size(self.image_processor)
        return height // self.patch_size, width // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Vision tokens per image N (patches, plus CLS with `cls_patch`)."""
        rows, cols = self.grid_shape
        return rows * cols + vision_token_offset(self.select_feature)

    @classmethod
    def of_tower(
        cls, tower: Any, aspect_mode: str, image_processor: Any, select_feature: str = "patch"
    ) -> PatchGrid:
        """The grid of a loaded vision tower (its `config.patch_size`); raises `ValueError` when the
        processor's output does not give the tower's `num_patches_per_side` square grid, or when the
        tower returns another number of tokens (e.g. a CLS count other than `cls_patch`'s one)."""
        grid = cls(
            aspect_mode=aspect_mode,
            image_processor=image_processor,
            patch_size=tower.config.patch_size,
            select_feature=select_feature,
        )
        if grid.grid_shape != (tower.num_patches_per_side, tower.num_patches_per_side):
            raise ValueError(
                f"the image processor's output gives a {grid.grid_shape} patch grid, the vision tower "
                f"{tower.num_patches_per_side}x{tower.num_patches_per_side}"
            )
        if tower.select_feature != select_feature or grid.num_tokens != tower.num_tokens:
            raise ValueError(
                f"mm_vision_select_feature {select_feature!r} gives {grid.num_tokens} vision tokens, the "
                f"vision tower returns {tower.num_tokens} (select feature {tower.select_feature!r})"
            )
        return grid

    @classmethod
    def of_training(cls, ctx: Any, needed_by: str) -> PatchGrid:
        """The grid of a training run (a `TrainContext`): its tower, `--image_aspect_ratio` and
        `--mm_vision_select_feature`; `ValueError` "`needed_by` needs --vision_tower" without a tower."""
        tower = unwrap_peft(ctx.model).get_vision_tower()
        if tower is None:
            raise ValueError(f"{needed_by} needs --vision_tower")
        return cls.of_tower(
            tower,
            aspect_mode=ctx.data_args.image_aspect_ratio,
            image_processor=ctx.data_args.image_processor,
            select_feature=ctx.model_args.mm_vision_select_feature,
        )


@dataclass(frozen=True, eq=False)
class RegionPatches:
    """One PAD region on the patch grid (see `region_patches`).

    `owned` (G_h·G_w,) bool, row-major: the patches the region owns; all False when the region
    has no patch in the model's view (`outside`). `used_fallback`: no patch reached τ and the
    fallback gave it its best one. `problem`: why the region is bad PAD data (`owned` is then None).
    """

    index: int
    label: str
    label_ids: list[int]
    owned: np.ndarray | None = None
    used_fallback: bool = False
    problem: str | None = None

    @property
    def outside(self) -> bool:
        return self.owned is not None and not self.owned.any()


def region_patches(
    record: PadRecord,
    grid: PatchGrid,
    tokenize: Callable[[str], list[int]],
    threshold: float,
    fallback: str = "argmax",
) -> Iterator[RegionPatches]:
    """Each region of `record`, in order, on `grid`: the one region geometry of training and analysis.

    A region whose label has no tokens (`tokenize`), whose mask does not decode (or has the
    wrong size) or is empty comes with a `problem` naming it; the others are pooled onto the
    patches (`mask_to_patch_coverage`) and given their patches with threshold τ and `fallback`
    (`coverage_to_patch_mask`). Lazy, so a caller that stops at a problem decodes nothing more.
    """
    transform = processor_transform(record.width, record.height, grid.aspect_mode, grid.image_processor)
    for index, region in enumerate(record.regions):
        where = f"region {index} ({region.label!r})"
        ids = tokenize(region.label)
        if not ids:
            yield RegionPatches(index, region.label, ids, problem=f"{where}: label has no tokens")
            continue
        try:
            mask = decode_region_mask(region, record.height, record.width)
        except MaskDecodeError as err:
            yield RegionPatches(index, region.label, ids, problem=f"{where}: {err}")
            continue
        if not mask.any():
            yield RegionPatches(index, region.label, ids, problem=f"{where}: empty mask")
            continue
        coverage = mask_to_patch_coverage(mask, transform, patch_size=grid.patch_size)
        owned, used_fallback = coverage_to_patch_mask(coverage, threshold, fallback)
        yield RegionPatches(index, region.label, ids, owned.reshape(-1), used_fallback)


@dataclass
class RegionTargets:
    """One sample's usable regions: masks (R, N) bool, label ids, and the per-sample counters."""

    masks: torch.Tensor
    label_ids: list[list[int]]
    skipped: int = 0
    outside: int = 0
    fallback: int = 0


class PadAlignedDataset(LazySupervisedDataset):
    """LLaVA's lazy dataset whose items also carry the regions of the sample's PAD record
    (`pad_index` given) and its SEA patch labels (`sea_labels` given).

    Samples without a PAD record, without regions, or without an image yield R = 0 and
    train on the caption loss alone; when no image sample, or fewer than the fraction
    `min_pad_coverage` of them, has regions, building the dataset raises `PadCoverageError`.
    With `on_error="error"` a bad record (image joined to another picture, image size
    differing from the record, undecodable or mis-sized mask, empty mask, label without
    tokens) raises `PadRecordError` naming the id; with `"skip"` its bad regions are
    dropped, counted and logged.
    """

    def __init__(
        self,
        data_path: str,
        tokenizer,
        data_args,
        pad_index: dict[str, PadRecord] | None,
        grid: PatchGrid,
        threshold: float,
        fallback: str = "argmax",
        on_error: str = "error",
        sea_labels: SeaLabels | None = None,
        min_pad_coverage: float = 0.0,
    ):
        super().__init__(data_path, tokenizer, data_args)
        if pad_index is None and sea_labels is None:
            raise ValueError("PadAlignedDataset needs a PAD index, SEA labels, or both")
        if on_error not in PAD_ON_ERROR:
            raise ValueError(f"--pad_on_error must be one of {PAD_ON_ERROR}, got {on_error!r}")
        coverage_to_patch_mask(np.zeros((1, 1)), threshold, fallback)  # validates τ and fallback up front
        self.data_path = str(data_path)
        self.pad_index = pad_index
        self.grid = grid
        self.threshold = threshold
        self.fallback = fallback
        self.on_error = on_error
        self._label_ids: dict[str, list[int]] = {}
        self.skipped_regions = 0  # in this process (each dataloader worker counts its own)
        self.sea_labels = sea_labels
        if sea_labels is not None:
            self._check_sea_labels(sea_labels)
        self.pad_coverage: PadCoverage | None = None
        if pad_index is not None:
            self.pad_coverage = self._check_pad_coverage(pad_index, min_pad_coverage)

    def _check_pad_coverage(self, pad_index: dict[str, PadRecord], min_coverage: float) -> PadCoverage:
        check_min_pad_coverage(min_coverage)
        image_ids = [self.sample_id(i) for i, s in enumerate(self.list_data_dict) if "image" in s]
        uncovered = [i for i in image_ids if i not in pad_index or not pad_index[i].regions]
        sample_ids = {self.sample_id(i) for i in range(len(self))}
        unmatched = [pad_id for pad_id in pad_index if pad_id not in sample_ids]
        coverage = PadCoverage(
            len(image_ids), len(image_ids) - len(uncovered), len(pad_index), len(unmatched)
        )
        if coverage.covered == 0 or coverage.fraction < min_coverage:
            needed = "at least one" if min_coverage == 0 else f"at least {min_coverage:.1%}"
            raise PadCoverageError(
                f"{self.data_path}: {coverage.describe()}, --pad_min_coverage {min_coverage} "
                f"needs {needed}; samples without regions e.g. {uncovered[:3]}, PAD ids matching no "
                f"sample e.g. {unmatched[:3]} (PAD records join samples by 'id')"
            )
        # partial coverage is worth seeing on every rank: those samples train on the caption alone
        log = logger.info if coverage.covered == coverage.image_samples else logger.warning
        log("PAD coverage of %s: %s", self.data_path, coverage.describe())
        return coverage

    def _check_sea_preprocessing(self, labels: SeaLabels, where: str) -> None:
        """The labeller's processor must put patch (row, col) where the training tower's does
        (`patch_placement`): in `square` mode a CLIP labeller crops a non-square image, SigLIP stretches."""
        mode = self.grid.aspect_mode
        training = processor_geometry(self.grid.image_processor)
        recorded = labels.settings.get("preprocessing")
        if recorded is None:
            # labels made before the labeller's preprocessing was recorded: all by a CLIP processor,
            # whose sizes are unknown; accepted, as then, for a tower that resizes and crops as CLIP does
            if training.shortest_edge is None:
                raise SeaLabelError(
                    f"{where} does not record its labeller's preprocessing, and the vision tower's "
                    f"processor ({type(self.grid.image_processor).__name__}) does not crop as CLIP's: "
                    "label again with this patch-align to check that the patches match"
                )
            return
        labelled = ProcessorGeometry.from_dict(recorded)
        if patch_placement(labelled, recorded["patch_size"], mode) != patch_placement(
            training, self.grid.patch_size, mode
        ):
            raise SeaLabelError(
                f"{where} was labelled with a processor that {labelled.describe()} "
                f"({recorded['patch_size']}-px patches), the vision tower's "
                f"{training.describe()} ({self.grid.patch_size}-px patches): with "
                f"--image_aspect_ratio {mode} patch (row, col) would not cover the same pixels"
            )

    def _check_sea_labels(self, labels: SeaLabels) -> None:
        where = f"--sea_labels {labels.out_dir}"
        if labels.grid != self.grid.grid_shape:
            raise SeaLabelError(
                f"{where} has a {labels.grid} patch grid, the vision tower {self.grid.grid_shape}: "
                "label with the training tower's image size and patch size"
            )
        geometry = labels.settings.get("image_aspect_ratio")
        if geometry != self.grid.aspect_mode:
            raise SeaLabelError(
                f"{where} was labelled with --image-aspect-ratio {geometry}, training uses "
                f"--image_aspect_ratio {self.grid.aspect_mode}: patch (row, col) would not match"
            )
        self._check_sea_preprocessing(labels, where)
        missing = [
            self.sample_id(i)
            for i, sample in enumerate(self.list_data_dict)
            if "image" in sample and self.sample_id(i) not in labels
        ]
        if missing:
            raise SeaLabelError(
                f"{where} has no labels for {len(missing)} image sample(s) of {self.data_path}, "
                f"e.g. {missing[:5]}; reasons recorded by the labelling run: "
                f"{[labels.skipped.get(m, 'not in the labelled data file') for m in missing[:5]]}"
            )
        logger.info(
            "SEA coverage of %s: all its image samples are labelled (%d labelled samples in %s)",
            self.data_path,
            len(labels),
            labels.out_dir,
        )

    def sea_targets(self, sample: dict, sample_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(`sea_word_ids` (N_grid, n) long, `sea_scores` (N_grid, n) float32); all −1 / 0 without image."""
        if "image" in sample:
            word_ids, scores = self.sea_labels.labels(sample_id)
            return word_ids.long(), scores.float()
        settings = self.sea_labels.settings
        rows, cols = self.sea_labels.grid
        shape = (rows * cols, min(settings["top_n"], settings["vocab_size"]))
        return torch.full(shape, -1, dtype=torch.long), torch.zeros(shape, dtype=torch.float32)

    def get_item(self, i: int) -> dict[str, Any]:
        item = super().get_item(i)
        sample = self.list_data_dict[i]
        if self.sea_labels is not None:
            item["sea_word_ids"], item["sea_scores"] = self.sea_targets(sample, self.sample_id(i))
        if self.pad_index is None:
            return item
        targets = self.region_targets(sample, self.sample_id(i))
        item["region_masks"] = targets.masks
        item["region_label_ids"] = targets.label_ids
        item["pad_regions_skipped"] = targets.skipped
        item["pad_regions_outside"] = targets.outside
        item["pad_regions_fallback"] = targets.fallback
        return item

    def _no_regions(self, skipped: int = 0) -> RegionTargets:
        return RegionTargets(torch.zeros((0, self.grid.num_tokens), dtype=torch.bool), [], skipped=skipped)

    def _bad(self, record_id: str, reason: str, n_regions: int) -> None:
        """Raise (`error`) or count and log (`skip`) `n_regions` regions lost to bad PAD data."""
        if self.on_error == "error":
            raise PadRecordError(
                f"PAD record {record_id}: {reason} "
                "(fix the PAD file, or pass --pad_on_error skip to drop such regions)"
            )
        self.skipped_regions += n_regions
        logger.warning(
            "PAD record %s: skipping %d region(s): %s (%d skipped so far in this process)",
            record_id,
            n_regions,
            reason,
            self.skipped_regions,
        )

    def region_targets(self, sample: dict, sample_id: str) -> RegionTargets:
        """The usable regions of one LLaVA sample (R = 0 when it has no image or PAD record)."""
        if "image" not in sample:
            return self._no_regions()
        try:
            record = find_pad_record(self.pad_index, sample_id, sample["image"])
        except PadFormatError as err:
            record = self.pad_index[sample_id]
            self._bad(sample_id, str(err), len(record.regions))
            return self._no_regions(len(record.regions))
        if record is None or not record.regions:
            return self._no_regions()
        image_path = Path(self.data_args.image_folder or "") / record.image
        with Image.open(image_path) as image:
            actual = image.size
        if actual != (record.width, record.height):
            self._bad(
                record.id,
                f"image {image_path} is {actual[0]}x{actual[1]}, the record says "
                f"{record.width}x{record.height}",
                len(record.regions),
            )
            return self._no_regions(len(record.regions))

        offset = vision_token_offset(self.grid.select_feature)
        masks, label_ids = [], []
        targets = self._no_regions()
        for region in region_patches(record, self.grid, self._tokenize, self.threshold, self.fallback):
            if region.problem is not None:
                self._bad(record.id, region.problem, 1)
                targets.skipped += 1
                continue
            if region.outside:
                targets.outside += 1
                continue
            targets.fallback += int(region.used_fallback)
            token_mask = torch.zeros(self.grid.num_tokens, dtype=torch.bool)
            token_mask[offset:] = torch.from_numpy(region.owned)
            masks.append(token_mask)
            label_ids.append(region.label_ids)
        if masks:
            targets.masks = torch.stack(masks)
            targets.label_ids = label_ids
        return targets

    def _tokenize(self, label: str) -> list[int]:
        if label not in self._label_ids:
            self._label_ids[label] = tokenize_label(self.tokenizer, label)
        return self._label_ids[label]


@dataclass
class PadAlignedCollator:
    """LLaVA's collator plus the ragged region tensors and summed counters, and the stacked SEA labels
    (see the module docstring); each part only when the items carry it."""

    base: DataCollatorForSupervisedDataset

    def __call__(self, instances: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.base(instances)
        if "sea_word_ids" in instances[0]:
            batch["sea_word_ids"] = torch.stack([inst["sea_word_ids"] for inst in instances])
            batch["sea_scores"] = torch.stack([inst["sea_scores"] for inst in instances])
        if "region_masks" in instances[0]:
            self._add_regions(batch, instances)
        return batch

    @staticmethod
    def _add_regions(batch: dict[str, torch.Tensor], instances: list[dict]) -> None:
        masks = [inst["region_masks"] for inst in instances]
        label_ids, label_mask = pad_token_ids([ids for inst in instances for ids in inst["region_label_ids"]])
        batch["region_masks"] = torch.cat(masks)
        batch["region_sample_index"] = torch.cat(
            [torch.full((m.shape[0],), sample, dtype=torch.long) for sample, m in enumerate(masks)]
        )
        batch["region_label_ids"] = label_ids
        batch["region_label_mask"] = label_mask
        for counter in REGION_COUNTERS:
            batch[counter] = torch.tensor(sum(inst[counter] for inst in instances), dtype=torch.long)
