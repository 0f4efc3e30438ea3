"""The in-training alignment evaluation (`--align_eval_pad`): flags, and an offline wandb run whose
logged Align mIoU / pointing equal `patch-align analyze` on the same projector and PAD subset."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from patch_align.align_eval import AlignEvalArguments

FIXTURES = Path(__file__).parent / "data" / "upstream_golden" / "fixtures-437"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"align_eval_steps": 5}, "--align_eval_steps 5 is not supported: it sets the in-training"),
        ({"align_eval_images": 2}, "--align_eval_images 2 is not supported"),
        ({"align_eval_pad": "missing.json"}, "--align_eval_pad missing.json: no such file"),
        ({"align_eval_pad": str(FIXTURES / "pad.json"), "align_eval_steps": 0}, "must be >= 1, got 0"),
        ({"align_eval_pad": str(FIXTURES / "pad.json"), "align_eval_images": 0}, "must be >= 1, got 0"),
    ],
)
def test_bad_align_eval_flags_are_refused_by_name(flags, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        AlignEvalArguments(**flags)


def test_off_by_default():
    assert AlignEvalArguments().align_eval_pad is None


def _offline_run(wandb_dir: Path) -> Path:
    [run] = list((wandb_dir / "wandb").glob("offline-run-*"))
    return run


def _wandb_records(path: Path):
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


def _wandb_history(run: Path):
    """The history rows (key -> value) that an offline run logged, read from its .wandb file."""
    from wandb.proto import wandb_internal_pb2

    [path] = list(run.glob("run-*.wandb"))
    for payload in _wandb_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            items = record.history.item
            yield {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


@pytest.mark.slow
def test_logged_alignment_equals_analyze_on_the_same_projector_and_subset(tmp_path, monkeypatch):
    from patch_align.cli import main as patch_align_main
    from patch_align.train import main as train_main
    from tests.test_patch_trainer import stage1_argv

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_PROJECT", "align-eval-test")
    out = tmp_path / "run"
    train_main(
        stage1_argv(
            out, max_steps=4, report_to="wandb", align_eval_pad=FIXTURES / "pad.json",
            align_eval_steps=2, align_eval_images=3,
        )
    )
    import wandb

    wandb.finish()  # what the end of a training process does; the run's files are complete after it
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "align_eval/miou" in entry]
    assert [entry["step"] for entry in logged] == [2, 4]
    assert all(entry["align_eval/regions"] > 0 and entry["align_eval/seconds"] > 0 for entry in logged)
    assert (out / "align_eval" / "region_map_step4.png").is_file()

    run = _offline_run(tmp_path)
    rows = [row for row in _wandb_history(run) if "align_eval/miou" in row]
    assert [row["train/global_step"] for row in rows] == [2, 4]
    for row, entry in zip(rows, logged, strict=True):
        for key in ("align_eval/miou", "align_eval/pointing_accuracy", "align_eval/mean_cos_inside"):
            assert row[key] == entry[key]
    assert all(row["align_eval/region_map/_type"] == "image-file" for row in rows)
    assert len(list((run / "files" / "media" / "images" / "align_eval").glob("region_map_*.png"))) == 2

    analyzed = tmp_path / "analyze"
    code = patch_align_main([
        "analyze", "--model-path", str(out), "--model-base", str(FIXTURES / "llm"),
        "--pad", str(FIXTURES / "pad.json"), "--image-folder", str(FIXTURES / "images"),
        "--max-images", "3", "--out", str(analyzed), "--device", "cpu", "--no-progress",
    ])
    assert code == 0
    alignment = json.loads((analyzed / "metrics.json").read_text())["alignment"]
    last = rows[-1]
    assert last["align_eval/miou"] == pytest.approx(alignment["miou"], abs=1e-6)
    assert last["align_eval/pointing_accuracy"] == alignment["pointing_accuracy"]
    assert last["align_eval/mean_cos_inside"] == pytest.approx(alignment["mean_cos_inside"], abs=1e-6)
    assert last["align_eval/regions"] == alignment["regions_scored"]
