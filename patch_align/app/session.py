"""One loaded checkpoint and what the page asks of it: chat turns and the patch views of an image.

Framework-free: the page (``page.py``) only turns these results into widgets. Every user
mistake is raised as ``AppInputError`` (a ``ValueError``) with a message meant for the page.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from llava.eval.generation import GenerationSettings, decode_answers, generate_token_ids, trim_at_stop_strings
from llava.eval.run_llava import checkpoint_conv_mode, image_query, new_chat, stop_string
from llava.mm_utils import process_images, tokenizer_image_token
from llava.paths import resolve_model_path
from patch_align.analysis.runner import (
    AnalysisAccumulator,
    AnalysisInputError,
    AnalysisModel,
    AnalysisOptions,
    RegionCounts,
    load_analysis_model,
    prepare_image,
)
from patch_align.app.views import (
    PatchWords,
    RegionScore,
    ViewInputError,
    decompose_patch,
    patch_box_in_original,
    patch_nearest_words,
    phrase_token_ids,
    region_scores,
    seen_image,
    word_heatmap,
)
from patch_align.geometry import ImageTransform, processor_transform, vision_token_offset
from patch_align.pad import PadRecord, load_pad_index

TOP_K_WORDS = 5


class AppInputError(ValueError):
    """Something the user gave that the app cannot use; the message is shown on the page."""


@dataclass
class ImageView:
    """One image as this checkpoint saw it: the model-input image, its (P, D) patch tokens and geometry.

    For a PAD record, ``labels``/``masks`` (R, P) bool/``label_token_ids`` are its usable regions.
    """

    source: str
    original_size: tuple[int, int]
    image: Image.Image
    pixels: torch.Tensor
    transform: ImageTransform
    patch_tokens: torch.Tensor
    labels: list[str]
    masks: torch.Tensor
    label_token_ids: list[list[int]]


def open_image(path: str | Path) -> Image.Image:
    """The RGB image at ``path``; AppInputError naming the file when it is missing or not an image."""
    if not path:
        raise AppInputError("no image: upload or pick one first")
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except FileNotFoundError as err:
        raise AppInputError(f"{Path(path).name}: no such file") from err
    except (UnidentifiedImageError, OSError) as err:
        raise AppInputError(f"{Path(path).name} is not an image file PIL can read ({err})") from err


class CheckpointSession:
    """A checkpoint loaded once (``load_analysis_model``) with its word dictionary and chat template."""

    def __init__(
        self,
        analysis: AnalysisModel,
        name: str,
        conv_mode: str,
        options: AnalysisOptions | None = None,
        pad: dict[str, PadRecord] | None = None,
        image_folder: Path | None = None,
    ) -> None:
        self.analysis = analysis
        self.name = name
        self.conv_mode = conv_mode
        self.options = options or AnalysisOptions()
        self.accumulator = AnalysisAccumulator(*analysis.word_dictionary(self.options), self.options)
        self.pad = pad or {}
        self.image_folder = image_folder

    @classmethod
    def load(
        cls,
        model_path: str,
        model_base: str | None = None,
        conv_mode: str | None = None,
        device: str | None = None,
        pad: dict[str, PadRecord] | None = None,
        image_folder: Path | None = None,
    ) -> CheckpointSession:
        """Load ``model_path`` (with ``model_base`` for a projector-only folder); the template is
        the one config.json records it was trained with (else upstream's rule on the folder name)
        unless ``conv_mode`` names one."""
        mode = checkpoint_conv_mode(str(model_path), conv_mode)
        analysis = load_analysis_model(model_path, model_base, device=device)
        # the folder and its parent: demo checkpoints are all called stage2
        name = "/".join(Path(model_path).parts[-2:])
        return cls(analysis, name, mode, pad=pad, image_folder=image_folder)

    # -- images and patch views -------------------------------------------------------------

    def _view(self, source: str, image: Image.Image, pixels: torch.Tensor, transform: ImageTransform,
              labels: list[str], masks: torch.Tensor, label_ids: list[list[int]]) -> ImageView:
        _, projected = self.analysis.encode(pixels.unsqueeze(0))
        offset = vision_token_offset(self.analysis.grid.select_feature)
        processor = self.analysis.grid.image_processor
        return ImageView(
            source=source,
            original_size=image.size,
            image=seen_image(pixels, processor.image_mean, processor.image_std),
            pixels=pixels,
            transform=transform,
            patch_tokens=projected[0, offset:],
            labels=labels,
            masks=masks,
            label_token_ids=label_ids,
        )

    def view_image(self, path: str | Path) -> ImageView:
        """An uploaded or picked image file, through the checkpoint's own preprocessing."""
        image = open_image(path)
        grid = self.analysis.grid
        pixels = process_images([image], grid.image_processor, self.analysis.model.config)[0]
        transform = processor_transform(image.width, image.height, grid.aspect_mode, grid.image_processor)
        rows, cols = grid.grid_shape
        empty = torch.zeros((0, rows * cols), dtype=torch.bool)
        return self._view(Path(path).name, image, pixels, transform, [], empty, [])

    def view_record(self, record_id: str) -> ImageView:
        """A PAD record's image with its region masks, prepared exactly as ``analyze`` prepares it."""
        if record_id not in self.pad:
            raise AppInputError(f"PAD record {record_id!r} is not in the PAD file")
        if self.image_folder is None:
            raise AppInputError("PAD records need --image-folder")
        try:
            prepared = prepare_image(
                self.pad[record_id], self.image_folder, self.analysis, self.options, RegionCounts()
            )
        except AnalysisInputError as err:
            raise AppInputError(str(err)) from err
        image = open_image(prepared.image_path)
        return self._view(record_id, image, prepared.pixels, prepared.transform, prepared.labels,
                          prepared.masks, prepared.label_token_ids)

    def patch_words(self, view: ImageView, patch: int) -> PatchWords:
        """The patch's top nearest words by cosine."""
        if not 0 <= patch < view.patch_tokens.shape[0]:
            raise AppInputError(f"patch {patch} is not in 0..{view.patch_tokens.shape[0] - 1}")
        words = patch_nearest_words(view.patch_tokens, self.accumulator.dictionary,
                                    self.accumulator.word_texts, TOP_K_WORDS)
        return words[patch]

    def decomposition(self, view: ImageView, patch: int) -> PatchWords:
        """The matching-pursuit words and coefficients of the patch (``analyze``'s pursuit options)."""
        return decompose_patch(self.accumulator, view.patch_tokens, patch)

    def patch_box(self, view: ImageView, patch: int) -> tuple[float, float, float, float]:
        """The patch's box in original-image pixels."""
        grid = self.analysis.grid
        return patch_box_in_original(patch, grid.grid_shape, grid.patch_size, view.transform)

    def heatmap(self, view: ImageView, phrase: str) -> np.ndarray:
        """(G_h, G_w) cosine of the phrase's label embedding with every patch."""
        try:
            ids = phrase_token_ids(self.analysis.tokenizer, phrase)
        except ViewInputError as err:
            raise AppInputError(str(err)) from err
        embedding = self.analysis.label_embeddings([ids])[0]
        embedding = embedding.to(view.patch_tokens.device)
        return word_heatmap(view.patch_tokens, embedding, self.analysis.grid.grid_shape)

    def regions(self, view: ImageView) -> list[RegionScore]:
        """The PAD regions of the view scored as ``analyze`` scores them ([] for a plain image)."""
        if not view.labels:
            return []
        embeddings = self.analysis.label_embeddings(view.label_token_ids).to(view.patch_tokens.device)
        return region_scores(view.patch_tokens, embeddings, view.masks, view.labels, self.options)

    # -- chat ----------------------------------------------------------------------------------

    def prompt(self, turns: Sequence[tuple[str, str | None]], has_image: bool) -> str:
        """The template's prompt for (user, answer) turns, the last answer None; the image is in turn one."""
        conv = new_chat(self.conv_mode)
        use_start_end = getattr(self.analysis.model.config, "mm_use_im_start_end", False)
        for number, (user, answer) in enumerate(turns):
            text = image_query(user, 1, use_start_end) if has_image and number == 0 else user
            conv.append_message(conv.roles[0], text)
            conv.append_message(conv.roles[1], answer)
        return conv.get_prompt()

    def settings(self, temperature: float, top_p: float, max_new_tokens: int) -> GenerationSettings:
        """Decoding settings with this template's stop string; AppInputError for out-of-range values."""
        try:
            return GenerationSettings(
                temperature=float(temperature),
                top_p=float(top_p) if temperature > 0 else None,
                max_new_tokens=int(max_new_tokens),
                stop_strings=(stop_string(new_chat(self.conv_mode)),),
            )
        except ValueError as err:
            raise AppInputError(str(err)) from err

    def stream_answer(
        self,
        turns: Sequence[tuple[str, str | None]],
        view: ImageView | None,
        settings: GenerationSettings,
    ) -> Iterator[str]:
        """Yield the answer to the last turn as it grows, token by token; the last value is the final answer
        (decoded and cut at the stop string as ``llava.serve.cli`` does)."""
        from transformers import TextIteratorStreamer

        if not turns or not turns[-1][0].strip():
            raise AppInputError("type a question first")
        tokenizer, model = self.analysis.tokenizer, self.analysis.model
        prompt = self.prompt(turns, view is not None)
        input_ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")
        pixels = None if view is None else view.pixels.unsqueeze(0)
        sizes = [] if view is None else [view.original_size]
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict[str, object] = {}

        def run() -> None:
            try:
                result["ids"] = generate_token_ids(
                    model, tokenizer, [input_ids], [pixels], [sizes], settings, streamer=streamer
                )[0]
            except Exception as err:  # noqa: BLE001 - re-raised in the caller's thread below
                result["error"] = err
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        text = ""
        for piece in streamer:
            text += piece
            yield trim_at_stop_strings(text, settings.stop_strings)
        worker.join()
        if "error" in result:
            raise result["error"]  # type: ignore[misc]
        yield decode_answers(tokenizer, [result["ids"]], settings.stop_strings)[0]


def load_sessions(
    checkpoints: Sequence[tuple[str, str | None]],
    conv_mode: str | None,
    device: str | None,
    pad_path: str | None,
    image_folder: str | None,
) -> list[CheckpointSession]:
    """Check the cheap inputs (paths, PAD file), then load each ``(model_path, model_base)`` once.

    Raises AppInputError naming the bad path or flag.
    """
    for path, _ in checkpoints:
        try:
            folder = Path(resolve_model_path(path))
        except (OSError, ValueError) as err:
            raise AppInputError(str(err)) from err
        if not (folder / "config.json").is_file():
            raise AppInputError(f"{path} is not a checkpoint folder (it has no config.json)")
        try:
            checkpoint_conv_mode(path, conv_mode)
        except ValueError as err:
            raise AppInputError(str(err)) from err
    if image_folder is not None and not Path(image_folder).is_dir():
        raise AppInputError(f"--image-folder {image_folder} is not a directory")
    pad = None
    if pad_path is not None:
        if image_folder is None:
            raise AppInputError("--pad needs --image-folder (the PAD file's images are relative to it)")
        if not Path(pad_path).is_file():
            raise AppInputError(f"--pad {pad_path}: no such file")
        try:
            pad = load_pad_index(pad_path)
        except ValueError as err:
            raise AppInputError(f"--pad {pad_path}: {err}") from err
    sessions = []
    for path, model_base in checkpoints:
        try:
            sessions.append(
                CheckpointSession.load(path, model_base, conv_mode, device, pad,
                                       Path(image_folder) if image_folder else None)
            )
        except (AnalysisInputError, ValueError, OSError) as err:
            raise AppInputError(f"{path}: cannot be loaded as a LLaVA checkpoint: {err}") from err
    return sessions
