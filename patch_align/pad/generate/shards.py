"""Shard files of a PAD generation run: which images a rank owns, resumable writing, merging.

Layout of a run's output folder, for rank r of W ranks:
- `shard-{r:05d}-of-{W:05d}.jsonl`: PAD records, one line each, in data order;
- `shard-{r:05d}-of-{W:05d}.failed.jsonl`: `{"id", "image", "reason"}` per image that
  could not be processed (unreadable, missing);
- `shard-{r:05d}-of-{W:05d}.manifest.json`: how the shard was made (see `pipeline`).

A record is appended as one `write` of a complete line, flushed and fsynced per batch,
so a killed process leaves at most one torn last line. Opening a shard again cuts that
torn tail away and reports the ids already written, which the run then skips.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ShardError(ValueError):
    """A shard file that cannot be trusted (a broken line that is not the last one, a duplicate id)."""


def shard_indices(count: int, rank: int, world_size: int) -> range:
    """The data indices rank `rank` of `world_size` owns: every `world_size`-th from `rank`.

    Striding (rather than contiguous blocks) keeps ranks equally loaded when image sizes
    drift along the file, and depends on nothing but the three numbers.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world size {world_size})")
    return range(rank, count, world_size)


def shard_stem(out_dir: str | os.PathLike, rank: int, world_size: int) -> Path:
    """Path prefix of a rank's files (add `.jsonl`, `.failed.jsonl`, `.manifest.json`)."""
    return Path(out_dir) / f"shard-{rank:05d}-of-{world_size:05d}"


def repair_torn_tail(path: str | os.PathLike) -> int:
    """Cut a last line that has no newline (a write cut by a kill); returns the bytes removed."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        # Scan back in blocks to the last newline; a record line is at most a few MiB.
        end = size
        while end > 0:
            start = max(0, end - (1 << 16))
            f.seek(start)
            block = f.read(end - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        else:
            keep = 0
        f.truncate(keep)
        return size - keep


def read_shard_ids(path: str | os.PathLike) -> list[str]:
    """Ids of the complete lines of a shard file, in order; raises `ShardError` naming a bad line."""
    ids: list[str] = []
    with open(path, "rb") as f:
        for line_number, line in enumerate(f, start=1):
            try:
                record_id = json.loads(line)["id"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                raise ShardError(f"{path}: line {line_number} is not a JSON object with an 'id'") from None
            ids.append(record_id)
    return ids


class ShardWriter:
    """Appends a rank's records and failures; knows which ids are already done (from earlier runs)."""

    def __init__(self, out_dir: str | os.PathLike, rank: int, world_size: int):
        stem = shard_stem(out_dir, rank, world_size)
        self.records_path = stem.with_name(stem.name + ".jsonl")
        self.failed_path = stem.with_name(stem.name + ".failed.jsonl")
        self.repaired_bytes = 0
        self.done: set[str] = set()
        self.records_before = 0
        self.failed_before = 0
        for path in (self.records_path, self.failed_path):
            if path.exists():
                self.repaired_bytes += repair_torn_tail(path)
                ids = read_shard_ids(path)
                if path == self.records_path:
                    self.records_before = len(ids)
                else:
                    self.failed_before = len(ids)
                self.done.update(ids)
        self._records = open(self.records_path, "ab")
        self._failed = open(self.failed_path, "ab")

    def write(self, records: Iterable[dict[str, Any]], failures: Iterable[dict[str, Any]]) -> None:
        """Append one batch: each object one line, then flush and fsync both files."""
        for handle, items in ((self._failed, failures), (self._records, records)):
            lines = b"".join(
                json.dumps(item, separators=(",", ":")).encode("utf-8") + b"\n" for item in items
            )
            if lines:
                handle.write(lines)
                handle.flush()
                os.fsync(handle.fileno())

    def close(self) -> None:
        self._records.close()
        self._failed.close()


@dataclass
class MergeReport:
    """What `merge_shards` found: counts, and the ids missing from every shard or written twice."""

    written: int = 0
    failed: int = 0
    missing: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.unexpected)


def _index_lines(paths: list[Path], expected: set[str], report: MergeReport) -> dict[str, tuple[Path, int]]:
    """`{id: (file, byte offset)}` over all lines of `paths`; duplicates and strangers go into `report`."""
    where: dict[str, tuple[Path, int]] = {}
    for path in paths:
        with open(path, "rb") as f:
            offset = 0
            for line_number, line in enumerate(f, start=1):
                if not line.endswith(b"\n"):
                    raise ShardError(
                        f"{path}: line {line_number} is torn (no newline); rerun the generation "
                        "with the same arguments to repair and finish it"
                    )
                try:
                    record_id = json.loads(line)["id"]
                except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                    raise ShardError(
                        f"{path}: line {line_number} is not a JSON object with an 'id'"
                    ) from None
                if record_id in where:
                    report.duplicated.append(record_id)
                elif record_id not in expected:
                    report.unexpected.append(record_id)
                else:
                    where[record_id] = (path, offset)
                offset += len(line)
    return where


def merge_shards(
    out_dir: str | os.PathLike,
    ids: list[str],
    out_path: str | os.PathLike,
    failed_path: str | os.PathLike,
    header: dict[str, Any],
) -> MergeReport:
    """Join every `shard-*.jsonl` of `out_dir` into `out_path` in the order of `ids` (data order).

    Writes `header` as the first line, then one record per id that has one; ids listed
    as failed go to `failed_path` with their reason. Every id must be in exactly one of
    the two; the report lists the ids that are not, and the ids seen twice or not in `ids`.
    """
    out_dir = Path(out_dir)
    record_files = sorted(
        p for p in out_dir.glob("shard-*-of-*.jsonl") if not p.name.endswith(".failed.jsonl")
    )
    failed_files = sorted(out_dir.glob("shard-*-of-*.failed.jsonl"))
    if not record_files:
        raise FileNotFoundError(f"no shard-*.jsonl files in {out_dir}")
    report = MergeReport()
    expected = set(ids)
    records = _index_lines(record_files, expected, report)
    failures = _index_lines(failed_files, expected, report)
    handles: dict[Path, Any] = {}
    try:
        with open(out_path, "wb") as out, open(failed_path, "wb") as failed_out:
            out.write(json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\n")
            for record_id in ids:
                found = records.get(record_id) or failures.get(record_id)
                if found is None:
                    report.missing.append(record_id)
                    continue
                if record_id in records and record_id in failures:
                    report.duplicated.append(record_id)
                path, offset = found
                handle = handles.get(path) or handles.setdefault(path, open(path, "rb"))
                handle.seek(offset)
                if record_id in records:
                    out.write(handle.readline())
                    report.written += 1
                else:
                    failed_out.write(handle.readline())
                    report.failed += 1
    finally:
        for handle in handles.values():
            handle.close()
    return report
