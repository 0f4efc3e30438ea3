"""Shard assignment, torn-tail repair, resume bookkeeping and merging, without any model."""

from __future__ import annotations

import json

import pytest

from patch_align.pad.generate.shards import (
    ShardError,
    ShardWriter,
    merge_shards,
    read_shard_ids,
    repair_torn_tail,
    shard_indices,
)


def test_ranks_own_disjoint_strided_indices_covering_the_data():
    assert [list(shard_indices(7, r, 3)) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert list(shard_indices(2, 3, 4)) == []
    with pytest.raises(ValueError, match="rank 2 is not in"):
        shard_indices(5, 2, 2)


def test_torn_last_line_is_cut_and_complete_lines_are_kept(tmp_path):
    path = tmp_path / "shard.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "c", "ima')
    assert repair_torn_tail(path) == len(b'{"id": "c", "ima')
    assert path.read_bytes() == b'{"id": "a"}\n{"id": "b"}\n'
    assert repair_torn_tail(path) == 0
    path.write_bytes(b'{"id": "a"')
    assert repair_torn_tail(path) == 10 and path.read_bytes() == b""


def test_a_broken_line_that_is_not_last_is_an_error_naming_it(tmp_path):
    path = tmp_path / "shard.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": \n{"id": "c"}\n')
    with pytest.raises(ShardError, match="line 2 is not a JSON object"):
        read_shard_ids(path)


def test_writer_reopening_a_shard_knows_done_ids_from_records_and_failures(tmp_path):
    writer = ShardWriter(tmp_path, 1, 2)
    writer.write([{"id": "1"}, {"id": "3"}], [{"id": "5", "image": "5.jpg", "reason": "missing"}])
    writer.close()
    with open(tmp_path / "shard-00001-of-00002.jsonl", "ab") as f:
        f.write(b'{"id": "7"')
    again = ShardWriter(tmp_path, 1, 2)
    again.close()
    assert again.done == {"1", "3", "5"}
    assert (again.records_before, again.failed_before, again.repaired_bytes) == (2, 1, 10)


def _write_lines(path, ids):
    path.write_text("".join(json.dumps({"id": i}) + "\n" for i in ids))


def test_merge_orders_by_data_and_splits_failures(tmp_path):
    _write_lines(tmp_path / "shard-00000-of-00002.jsonl", ["a", "c"])
    _write_lines(tmp_path / "shard-00001-of-00002.jsonl", ["d"])
    (tmp_path / "shard-00001-of-00002.failed.jsonl").write_text('{"id": "b", "reason": "unreadable"}\n')
    report = merge_shards(
        tmp_path, ["a", "b", "c", "d"], tmp_path / "pad.jsonl", tmp_path / "failed.jsonl", {"pad_version": 1}
    )
    assert report.ok and (report.written, report.failed) == (3, 1)
    lines = [json.loads(line) for line in (tmp_path / "pad.jsonl").read_text().splitlines()]
    assert lines == [{"pad_version": 1}, {"id": "a"}, {"id": "c"}, {"id": "d"}]
    assert json.loads((tmp_path / "failed.jsonl").read_text()) == {"id": "b", "reason": "unreadable"}


def test_merge_reports_missing_duplicated_and_unknown_ids(tmp_path):
    _write_lines(tmp_path / "shard-00000-of-00001.jsonl", ["a", "a", "zz"])
    report = merge_shards(tmp_path, ["a", "b"], tmp_path / "pad.jsonl", tmp_path / "failed.jsonl", {})
    assert (report.missing, report.duplicated, report.unexpected, report.ok) == (["b"], ["a"], ["zz"], False)


def test_merge_refuses_a_torn_shard(tmp_path):
    (tmp_path / "shard-00000-of-00001.jsonl").write_text('{"id": "a"}\n{"id": "b"')
    with pytest.raises(ShardError, match="line 2 is torn"):
        merge_shards(tmp_path, ["a", "b"], tmp_path / "pad.jsonl", tmp_path / "failed.jsonl", {})
