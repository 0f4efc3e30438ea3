"""The one reader of LLaVA data JSON: the same rules for training, PAD generation and SEA labelling.

A LLaVA data file is one JSON list (not JSONL) of records such as

    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is on the bus?"},
                       {"from": "gpt", "value": "An advertisement."}]}

Every record is checked when the file is read, before any model is loaded; a record that
breaks a rule is a `LlavaDataError` naming the file, the record's position and its id:

- `id`: a non-empty string or an integer (used as its string). Ids may repeat (upstream's
  instruction mix repeats image ids), except for tools that key their output by id
  (`image_samples`).
- `image`: absent for a text-only record, otherwise a non-empty path string relative to the
  image folder. Anything else is an error, a list of images included: LLaVA-1.5 trains one
  image per sample (the collator and the patch-align plugin hold one image per sample).
- `conversations`: a non-empty list of turns, each an object with a string `from` and a
  string `value`. Speaker names and their order are checked when the sample is tokenised
  (`preprocess.tokenize_conversation`), with the sample id.
- `<image>` occurs in the turns exactly once in an image record and never in a text-only
  one. Upstream checks neither: an image record without `<image>` trains text-only with its
  image dropped, and a second `<image>` takes another sample's image out of the batch.
  Upstream's training code does not add a missing `<image>` either, so neither do we.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llava.constants import DEFAULT_IMAGE_TOKEN


class LlavaDataError(ValueError):
    """A LLaVA data file breaks the format's rules; the message names the file and the record."""


def sample_id(record: dict[str, Any]) -> str:
    """The id of a checked record, as a string (integer ids are allowed)."""
    return str(record["id"])


def load_llava_json(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a LLaVA data file, in file order, each checked against the module's rules.

    Raises FileNotFoundError for a missing file and `LlavaDataError` for anything else:
    invalid JSON (with its line and column), a top level that is not a list, a bad record.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LLaVA data file {path} does not exist (or is not a file)")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise LlavaDataError(
            f"{path}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from err
    except UnicodeDecodeError as err:
        raise LlavaDataError(f"{path}: not UTF-8 text ({err})") from err
    if not isinstance(records, list):
        raise LlavaDataError(
            f"{path}: a LLaVA data file is a JSON list of records, got a JSON {type(records).__name__}"
        )
    for index, record in enumerate(records):
        check_record(record, index, path)
    return records


def check_record(record: Any, index: int, path: str | os.PathLike) -> None:
    """Raise `LlavaDataError` naming `path`, `index` and the id unless `record` follows the rules."""
    if not isinstance(record, dict):
        raise LlavaDataError(f"{path}: record {index} is a JSON {type(record).__name__}, not an object")
    record_id = record.get("id")
    if isinstance(record_id, bool) or not isinstance(record_id, (str, int)) or record_id == "":
        raise LlavaDataError(
            f"{path}: record {index} has no 'id' (a non-empty string or an integer), got {record_id!r}"
        )
    where = f"{path}: record {index} (id {record_id!r})"
    n_images = 0
    if "image" in record:
        image = record["image"]
        if isinstance(image, list):
            raise LlavaDataError(
                f"{where}: 'image' is a list of {len(image)} images; LLaVA-1.5 trains one image per "
                "sample: give one path string (split multi-image records into one record per image)"
            )
        if not isinstance(image, str) or not image:
            raise LlavaDataError(f"{where}: 'image' must be a non-empty path string, got {image!r}")
        n_images = 1
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise LlavaDataError(f"{where}: needs a non-empty 'conversations' list, got {turns!r}")
    for position, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise LlavaDataError(f"{where}: turn {position} is a JSON {type(turn).__name__}, not an object")
        for key in ("from", "value"):
            if not isinstance(turn.get(key), str):
                raise LlavaDataError(f"{where}: turn {position} has no string '{key}', got {turn.get(key)!r}")
    n_marks = sum(turn["value"].count(DEFAULT_IMAGE_TOKEN) for turn in turns)
    if n_marks != n_images:
        if n_images:
            raise LlavaDataError(
                f"{where}: has an 'image' but {n_marks} {DEFAULT_IMAGE_TOKEN} in its turns; mark the image "
                f"with exactly one {DEFAULT_IMAGE_TOKEN} (in the first human turn, as LLaVA's data does)"
            )
        raise LlavaDataError(
            f"{where}: has no 'image' but {n_marks} {DEFAULT_IMAGE_TOKEN} in its turns; add the record's "
            f"'image' or remove the {DEFAULT_IMAGE_TOKEN}"
        )


@dataclass(frozen=True)
class ImageSample:
    """One image record of a LLaVA data file: position in the file, id, image path, the record."""

    index: int
    id: str
    image: str
    record: dict[str, Any]


def image_samples(path: str | os.PathLike) -> tuple[list[ImageSample], int]:
    """The image records of a LLaVA data file in file order, and the number of text-only records.

    For tools that key their output by id (PAD generation, SEA labels): besides the rules of
    `load_llava_json`, an id that two image records share is a `LlavaDataError`.
    """
    found: list[ImageSample] = []
    first_index: dict[str, int] = {}
    text_only = 0
    for index, record in enumerate(load_llava_json(path)):
        if "image" not in record:
            text_only += 1
            continue
        record_id = sample_id(record)
        if record_id in first_index:
            raise LlavaDataError(
                f"{path}: record {index} repeats the id {record_id!r} of record {first_index[record_id]}; "
                "outputs are keyed by id, so image records need unique ids"
            )
        first_index[record_id] = index
        found.append(ImageSample(index, record_id, record["image"], record))
    return found, text_only
