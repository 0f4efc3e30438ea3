"""Reading an offline wandb run back from its files (wandb 0.31 ships no reader of its .wandb format)."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def offline_run(wandb_dir: Path) -> Path:
    """The one offline run folder under `wandb_dir`/wandb (a run started with `dir=wandb_dir`), complete."""
    [run] = list((wandb_dir / "wandb").glob("offline-run-*"))
    return complete_run(run)


def complete_run(run: Path, timeout: float = 60.0) -> Path:
    """`run` once its .wandb file holds the exit record.

    `wandb.finish()` can return before wandb's service has written the last records (seen on busy
    CPUs: an empty summary read right after it), so readers wait for it.
    """
    import time

    from wandb.proto import wandb_internal_pb2

    [path] = list(run.glob("run-*.wandb"))
    deadline = time.monotonic() + timeout
    while True:
        for payload in wandb_records(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            if record.WhichOneof("record_type") == "exit":
                return run
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} has no exit record after {timeout} s")
        time.sleep(0.2)


def wandb_records(path: Path):
    """The protobuf payloads of a .wandb file: wandb's LevelDB-style log (a 7-byte ':W&B' header, then
    32 KiB blocks of records, each with a 7-byte header: crc, length, type FULL/FIRST/MIDDLE/LAST)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb data file"
    block, position, pending = 32768, 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        payload = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 0:  # zero padding at the end of the file
            break
        pending += payload
        if kind in (1, 4):  # FULL or LAST: a whole record
            yield pending
            pending = b""


def wandb_history(run: Path):
    """The history rows (key -> value) that an offline run logged, read from its .wandb file."""
    from wandb.proto import wandb_internal_pb2

    [path] = list(run.glob("run-*.wandb"))
    for payload in wandb_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            items = record.history.item
            yield {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def wandb_summary(run: Path) -> dict:
    """The run's summary values (key -> value, nested keys joined by '/'), last update winning."""
    from wandb.proto import wandb_internal_pb2

    [path] = list(run.glob("run-*.wandb"))
    summary = {}
    for payload in wandb_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return summary
