"""Evaluation in several processes: `model_vqa_loader` chunks answered by concurrent processes,
launched and merged as the eval scripts do (`answer_in_chunks` in scripts/v1_5/eval/common.sh,
one process per entry of CUDA_VISIBLE_DEVICES), give the answers file of one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = [
    {"question_id": 1, "image": "img003.png", "text": "What is in the picture?"},
    {"question_id": 2, "image": "img001.png", "text": "Name one object."},
    {"question_id": "q3", "text": "Describe a red box."},
    {"question_id": 4, "image": "img000.png", "text": "What colour is the left box?"},
    {"question_id": 5, "image": "img005.png", "text": "box?"},
]


def answer_in_chunks(golden_dir: Path, questions: Path, answers: Path, devices: str) -> list[dict]:
    """Run the eval scripts' chunked answering with CUDA_VISIBLE_DEVICES=`devices`; the merged answers."""
    env = {
        **os.environ, "MODEL_PATH": str(golden_dir / "llava-v1.5-tiny"), "PYTHON": sys.executable,
        "BATCH_SIZE": "2", "CUDA_VISIBLE_DEVICES": devices, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
    }
    script = 'source scripts/v1_5/eval/common.sh && answer_in_chunks "$1" "$2" "$3" --max_new_tokens 6'
    images = golden_dir / "fixtures-437" / "images"
    run = subprocess.run(
        ["bash", "-c", script, "answer_in_chunks", str(questions), str(images), str(answers)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    return [json.loads(line) for line in (answers / "merge.jsonl").read_text().splitlines()]


@pytest.mark.slow  # 3 processes load the tiny checkpoint (~10 s on 2 cores)
def test_two_chunk_processes_merged_give_the_answers_of_one_process(golden_dir, tmp_path):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    single = answer_in_chunks(golden_dir, questions, tmp_path / "one", "0")
    merged = answer_in_chunks(golden_dir, questions, tmp_path / "two", "0,1")
    chunks = [tmp_path / "two" / f"2_{k}.jsonl" for k in (0, 1)]
    assert [len(path.read_text().splitlines()) for path in chunks] == [3, 2]  # both processes answered
    assert (tmp_path / "one" / "1_0.jsonl").exists()
    assert single[0]["text"] == ",ox,ox,ox"  # upstream's greedy answer (test_model_vqa_loader.py)
    assert [a["question_id"] for a in merged] == [q["question_id"] for q in QUESTIONS]
    # answer ids are random per record (upstream's shortuuid); everything else is equal
    strip = [{k: v for k, v in a.items() if k != "answer_id"} for a in single]
    assert [{k: v for k, v in a.items() if k != "answer_id"} for a in merged] == strip
    assert len({a["answer_id"] for a in merged}) == len(QUESTIONS)
