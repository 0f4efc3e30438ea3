"""Shared pytest fixtures: the tiny LLaVA setup and a usable copy of the upstream golden files.

Importing this module only sets environment variables (no torch / transformers import), so that
collecting a pure-Python test stays fast and nothing can reach a model hub or an online logger.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["WANDB_MODE"] = "offline"
# Read by torch when it starts: the test machines have 2 shared cores.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")
# DeepSpeed compiles its CPU shared-memory op the first time a process starts its comm layer, into
# TORCH_EXTENSIONS_DIR, by default ~/.cache/torch_extensions: one folder for every checkout on the
# machine, rebuilt whenever the previous builder's paths or ninja version differ, behind a lock file
# that a killed or paused builder leaves for good (every later DeepSpeed process then waits on it).
# The tests keep their own inside the environment, and every test process finds the environment's
# tools (ninja among them) first on PATH; `make test` builds the op there before the first test.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
os.environ["TORCH_EXTENSIONS_DIR"] = str(Path(sys.prefix) / "torch_extensions")  # as `make test`

UPSTREAM_GOLDEN = Path(__file__).parent / "data" / "upstream_golden"
FIXTURES_PLACEHOLDER = "@FIXTURES@"


@pytest.fixture(scope="session")
def tiny_setup(tmp_path_factory):
    """A built ``llava.tiny.TinyLlavaSetup`` (tiny LLM, CLIP tower, dataset), shared by the session."""
    from llava.tiny import build_tiny_llava_setup

    return build_tiny_llava_setup(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def golden_dir(tmp_path_factory) -> Path:
    """A copy of tests/data/upstream_golden whose .json files point at the copy's ``fixtures-437``.

    The checkpoints' configs name their vision tower and LoRA base by absolute path; the committed
    files carry ``@FIXTURES@`` instead, which is replaced here.
    """
    copy = tmp_path_factory.mktemp("golden") / "upstream_golden"
    shutil.copytree(UPSTREAM_GOLDEN, copy)
    fixtures_path = str((copy / "fixtures-437").resolve())
    for json_file in copy.rglob("*.json"):
        text = json_file.read_text()
        if FIXTURES_PLACEHOLDER in text:
            json_file.write_text(text.replace(FIXTURES_PLACEHOLDER, fixtures_path))
    return copy


def pytest_runtest_makereport(item, call):
    """In CI (`CI=true`), a skipped test fails: CI installs every dependency the suite tests, so a skip
    there means a dependency went missing and the test would silently stop guarding its path."""
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return None
    from _pytest.runner import TestReport

    report = TestReport.from_item_and_call(item, call)
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where nothing may be skipped: {reason}"
    return report
