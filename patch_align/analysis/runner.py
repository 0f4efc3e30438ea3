"""Run every analysis metric of docs/metrics.md on a real checkpoint over the images of a PAD file.

Data flow per batch of B images: pixels (B, 3, H, W) → vision tower → vision tokens (B, N, C)
→ projector → projected tokens (B, N, D). Entropies see all N tokens the LLM receives; the
per-patch metrics (alignment, decomposition, probes) see the G·G grid patches (the CLS token,
present with ``mm_vision_select_feature=cls_patch``, belongs to no patch). Region masks use the
same geometry code as patch-aligned training (``patch_align.data.PatchGrid.of_tower`` and
``region_patches``): the model config's ``image_aspect_ratio``, the tower's processor sizes and
patch size, threshold τ and fallback.

Memory does not grow with the number of images: tokens are consumed batch by batch and only
fixed-size sums (plus a few example images for the figures) are kept.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from patch_align.analysis.alignment import AlignmentAccumulator, cosine_maps, image_alignment
from patch_align.analysis.alignment import predict_region_masks as predict_masks
from patch_align.analysis.decomposition import (
    atoms_by_sign,
    matching_pursuit,
    orthogonal_matching_pursuit,
    word_match_counts,
    word_scores,
    word_token_ids,
)
from patch_align.analysis.entropy import (
    SecondMomentAccumulator,
    TokenSetEntropy,
    compression_report,
    pooled_entropies,
)
from patch_align.analysis.probes import nearest_word_distances, nearest_words
from patch_align.geometry import (
    DEFAULT_PATCH_MASK_THRESHOLD,
    ImageTransform,
    coverage_to_patch_mask,
    processor_transform,
    vision_token_offset,
)
from patch_align.objectives.label_embedding import mean_label_embeddings, tokenize_label
from patch_align.pad import PadRecord, iter_pad_records

logger = logging.getLogger(__name__)

PURSUITS = ("omp", "mp")
ON_ERROR = ("error", "skip")
TOP_NEAREST_WORDS = 10
_EMBED_CHUNK = 4096  # rows of the word table embedded / accumulated at a time


class AnalysisInputError(ValueError):
    """A PAD record, image or setting the analysis cannot use; the message names it."""


@dataclass(frozen=True)
class AnalysisOptions:
    """Every choice of an analysis run; the estimator options mirror the pure functions' keywords.

    batch_size: images per tower forward. max_images: stop after this many PAD records (None: all).
    patch_mask_threshold / patch_mask_fallback: τ and fallback of ``coverage_to_patch_mask``.
    on_error: ``error`` raises on a bad record or region; ``skip`` drops it, counts and logs it.
    entropy_*: ``center``, ``normalize`` and Rényi ``order`` of the matrix entropies.
    assign, background_threshold, threshold_k, fixed_threshold: see ``predict_region_masks``.
    pursuit: ``omp`` or ``mp``; max_atoms, residual_tol, chunk_size: their keywords.
    word_min_chars, word_alpha_only: the vocabulary filter ``word_token_ids``.
    example_images: how many images keep their maps for the figures; words_per_patch: MP words
    shown per patch in those figures.
    caption_file: a LLaVA JSON whose answer turns are the text token sets of the caption-side
    entropies (None: the word table only); max_captions: read at most this many of them.
    """

    batch_size: int = 8
    max_images: int | None = None
    patch_mask_threshold: float = DEFAULT_PATCH_MASK_THRESHOLD
    patch_mask_fallback: str = "argmax"
    on_error: str = "error"
    entropy_center: bool = False
    entropy_normalize: bool = True
    entropy_order: float = 1.0
    assign: str = "argmax"
    background_threshold: float | None = None
    threshold_k: float = 1.0
    fixed_threshold: float | None = None
    pursuit: str = "omp"
    max_atoms: int = 8
    residual_tol: float = 1e-3
    chunk_size: int = 256
    word_min_chars: int = 2
    word_alpha_only: bool = True
    example_images: int = 4
    words_per_patch: int = 2
    caption_file: str | None = None
    max_captions: int | None = None

    def __post_init__(self) -> None:
        positive = {
            "batch_size": self.batch_size,
            "max_atoms": self.max_atoms,
            "chunk_size": self.chunk_size,
            "words_per_patch": self.words_per_patch,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in ("max_images", "max_captions"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.example_images < 0:
            raise ValueError(f"example_images must be >= 0, got {self.example_images}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")
        if self.pursuit not in PURSUITS:
            raise ValueError(f"pursuit must be one of {PURSUITS}, got {self.pursuit!r}")
        if not 0.0 <= self.residual_tol < 1.0:
            # at >= 1 no atom is ever chosen, and word precision would be undefined
            raise ValueError(f"residual_tol must be in [0, 1), got {self.residual_tol}")
        if not (self.entropy_order > 0 and math.isfinite(self.entropy_order)):
            raise ValueError(f"entropy_order must be a finite number > 0, got {self.entropy_order}")
        coverage_to_patch_mask(np.zeros((1, 1)), self.patch_mask_threshold, self.patch_mask_fallback)
        AlignmentAccumulator(**self.alignment_options())  # rejects bad option combinations now

    def alignment_options(self) -> dict[str, Any]:
        return {
            "assign": self.assign,
            "background_threshold": self.background_threshold,
            "threshold_k": self.threshold_k,
            "fixed_threshold": self.fixed_threshold,
        }


@dataclass(frozen=True)
class ImageExample:
    """What the per-image figures show for one image; P = G_h · G_w patches, R regions.

    cosines (R, P) float32, true_masks / predicted_masks (R, P) bool, iou (R,), pointing_hit (R,),
    patch_words: P lists of the patch's top matching-pursuit words (largest |coefficient| first).
    """

    record_id: str
    image_path: Path
    transform: ImageTransform
    grid_shape: tuple[int, int]
    patch_size: int
    labels: list[str]
    cosines: np.ndarray
    true_masks: np.ndarray
    predicted_masks: np.ndarray
    iou: list[float]
    pointing_hit: list[bool]
    patch_words: list[list[str]]


@dataclass
class PreparedImage:
    """One PAD record ready for the model: pixels (3, H, W) and its usable regions' masks (R, P) bool."""

    record: PadRecord
    image_path: Path
    pixels: torch.Tensor
    transform: ImageTransform
    labels: list[str]
    label_token_ids: list[list[int]]
    masks: torch.Tensor


@dataclass
class RegionCounts:
    """Regions of the PAD records read: used, and why the others were not."""

    used: int = 0
    skipped_bad: int = 0
    outside_view: int = 0
    fallback: int = 0
    images_skipped_bad: int = 0


class AnalysisAccumulator:
    """Model-free accumulation of all metrics; fed token tensors, it never sees pixels or files.

    ``dictionary`` (V_w, D) holds the LLM input embeddings of the filtered words, ``word_ids``
    (V_w,) their vocabulary ids and ``word_texts`` their display strings. All tokens are
    analysed in float32 on the dictionary's device.
    """

    def __init__(
        self,
        dictionary: torch.Tensor,
        word_ids: torch.Tensor,
        word_texts: Sequence[str],
        options: AnalysisOptions,
    ) -> None:
        if dictionary.dim() != 2 or not dictionary.shape[0] == word_ids.numel() == len(word_texts):
            raise ValueError(
                f"dictionary (V_w, D), word_ids (V_w,) and word_texts must agree, got "
                f"{tuple(dictionary.shape)}, {tuple(word_ids.shape)}, {len(word_texts)}"
            )
        if dictionary.shape[0] == 0:
            raise ValueError(
                "the word filter kept no vocabulary entry: loosen word_min_chars/word_alpha_only"
            )
        self.options = options
        self.dictionary = dictionary.float()
        self.word_ids = word_ids.to(self.dictionary.device)
        self.word_texts = list(word_texts)
        self._row_of_word = {int(w): row for row, w in enumerate(word_ids.tolist())}
        entropy = {"center": options.entropy_center, "normalize": options.entropy_normalize}
        self._h_words = SecondMomentAccumulator(self.dictionary.shape[1], **entropy)
        for rows in self.dictionary.split(_EMBED_CHUNK):
            self._h_words.update(rows)
        self._h_vision: SecondMomentAccumulator | None = None
        self._h_projected = SecondMomentAccumulator(self.dictionary.shape[1], **entropy)
        per_set = {"normalize": options.entropy_normalize, "order": options.entropy_order}
        self._sets_vision = TokenSetEntropy(**per_set)
        self._sets_projected = TokenSetEntropy(**per_set)
        self._sets_captions = TokenSetEntropy(**per_set)
        self._h_captions = SecondMomentAccumulator(self.dictionary.shape[1], **entropy)
        self.alignment = AlignmentAccumulator(**options.alignment_options())
        self._pursuit = orthogonal_matching_pursuit if options.pursuit == "omp" else matching_pursuit
        self._patches = 0
        self._explained_sum = 0.0
        self._atoms_sum = 0
        self._word_counts = Counter(word_match_counts([], []))  # every count, at 0
        self._negative_counts = Counter(word_match_counts([], []))
        self._any_sign_counts = Counter(word_match_counts([], []))
        self._label_tokens_outside_dictionary = 0
        self._distance_sum = 0.0
        self._nearest_counts: Counter[int] = Counter()
        self._nearest_is_label = 0
        self._labelled_patches = 0

    def add_tokens(self, vision_tokens: torch.Tensor, projected_tokens: torch.Tensor) -> None:
        """Entropy input: every token the LLM receives, vision (M, C) and projected (M, D)."""
        if self._h_vision is None:
            self._h_vision = SecondMomentAccumulator(
                vision_tokens.shape[-1],
                center=self.options.entropy_center,
                normalize=self.options.entropy_normalize,
            )
        self._h_vision.update(vision_tokens.float())
        self._h_projected.update(projected_tokens.float())

    def add_image_tokens(self, vision_tokens: torch.Tensor, projected_tokens: torch.Tensor) -> None:
        """A batch of images' tokens, vision (B, N, C) and projected (B, N, D): the pooled entropies
        of ``add_tokens`` and the per-image ones (each image its own token set)."""
        self.add_tokens(vision_tokens.flatten(0, 1), projected_tokens.flatten(0, 1))
        self._sets_vision.update(vision_tokens.float())
        self._sets_projected.update(projected_tokens.float())

    def add_caption_tokens(self, caption_tokens: torch.Tensor) -> None:
        """The input embeddings (L, D) of one caption's tokens: a text-side token set."""
        self._h_captions.update(caption_tokens.to(device=self.dictionary.device, dtype=torch.float32))
        self._sets_captions.update(caption_tokens.float())

    def add_image(
        self,
        patch_tokens: torch.Tensor,
        label_embeddings: torch.Tensor,
        true_masks: torch.Tensor,
        label_token_ids: Sequence[Sequence[int]],
    ) -> None:
        """Per-patch metrics of one image.

        Args:
            patch_tokens: (P, D) projected patch tokens, row-major over the grid.
            label_embeddings: (R, D) one embedding per region label (R may be 0).
            true_masks: (R, P) bool patch masks of the regions.
            label_token_ids: R lists of the labels' vocabulary ids (the words a patch should decompose into).
        """
        device = self.dictionary.device
        patch_tokens = patch_tokens.to(device=device, dtype=torch.float32)
        true_masks = true_masks.to(device=device, dtype=torch.bool)
        if label_embeddings.shape[0]:
            self.alignment.update(
                patch_tokens, label_embeddings.to(device=device, dtype=torch.float32), true_masks
            )
        truth = self._patch_truth(true_masks, label_token_ids)
        self._decompose(patch_tokens, truth)
        self._probe(patch_tokens, truth)

    def pursue(self, patch_tokens: torch.Tensor):
        """The configured pursuit of (P, D) tokens over the word dictionary (atom ids are dictionary rows)."""
        return self._pursuit(
            patch_tokens,
            self.dictionary,
            max_atoms=self.options.max_atoms,
            residual_tol=self.options.residual_tol,
            chunk_size=self.options.chunk_size,
        )

    def _patch_truth(
        self, true_masks: torch.Tensor, label_token_ids: Sequence[Sequence[int]]
    ) -> list[set[int]]:
        """Per patch, the dictionary rows of the label tokens of every region covering it."""
        if len(label_token_ids) != true_masks.shape[0]:
            raise ValueError(f"{len(label_token_ids)} label id lists for {true_masks.shape[0]} region masks")
        label_rows = []
        for ids in label_token_ids:
            rows = {self._row_of_word[i] for i in ids if i in self._row_of_word}
            self._label_tokens_outside_dictionary += sum(1 for i in ids if i not in self._row_of_word)
            label_rows.append(rows)
        truth: list[set[int]] = [set() for _ in range(true_masks.shape[1])]
        for rows, mask in zip(label_rows, true_masks.cpu(), strict=True):
            for patch in mask.nonzero().squeeze(-1).tolist():
                truth[patch] |= rows
        return truth

    def _decompose(self, patch_tokens: torch.Tensor, truth: list[set[int]]) -> None:
        code = self.pursue(patch_tokens)
        self._patches += patch_tokens.shape[0]
        self._explained_sum += float(code.explained_variance.sum())
        self._atoms_sum += int(code.atoms_used.sum())
        signed = atoms_by_sign(code)
        self._word_counts.update(word_match_counts(signed.positive_ids, truth))
        self._negative_counts.update(word_match_counts(signed.negative_ids, truth))
        self._any_sign_counts.update(word_match_counts(code.atom_ids, truth))

    def _probe(self, patch_tokens: torch.Tensor, truth: list[set[int]]) -> None:
        nearest, _ = nearest_words(patch_tokens, self.dictionary, top_k=1, chunk_size=self.options.chunk_size)
        distances, _ = nearest_word_distances(
            patch_tokens, self.dictionary, chunk_size=self.options.chunk_size
        )
        self._distance_sum += float(distances.double().sum())
        rows = nearest.squeeze(-1).tolist()
        self._nearest_counts.update(rows)
        for row, true_rows in zip(rows, truth, strict=True):
            if true_rows:
                self._labelled_patches += 1
                self._nearest_is_label += row in true_rows

    def result(self) -> dict[str, Any]:
        """All metrics as a JSON-ready dict (sections compression, alignment, decomposition, probes)."""
        if self._h_vision is None or self._patches == 0:
            raise ValueError("no image was analysed")
        order = self.options.entropy_order
        compression = compression_report(
            self._h_vision.entropy(order), self._h_projected.entropy(order), self._h_words.entropy(order)
        )
        compression.update(
            {
                "tokens": self._h_vision.count,
                "words": self._h_words.count,
                "center": self.options.entropy_center,
                "normalize": self.options.entropy_normalize,
                "order": order,
            }
        )
        counts = dict(self._word_counts)
        scores = word_scores(counts)
        decomposition = {
            "method": self.options.pursuit,
            "max_atoms": self.options.max_atoms,
            "residual_tol": self.options.residual_tol,
            "patches": self._patches,
            "mean_explained_variance": self._explained_sum / self._patches,
            "mean_atoms_used": self._atoms_sum / self._patches,
            "word_precision": scores["precision"],
            "word_recall": scores["recall"],
            "word_f1": scores["f1"],
            **counts,
            "negative_true_positives": self._negative_counts["true_positives"],
            "negative_recovered_total": self._negative_counts["recovered_total"],
            "any_sign_word_precision": word_scores(self._any_sign_counts)["precision"],
            "any_sign_word_recall": word_scores(self._any_sign_counts)["recall"],
            "label_tokens_outside_dictionary": self._label_tokens_outside_dictionary,
        }
        probes = {
            "embedding_gap": self._distance_sum / self._patches,
            "patches": self._patches,
            "nearest_word_is_label_rate": (
                self._nearest_is_label / self._labelled_patches if self._labelled_patches else None
            ),
            "labelled_patches": self._labelled_patches,
            "top_nearest_words": [
                [self.word_texts[row], count]
                for row, count in self._nearest_counts.most_common(TOP_NEAREST_WORDS)
            ],
        }
        return {
            "compression": compression,
            "entropy": self.entropy_variants(),
            "alignment": self.alignment.result(),
            "decomposition": decomposition,
            "probes": probes,
            "dictionary": {
                "words": len(self.word_texts),
                "min_chars": self.options.word_min_chars,
                "alpha_only": self.options.word_alpha_only,
            },
        }

    def entropy_variants(self) -> dict[str, Any]:
        """Every entropy variant of docs/metrics.md §1b: per side, ``pooled`` (one density matrix
        over all tokens, see ``pooled_entropies``) and ``per_set`` (each image or caption its own,
        see ``TokenSetEntropy``); ``delta_h`` vision − projected for each comparable variant.

        Sides: ``vision``, ``projected``, ``words`` (the dictionary table, pooled only) and
        ``captions`` (None without ``caption_file``)."""
        order = self.options.entropy_order
        if self._h_vision is None:
            raise ValueError("no image was analysed")
        sides: dict[str, Any] = {
            "vision": {
                "pooled": pooled_entropies(self._h_vision, order),
                "per_set": self._sets_vision.result(),
            },
            "projected": {
                "pooled": pooled_entropies(self._h_projected, order),
                "per_set": self._sets_projected.result(),
            },
            "words": {"pooled": pooled_entropies(self._h_words, order), "per_set": None},
            "captions": None,
        }
        if self._h_captions.count:
            sides["captions"] = {
                "pooled": pooled_entropies(self._h_captions, order),
                "per_set": self._sets_captions.result(),
            }
        delta: dict[str, float | None] = {}
        for scope, suffix in (("pooled", ""), ("per_set", "_mean")):
            for variant in ("uncentred", "centred", "uncentred_normalized", "centred_normalized"):
                a = sides["vision"][scope][variant + suffix]
                b = sides["projected"][scope][variant + suffix]
                delta[f"{scope}_{variant}"] = a - b if a is not None and b is not None else None
        sides["delta_h"] = delta
        return sides

    def example(
        self,
        prepared: PreparedImage,
        patch_tokens: torch.Tensor,
        label_embeddings: torch.Tensor,
        grid_shape: tuple[int, int],
        patch_size: int,
    ) -> ImageExample:
        """The maps of one image for the figures, scored exactly as ``add_image`` scores it."""
        device = self.dictionary.device
        patch_tokens = patch_tokens.to(device=device, dtype=torch.float32)
        label_embeddings = label_embeddings.to(device=device, dtype=torch.float32)
        masks = prepared.masks.to(device)
        options = self.options.alignment_options()
        cosines = cosine_maps(patch_tokens, label_embeddings)
        scores = image_alignment(patch_tokens, label_embeddings, masks, **options)
        signed = atoms_by_sign(self.pursue(patch_tokens))
        patch_words = []
        for atoms, coefs in zip(signed.positive_ids.tolist(), signed.net_coefficients.tolist(), strict=True):
            ranked = sorted((c, a) for a, c in zip(atoms, coefs, strict=True) if a >= 0)[::-1]
            words: list[str] = []
            for _, atom in ranked:
                if self.word_texts[atom] not in words:
                    words.append(self.word_texts[atom])
            patch_words.append(words[: self.options.words_per_patch])
        return ImageExample(
            record_id=prepared.record.id,
            image_path=prepared.image_path,
            transform=prepared.transform,
            grid_shape=grid_shape,
            patch_size=patch_size,
            labels=list(prepared.labels),
            cosines=cosines.cpu().numpy(),
            true_masks=masks.cpu().numpy(),
            predicted_masks=predict_masks(cosines, **options).cpu().numpy(),
            iou=scores.iou.tolist(),
            pointing_hit=scores.pointing_hit.tolist(),
            patch_words=patch_words,
        )


@dataclass
class AnalysisModel:
    """A loaded LLaVA model with what the analysis needs: tokenizer, patch grid, device, provenance."""

    tokenizer: Any
    model: Any
    grid: Any  # patch_align.data.PatchGrid
    device: torch.device
    source: dict[str, str | None] = field(default_factory=dict)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels (B, 3, H, W) → vision tokens (B, N, C) and projected tokens (B, N, D), both float32."""
        tower = self.model.get_vision_tower()
        vision = tower(pixels.to(device=tower.device, dtype=tower.dtype))
        projector = self.model.get_model().mm_projector
        weight = next(projector.parameters())
        projected = projector(vision.to(device=weight.device, dtype=weight.dtype))
        return vision.float(), projected.float()

    def label_embeddings(self, label_token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """(R, D) float32: mean input embedding of each label's tokens (as in patch-aligned training)."""
        embedding = self.model.get_input_embeddings()
        width = max((len(ids) for ids in label_token_ids), default=0)
        ids = torch.zeros((len(label_token_ids), width), dtype=torch.long, device=embedding.weight.device)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for row, label_ids in enumerate(label_token_ids):
            ids[row, : len(label_ids)] = torch.tensor(label_ids, dtype=torch.long)
            mask[row, : len(label_ids)] = True
        return mean_label_embeddings(embedding, ids, mask)

    def word_dictionary(self, options: AnalysisOptions) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Filtered words: embeddings (V_w, D) float32, vocabulary ids (V_w,), display texts."""
        ids = word_token_ids(
            self.tokenizer, min_chars=options.word_min_chars, alpha_only=options.word_alpha_only
        )
        embedding = self.model.get_input_embeddings()
        with torch.no_grad():
            rows = [embedding(chunk.to(embedding.weight.device)).float() for chunk in ids.split(_EMBED_CHUNK)]
        dictionary = torch.cat(rows) if rows else torch.zeros(0, embedding.embedding_dim)
        texts = [text.strip() for text in self.tokenizer.batch_decode([[i] for i in ids.tolist()])]
        return dictionary.to(self.device), ids, texts


def load_analysis_model(
    model_path: str | Path,
    model_base: str | Path | None = None,
    projector: str | Path | None = None,
    device: str | None = None,
) -> AnalysisModel:
    """Load a LLaVA checkpoint for analysis with ``llava.model.builder.load_pretrained_model``.

    ``model_path`` is a full checkpoint, or a stage-1 projector folder with ``model_base`` its LLM.
    ``projector`` (an ``mm_projector.bin``) then replaces the loaded projector's weights.
    ``device``: ``auto``/None, ``cpu`` or ``cuda`` (``llava.eval.run_llava.resolve_device``: ``cuda``
    without a GPU warns and runs on cpu).
    """
    from llava.eval.run_llava import resolve_device
    from llava.model.builder import load_pretrained_model
    from llava.model.checkpoints import load_projector_file
    from patch_align.data import PatchGrid

    device = resolve_device(device or "auto")
    tokenizer, model, image_processor, _ = load_pretrained_model(
        str(model_path), str(model_base) if model_base else None, device=device
    )
    if image_processor is None:
        raise AnalysisInputError(
            f"{model_path} is not a LLaVA checkpoint (its config names no mm_vision_tower)"
        )
    if projector is not None:
        load_projector_file(model.get_model().mm_projector, projector)
    model.eval()
    aspect = getattr(model.config, "image_aspect_ratio", "square")
    if aspect not in ("pad", "square"):
        raise AnalysisInputError(
            f"{model_path}: image_aspect_ratio {aspect!r} is not supported (pad or square)"
        )
    tower = model.get_vision_tower()
    try:
        grid = PatchGrid.of_tower(
            tower,
            aspect_mode=aspect,
            image_processor=image_processor,
            select_feature=getattr(model.config, "mm_vision_select_feature", "patch"),
        )
    except ValueError as err:
        raise AnalysisInputError(str(err)) from err
    source = {
        "model_path": str(model_path),
        "model_base": str(model_base) if model_base else None,
        "projector": str(projector) if projector else None,
    }
    return AnalysisModel(
        tokenizer=tokenizer, model=model, grid=grid, device=torch.device(tower.device), source=source
    )


def prepare_image(
    record: PadRecord,
    image_folder: Path,
    analysis: AnalysisModel,
    options: AnalysisOptions,
    counts: RegionCounts,
) -> PreparedImage | None:
    """Pixels and region masks of one record (None when the record is skipped under ``on_error=skip``)."""
    from llava.mm_utils import process_images
    from patch_align.data import region_patches

    def bad(reason: str) -> None:
        if options.on_error == "error":
            raise AnalysisInputError(f"PAD record {record.id}: {reason} (pass --on-error skip to drop it)")
        logger.warning("PAD record %s: skipped: %s", record.id, reason)

    image_path = image_folder / record.image
    try:
        with Image.open(image_path) as opened:
            image = opened.convert("RGB")
    except OSError as err:
        bad(f"cannot read image {image_path}: {err}")
        counts.images_skipped_bad += 1
        counts.skipped_bad += len(record.regions)
        return None
    if image.size != (record.width, record.height):
        bad(
            f"image {image_path} is {image.size[0]}x{image.size[1]}, "
            f"the record says {record.width}x{record.height}"
        )
        counts.images_skipped_bad += 1
        counts.skipped_bad += len(record.regions)
        return None
    grid = analysis.grid
    transform = processor_transform(record.width, record.height, grid.aspect_mode, grid.image_processor)
    labels, label_ids, masks = [], [], []
    regions = region_patches(
        record,
        grid,
        lambda label: tokenize_label(analysis.tokenizer, label),
        options.patch_mask_threshold,
        options.patch_mask_fallback,
    )
    for region in regions:
        if region.problem is not None:
            bad(region.problem)
            counts.skipped_bad += 1
            continue
        if region.outside:
            counts.outside_view += 1
            continue
        counts.fallback += int(region.used_fallback)
        counts.used += 1
        labels.append(region.label)
        label_ids.append(region.label_ids)
        masks.append(torch.from_numpy(region.owned))
    rows, cols = grid.grid_shape
    stacked = torch.stack(masks) if masks else torch.zeros((0, rows * cols), dtype=torch.bool)
    pixels = process_images([image], grid.image_processor, analysis.model.config)[0]
    return PreparedImage(
        record=record,
        image_path=image_path,
        pixels=pixels,
        transform=transform,
        labels=labels,
        label_token_ids=label_ids,
        masks=stacked,
    )


def _batches(
    pad_path: Path,
    image_folder: Path,
    analysis: AnalysisModel,
    options: AnalysisOptions,
    counts: RegionCounts,
) -> Iterator[list[PreparedImage]]:
    batch: list[PreparedImage] = []
    for number, record in enumerate(iter_pad_records(pad_path)):
        if options.max_images is not None and number >= options.max_images:
            break
        prepared = prepare_image(record, image_folder, analysis, options, counts)
        if prepared is not None:
            batch.append(prepared)
        if len(batch) == options.batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class AnalysisResult:
    """metrics: the JSON-ready dict written to metrics.json; examples: the images kept for figures."""

    metrics: dict[str, Any]
    examples: list[ImageExample]


def check_analysis_inputs(
    pad_path: str | Path, image_folder: str | Path, caption_file: str | Path | None = None
) -> list[str] | None:
    """`AnalysisInputError` when the PAD file, the image folder or the caption file is missing or
    (captions) unreadable — cheap, before a model loads. Returns the captions (None without a file):
    every answer turn of the LLaVA JSON, in file order."""
    if not Path(pad_path).is_file():
        raise AnalysisInputError(f"PAD file {pad_path} does not exist")
    if not Path(image_folder).is_dir():
        raise AnalysisInputError(f"image folder {image_folder} is not a directory")
    if caption_file is None:
        return None
    from llava.train.llava_json import load_llava_json

    if not Path(caption_file).is_file():
        raise AnalysisInputError(f"caption file {caption_file} does not exist")
    try:
        records = load_llava_json(caption_file)
    except ValueError as err:
        raise AnalysisInputError(f"caption file {caption_file}: {err}") from err
    captions = [turn["value"] for r in records for turn in r["conversations"] if turn["from"] == "gpt"]
    if not captions:
        raise AnalysisInputError(f"caption file {caption_file} has no answer ('gpt') turn")
    return captions


def _add_captions(accumulator: AnalysisAccumulator, analysis: AnalysisModel, captions: list[str]) -> int:
    """Feed each caption's token embeddings (no BOS/EOS, as a label is embedded) as one token set."""
    embedding = analysis.model.get_input_embeddings()
    for text in captions:
        ids = analysis.tokenizer(text, add_special_tokens=False).input_ids
        with torch.no_grad():  # an empty or one-token caption is a skipped, counted set
            accumulator.add_caption_tokens(
                embedding(torch.tensor(ids, dtype=torch.long, device=embedding.weight.device))
            )
    return len(captions)


def run_analysis(
    analysis: AnalysisModel,
    pad_path: str | Path,
    image_folder: str | Path,
    options: AnalysisOptions | None = None,
    *,
    progress: bool = True,
) -> AnalysisResult:
    """Stream the PAD file's images through the model and measure everything (docs/metrics.md §6)."""
    from tqdm import tqdm

    options = options or AnalysisOptions()
    captions = check_analysis_inputs(pad_path, image_folder, options.caption_file)
    pad_path, image_folder = Path(pad_path), Path(image_folder)
    accumulator = AnalysisAccumulator(*analysis.word_dictionary(options), options)
    counts = RegionCounts()
    examples: list[ImageExample] = []
    offset = vision_token_offset(analysis.grid.select_feature)
    rows, cols = analysis.grid.grid_shape
    images = 0
    with tqdm(total=options.max_images, unit="img", desc="analyze", disable=not progress) as bar:
        for batch in _batches(pad_path, image_folder, analysis, options, counts):
            vision, projected = analysis.encode(torch.stack([p.pixels for p in batch]))
            if projected.shape[1] != offset + rows * cols:
                raise AnalysisInputError(
                    f"the tower gives {projected.shape[1]} tokens per image, the patch grid "
                    f"{rows}x{cols} (+{offset} CLS) needs {offset + rows * cols}"
                )
            accumulator.add_image_tokens(vision, projected)
            for prepared, tokens in zip(batch, projected, strict=True):
                patch_tokens = tokens[offset:]
                label_embeddings = analysis.label_embeddings(prepared.label_token_ids)
                accumulator.add_image(
                    patch_tokens, label_embeddings, prepared.masks, prepared.label_token_ids
                )
                if len(examples) < options.example_images and prepared.labels:
                    examples.append(
                        accumulator.example(
                            prepared, patch_tokens, label_embeddings, (rows, cols), analysis.grid.patch_size
                        )
                    )
            images += len(batch)
            bar.update(len(batch))
    if images == 0:
        raise AnalysisInputError(
            f"{pad_path}: no image could be analysed ({counts.images_skipped_bad} skipped)"
        )
    if accumulator.alignment.regions_scored == 0:
        raise AnalysisInputError(
            f"{pad_path}: no region could be scored over {images} images ({counts.outside_view} outside the "
            f"model's view, {counts.skipped_bad} bad); alignment needs at least one region"
        )
    if captions is not None:
        _add_captions(accumulator, analysis, captions[: options.max_captions])
    metrics = accumulator.result()
    metrics["data"] = {
        "images": images,
        "regions_used": counts.used,
        "regions_skipped_bad": counts.skipped_bad,
        "regions_outside_view": counts.outside_view,
        "regions_fallback": counts.fallback,
        "images_skipped_bad": counts.images_skipped_bad,
    }
    grid = analysis.grid
    metrics["run"] = {
        **analysis.source,
        "pad": str(pad_path),
        "image_folder": str(image_folder),
        "device": str(analysis.device),
        "aspect_mode": grid.aspect_mode,
        "patch_grid": [rows, cols],
        "patch_size": grid.patch_size,
        "select_feature": grid.select_feature,
        "options": asdict(options),
    }
    return AnalysisResult(metrics=metrics, examples=examples)
