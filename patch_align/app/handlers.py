"""The page's events as plain functions: one column per checkpoint (two with ``--compare``).

``AppHandlers`` holds the loaded ``CheckpointSession``s and answers every page event with plain
values (images, markdown, chat turns); ``page.build_page`` only wires them to gradio widgets. A
user mistake (no image, a file that is not an image, an unknown word) becomes a message for the
page's status line, never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from patch_align.app.session import AppInputError, CheckpointSession, ImageView
from patch_align.app.views import (
    PatchWords,
    RegionScore,
    grid_overlay,
    heatmap_overlay,
    patch_at,
    region_overlay,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
PAD_PREFIX = "PAD record "
Turns = list[tuple[str, str | None]]


@dataclass
class ColumnViews:
    """What one checkpoint column shows for the current image (None before an image is chosen)."""

    view: ImageView | None = None
    selected: int | None = None


def _words_markdown(title: str, words: PatchWords, value_name: str) -> str:
    rows = "\n".join(f"| {word} | {value:+.3f} |" for word, value in words.words)
    extra = ""
    if words.explained_variance is not None:
        extra = f"\n\nexplained variance {words.explained_variance:.3f}"
    return f"**{title}**\n\n| word | {value_name} |\n|---|---|\n{rows}{extra}"


def _regions_markdown(scores: Sequence[RegionScore]) -> str:
    if not scores:
        return ""
    rows = "\n".join(
        f"| {s.label} | {s.iou:.3f} | {'hit' if s.pointing_hit else 'miss'} | {s.cos_inside:+.3f} | "
        f"{'' if s.cos_outside is None else f'{s.cos_outside:+.3f}'} |"
        for s in scores
    )
    miou = sum(s.iou for s in scores) / len(scores)
    pointing = sum(s.pointing_hit for s in scores) / len(scores)
    return (
        f"**Regions** (mIoU {miou:.3f}, pointing {pointing:.3f})\n\n"
        f"| label | IoU | pointing | cos inside | cos outside |\n|---|---|---|---|---|\n{rows}"
    )


class AppHandlers:
    """Every page event as a method over the sessions; column i of every result is session i's."""

    def __init__(self, sessions: Sequence[CheckpointSession], image_folder: Path | None = None) -> None:
        if not sessions:
            raise ValueError("the app needs at least one checkpoint")
        self.sessions = list(sessions)
        self.image_folder = image_folder

    def choices(self) -> list[str]:
        """What the picker offers: the PAD records (with --pad), then the image files of --image-folder."""
        records = [f"{PAD_PREFIX}{record_id}" for record_id in self.sessions[0].pad]
        files = []
        if self.image_folder is not None:
            files = sorted(
                str(p.relative_to(self.image_folder))
                for p in self.image_folder.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES
            )
        return records + files

    def _resolve_pick(self, pick: str) -> tuple[str | None, str | None]:
        if pick.startswith(PAD_PREFIX):
            return None, pick.removeprefix(PAD_PREFIX)
        if self.image_folder is None:
            raise AppInputError(f"{pick}: there is no --image-folder to pick from")
        return str(self.image_folder / pick), None

    def load_image(self, upload: str | None, pick: str | None) -> tuple[list[ColumnViews], str]:
        """An uploaded file (preferred) or a picked entry → each column's view, and a status message."""
        try:
            if upload:
                path, record = upload, None
            elif pick:
                path, record = self._resolve_pick(pick)
            else:
                raise AppInputError("no image: upload or pick one first")
            columns = []
            for session in self.sessions:
                view = session.view_record(record) if record is not None else session.view_image(path)
                columns.append(ColumnViews(view))
        except AppInputError as err:
            return [ColumnViews() for _ in self.sessions], f"⚠️ {err}"
        view = columns[0].view
        grid = self.sessions[0].analysis.grid
        rows, cols = grid.grid_shape
        width, height = view.original_size
        return columns, (
            f"{view.source}: {width}x{height} px shown as the model saw it "
            f"({grid.aspect_mode}: {view.image.width}x{view.image.height} px, {rows}x{cols} patches of "
            f"{grid.patch_size} px); click a patch, or type a word"
        )

    def patch_images(self, columns: Sequence[ColumnViews]) -> list[Image.Image | None]:
        """Each column's model-input image with its grid and selected patch."""
        images = []
        for session, column in zip(self.sessions, columns, strict=True):
            if column.view is None:
                images.append(None)
                continue
            grid = session.analysis.grid
            images.append(grid_overlay(column.view.image, grid.grid_shape, grid.patch_size, column.selected))
        return images

    def region_views(self, columns: Sequence[ColumnViews]) -> list[tuple[Image.Image | None, str]]:
        """Each column's PAD regions overlaid, with their scores (nothing for a plain image)."""
        shown = []
        for session, column in zip(self.sessions, columns, strict=True):
            view = column.view
            if view is None or not view.labels:
                shown.append((None, ""))
                continue
            grid = session.analysis.grid
            image = region_overlay(view.image, view.masks.numpy(), grid.grid_shape, grid.patch_size)
            legend = ", ".join(f"{i + 1}: {label}" for i, label in enumerate(view.labels))
            scores = _regions_markdown(session.regions(view))
            shown.append((image, f"regions in colour order: {legend}\n\n{scores}"))
        return shown

    def select_patch(
        self, columns: Sequence[ColumnViews], x_fraction: float, y_fraction: float
    ) -> tuple[list[ColumnViews], list[str], str]:
        """A click at a fraction of the image's width/height → that patch in every column: its nearest
        words and its matching-pursuit decomposition (markdown per column), and a status message
        (where the first column's patch lies in the original image)."""
        if any(column.view is None for column in columns):
            return list(columns), ["" for _ in columns], "⚠️ no image: upload or pick one first"
        updated, texts, status = [], [], ""
        for session, column in zip(self.sessions, columns, strict=True):
            grid, view = session.analysis.grid, column.view
            try:
                x, y = x_fraction * view.image.width, y_fraction * view.image.height
                patch = patch_at(x, y, grid.grid_shape, grid.patch_size)
            except ValueError as err:
                return list(columns), ["" for _ in columns], f"⚠️ {err}"
            row, col = divmod(patch, grid.grid_shape[1])
            x0, y0, x1, y1 = session.patch_box(view, patch)
            # each column's own geometry: --compare checkpoints may crop or pad differently
            where = (
                f"patch {patch} (row {row}, column {col}) = original pixels "
                f"x {x0:.1f}..{x1:.1f}, y {y0:.1f}..{y1:.1f}"
            )
            status = status or where
            words = session.patch_words(view, patch)
            nearest = _words_markdown(f"Nearest words of patch {patch}", words, "cosine")
            pursuit = _words_markdown("Matching pursuit", session.decomposition(view, patch), "coefficient")
            texts.append(f"{where}\n\n{nearest}\n\n{pursuit}")
            updated.append(ColumnViews(view, patch))
        return updated, texts, status

    def word_heatmaps(
        self, columns: Sequence[ColumnViews], phrase: str
    ) -> tuple[list[Image.Image | None], str]:
        """The phrase's cosine over every column's patches, as heatmap images, and a status message."""
        if any(column.view is None for column in columns):
            return [None for _ in columns], "⚠️ no image: upload or pick one first"
        images, ranges = [], []
        try:
            for session, column in zip(self.sessions, columns, strict=True):
                heat = session.heatmap(column.view, phrase)
                images.append(heatmap_overlay(column.view.image, heat, session.analysis.grid.patch_size))
                ranges.append(f"{session.name}: cosine {heat.min():+.3f}..{heat.max():+.3f}")
        except AppInputError as err:
            return [None for _ in columns], f"⚠️ {err}"
        return images, f"{phrase.strip()!r}: " + "; ".join(ranges)

    def chat(
        self,
        columns: Sequence[ColumnViews],
        histories: Sequence[Turns],
        question: str,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
    ) -> Iterator[tuple[list[Turns], str]]:
        """Stream every column's answer to ``question`` (column after column), yielding the histories
        as they grow and a status message. The image (if any) is in the conversation's first turn."""
        histories = [list(history) for history in histories]
        if not question or not question.strip():
            yield histories, "⚠️ type a question first"
            return
        for index, (session, column) in enumerate(zip(self.sessions, columns, strict=True)):
            try:
                settings = session.settings(temperature, top_p, max_new_tokens)
                turns = [*histories[index], (question.strip(), None)]
                for partial in session.stream_answer(turns, column.view, settings):
                    histories[index] = [*turns[:-1], (turns[-1][0], partial)]
                    yield histories, f"{session.name} is answering…"
            except AppInputError as err:
                yield histories, f"⚠️ {err}"
                return
        yield histories, "answered" + ("" if columns[0].view is not None else " (text only: no image)")


def as_messages(turns: Turns) -> list[dict[str, str]]:
    """(user, answer) turns → the chatbot's role/content messages."""
    messages = []
    for user, answer in turns:
        messages.append({"role": "user", "content": user})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
    return messages
