"""On-disk format of SEA token labels (version 1): sharded safetensors plus JSON files.

A label folder holds
- `vocab.txt`: the vocabulary, one word per line; word id = 0-based line number.
- `settings.json`: how the labels were made (CLIP folder, top-n, sign, geometry, template,
  patch grid, shard size, data file); a resumed or parallel run must use the same settings.
- `shard-00000.safetensors`, ...: shard j covers the data file's image records
  `[j · shard_size, (j + 1) · shard_size)`. Tensors `word_ids` (S, N, n) int32, -1 padded,
  and `scores` (S, N, n) float16, 0 where padded; N = grid patches in row-major order, n = top-n,
  ranked best first. Metadata `sample_ids` (JSON list of the S ids, row order) and `skipped`
  (JSON object id -> reason for records of the range that have no labels).
- `index.json`: written once every shard exists: `settings`, `shards` (file names) and
  `samples` (id -> [shard file, row]).
Shards are written to a temporary name and renamed, so a file that exists is complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from patch_align.sea.vocab import read_word_list

FORMAT_VERSION = 1
VOCAB_FILE = "vocab.txt"
SETTINGS_FILE = "settings.json"
INDEX_FILE = "index.json"


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.safetensors"


def _write_atomically(path: Path, write) -> None:
    temporary = path.with_name(path.name + f".tmp{os.getpid()}")
    write(temporary)
    os.replace(temporary, path)


def write_json(path: Path, payload: dict) -> None:
    _write_atomically(path, lambda p: p.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n"))


def write_shard(path: Path, sample_ids: list[str], word_ids: torch.Tensor, scores: torch.Tensor,
                skipped: dict[str, str]) -> None:
    """Save one shard: `word_ids` (S, N, n) int32, `scores` (S, N, n), stored as float16."""
    if word_ids.shape != scores.shape or word_ids.shape[0] != len(sample_ids):
        raise ValueError(f"shard {path.name}: word_ids {tuple(word_ids.shape)}, scores "
                         f"{tuple(scores.shape)} and {len(sample_ids)} sample ids do not match")
    tensors = {"word_ids": word_ids.to(torch.int32).contiguous(),
               "scores": scores.to(torch.float16).contiguous()}
    metadata = {"format_version": str(FORMAT_VERSION), "sample_ids": json.dumps(sample_ids),
                "skipped": json.dumps(skipped)}
    _write_atomically(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def read_shard_metadata(path: Path) -> tuple[list[str], dict[str, str]]:
    """(sample ids in row order, skipped id -> reason) of a shard file."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise ValueError(f"{path}: not a version {FORMAT_VERSION} SEA label shard")
    return json.loads(metadata["sample_ids"]), json.loads(metadata["skipped"])


def build_index(out_dir: Path, settings: dict, num_shards: int) -> dict:
    """The index of a complete label folder (every shard file present)."""
    samples: dict[str, list] = {}
    skipped: dict[str, str] = {}
    shards = [shard_name(j) for j in range(num_shards)]
    for name in shards:
        ids, shard_skipped = read_shard_metadata(out_dir / name)
        for row, sample_id in enumerate(ids):
            samples[sample_id] = [name, row]
        skipped.update(shard_skipped)
    return {"format_version": FORMAT_VERSION, "settings": settings, "shards": shards,
            "samples": samples, "skipped": skipped}


class SeaLabels:
    """Read access to a finished label folder: `labels(sample_id)` → (word_ids, scores).

    Rows are read lazily from memory-mapped shards, so opening the folder costs only the index.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        index_path = self.out_dir / INDEX_FILE
        if not index_path.is_file():
            raise FileNotFoundError(f"{index_path} is missing: the labelling run is not finished "
                                    f"(run `patch-align sea label` again until every shard is done)")
        index = json.loads(index_path.read_text())
        if index.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{index_path}: format_version {index.get('format_version')!r}, "
                             f"expected {FORMAT_VERSION}")
        self.settings: dict = index["settings"]
        self.words: list[str] = read_word_list(self.out_dir / VOCAB_FILE)
        self.skipped: dict[str, str] = index["skipped"]
        self._samples: dict[str, list] = index["samples"]
        self._handles: dict[str, object] = {}

    def __getstate__(self) -> dict:
        # Open shard handles cannot be pickled; dataloader workers reopen their own.
        return {**self.__dict__, "_handles": {}}

    @property
    def grid(self) -> tuple[int, int]:
        """(G_h, G_w) patch grid of the labels."""
        rows, cols = self.settings["grid"]
        return rows, cols

    def __len__(self) -> int:
        return len(self._samples)

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self._samples

    def labels(self, sample_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """`word_ids` (N, n) int32 (-1 = none) and `scores` (N, n) float32 of one sample."""
        if sample_id not in self._samples:
            reason = self.skipped.get(sample_id, "not in the labelled data file")
            raise KeyError(f"no SEA labels for sample {sample_id!r} in {self.out_dir}: {reason}")
        name, row = self._samples[sample_id]
        if name not in self._handles:
            self._handles[name] = safe_open(str(self.out_dir / name), framework="pt")
        handle = self._handles[name]
        word_ids = handle.get_slice("word_ids")[row : row + 1][0]
        scores = handle.get_slice("scores")[row : row + 1][0]
        return word_ids, scores.float()
