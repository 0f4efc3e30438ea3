"""Streaming reader for PAD files (a JSON array or JSON Lines, told apart by the first character).

Neither layout is loaded whole: a JSON array is decoded one element at a time from a
growing text buffer with `json.JSONDecoder.raw_decode`, JSON Lines one line at a time.
`iter_pad_entries` never raises for a bad record (it yields it with its problem, so a
validator can go on); `iter_pad_records` and `load_pad_index` are the strict readers
that training uses.
"""
from __future__ import annotations

import codecs
import json
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from patch_align.pad.schema import PadFormatError, PadRecord, parse_pad_header, parse_pad_record

MALFORMED_JSON = "malformed_json"
MALFORMED_RECORD = "malformed_record"

_CHUNK_BYTES = 1 << 20
# A record this large is surely a syntax error, not a record cut by a chunk boundary; stop buffering.
MAX_RECORD_CHARS = 64 << 20
_WHITESPACE = " \t\r\n"


@dataclass(frozen=True)
class JsonItem:
    """One top-level value of the file: `value` when it decoded, else `error` (a syntax error).

    `line` is the 1-based line where the value starts; `bytes_read` how far into the file
    the reader has got (for progress bars).
    """

    line: int
    value: Any
    error: str | None
    bytes_read: int


@dataclass(frozen=True)
class PadEntry:
    """One record position of a PAD file, read or not.

    `number` counts records from 0 (a header is not a record). `record` is set when the
    record parsed; otherwise `problem` is `MALFORMED_JSON` or `MALFORMED_RECORD` and
    `detail` says what is wrong. `raw_id` is the record's `id` when one could be read.
    """

    number: int
    line: int
    record: PadRecord | None
    raw_id: str | None
    problem: str | None
    detail: str | None
    bytes_read: int


def detect_pad_layout(path: str | os.PathLike) -> str:
    """`"json"` when the file's first non-blank character is `[`, `"jsonl"` when it is `{`."""
    with open(path, "rb") as f:
        head = f.read(4096)
        while head.strip() == b"" and len(head) > 0:
            more = f.read(4096)
            if not more:
                break
            head = more
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff" + _WHITESPACE)
    if text.startswith("["):
        return "json"
    if text.startswith("{"):
        return "jsonl"
    if not text:
        raise PadFormatError(f"{path}: file is empty")
    raise PadFormatError(f"{path}: not a PAD file (expected a JSON array '[' or JSON Lines '{{', "
                         f"found {text[:1]!r})")


class _ArrayScanner:
    """Walks the elements of a top-level JSON array held in a file, one buffer fill at a time."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._utf8 = codecs.getincrementaldecoder("utf-8-sig")()
        self._decoder = json.JSONDecoder()
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.bytes_read = 0
        self._line = 1  # line number at self._counted
        self._counted = 0

    def fill(self) -> None:
        """Drop consumed text, then append the next chunk (sets `eof` at the end of the file)."""
        self.line_at(self.pos)
        self.buf = self.buf[self.pos:]
        self._counted -= self.pos
        self.pos = 0
        chunk = self._stream.read(_CHUNK_BYTES)
        self.bytes_read += len(chunk)
        self.buf += self._utf8.decode(chunk, final=not chunk)
        self.eof = not chunk

    def line_at(self, index: int) -> int:
        """1-based line of buffer position `index`."""
        if index >= self._counted:
            self._line += self.buf.count("\n", self._counted, index)
        else:
            self._line -= self.buf.count("\n", index, self._counted)
        self._counted = index
        return self._line

    def skip_whitespace(self) -> bool:
        """Advance to the next non-blank character; False at the end of the file."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.buf):
                return True
            if self.eof:
                return False
            self.fill()

    def decode_value(self) -> tuple[Any, str | None]:
        """Decode the value at `pos`, reading more text while it may be cut by the chunk boundary."""
        while True:
            try:
                value, end = self._decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                if self.eof or len(self.buf) - self.pos > MAX_RECORD_CHARS:
                    return None, f"{err.msg} at line {self.line_at(err.pos)}"
                self.fill()
                continue
            # a scalar ending exactly at the buffer end may continue in the next chunk
            if end == len(self.buf) and not self.eof:
                self.fill()
                continue
            self.pos = end
            return value, None


def _iter_json_array(path: str | os.PathLike) -> Iterator[JsonItem]:
    with open(path, "rb") as stream:
        scan = _ArrayScanner(stream)
        if not scan.skip_whitespace() or scan.buf[scan.pos] != "[":
            yield JsonItem(scan.line_at(scan.pos), None, "file does not start with '['", scan.bytes_read)
            return
        scan.pos += 1
        first = True
        while True:
            if not scan.skip_whitespace():
                yield JsonItem(scan.line_at(scan.pos), None, "unexpected end of file (missing ']')",
                               scan.bytes_read)
                return
            if scan.buf[scan.pos] == "]":
                scan.pos += 1
                if scan.skip_whitespace():
                    yield JsonItem(scan.line_at(scan.pos), None, "extra data after the closing ']'",
                                   scan.bytes_read)
                return
            if not first:
                if scan.buf[scan.pos] != ",":
                    yield JsonItem(scan.line_at(scan.pos), None,
                                   f"expected ',' or ']' between records, found {scan.buf[scan.pos]!r}",
                                   scan.bytes_read)
                    return
                scan.pos += 1
                if not scan.skip_whitespace() or scan.buf[scan.pos] == "]":
                    yield JsonItem(scan.line_at(scan.pos), None, "trailing ',' before ']'", scan.bytes_read)
                    return
            line = scan.line_at(scan.pos)
            value, error = scan.decode_value()
            yield JsonItem(line, value, error, scan.bytes_read)
            if error is not None:
                return  # no safe place to resume inside a broken array
            first = False


def _iter_json_lines(path: str | os.PathLike) -> Iterator[JsonItem]:
    bytes_read = 0
    with open(path, "rb") as stream:
        for line_number, raw in enumerate(stream, start=1):
            bytes_read += len(raw)
            try:
                text = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                yield JsonItem(line_number, None, f"invalid UTF-8: {err.reason}", bytes_read)
                continue
            if not text.strip():
                continue
            try:
                yield JsonItem(line_number, json.loads(text), None, bytes_read)
            except json.JSONDecodeError as err:
                yield JsonItem(line_number, None, f"{err.msg} at column {err.colno}", bytes_read)


def iter_json_items(path: str | os.PathLike) -> Iterator[JsonItem]:
    """Every top-level value of a PAD file (array elements or lines), streamed."""
    if detect_pad_layout(path) == "json":
        yield from _iter_json_array(path)
    else:
        yield from _iter_json_lines(path)


def iter_pad_entries(path: str | os.PathLike) -> Iterator[PadEntry]:
    """Every record position of a PAD file, good or bad, in file order.

    An optional header object `{"pad_version": N}` may come first; files without it are
    version 1. Raises `PadFormatError` only for file-level problems (empty, not JSON/JSONL,
    unsupported version); record problems are yielded.
    """
    number = 0
    for position, item in enumerate(iter_json_items(path)):
        if item.error is None and position == 0:
            try:
                if parse_pad_header(item.value) is not None:
                    continue
            except PadFormatError as err:
                raise PadFormatError(f"{path}: {err}") from None
        if item.error is not None:
            yield PadEntry(number, item.line, None, None, MALFORMED_JSON, item.error, item.bytes_read)
        else:
            raw_id = item.value.get("id") if isinstance(item.value, dict) else None
            raw_id = raw_id if isinstance(raw_id, str) and raw_id else None
            try:
                record = parse_pad_record(item.value)
                yield PadEntry(number, item.line, record, record.id, None, None, item.bytes_read)
            except PadFormatError as err:
                yield PadEntry(number, item.line, None, raw_id, MALFORMED_RECORD, str(err), item.bytes_read)
        number += 1


def describe_entry(path: str | os.PathLike, entry: PadEntry) -> str:
    """Where an entry is: file, record number, line and id when known (for error messages)."""
    id_part = f", id {entry.raw_id}" if entry.raw_id else ""
    return f"{path}: record {entry.number} (line {entry.line}{id_part})"


def iter_pad_records(path: str | os.PathLike) -> Iterator[PadRecord]:
    """The records of a PAD file, streamed; raises `PadFormatError` at the first unreadable one."""
    for entry in iter_pad_entries(path):
        if entry.record is None:
            raise PadFormatError(f"{describe_entry(path, entry)}: {entry.problem}: {entry.detail}")
        yield entry.record


def load_pad_index(path: str | os.PathLike) -> dict[str, PadRecord]:
    """All records keyed by `id`; raises `PadFormatError` on a bad record or a duplicate id."""
    index: dict[str, PadRecord] = {}
    first_seen: dict[str, int] = {}
    for entry in iter_pad_entries(path):
        if entry.record is None:
            raise PadFormatError(f"{describe_entry(path, entry)}: {entry.problem}: {entry.detail}")
        if entry.record.id in index:
            raise PadFormatError(f"{path}: duplicate id {entry.record.id} "
                                 f"(records {first_seen[entry.record.id]} and {entry.number})")
        index[entry.record.id] = entry.record
        first_seen[entry.record.id] = entry.number
    return index


def find_pad_record(index: dict[str, PadRecord], sample_id: str, image: str) -> PadRecord | None:
    """The PAD record joined to a LLaVA sample (same `id`), or None when PAD has none.

    Raises `PadFormatError` when the id matches but the image differs: a join on the wrong
    image would supervise one picture with another's masks.
    """
    record = index.get(sample_id)
    if record is None:
        return None
    if posixpath.normpath(record.image) != posixpath.normpath(image):
        raise PadFormatError(f"PAD record {sample_id} is for image {record.image!r}, "
                             f"but the sample with that id uses {image!r}")
    return record
