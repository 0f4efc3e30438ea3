"""Tiny training runs on several CPU processes, for the multi-process tests (`test_distributed_*.py`).

A run is launched the way a real one is: `torchrun` (gloo, plain DDP) or the `deepspeed` launcher,
each process with one thread, so 2 ranks share the 2 cores of the test machines. The data are the
fixture models' 24 stage-1 samples, made uneven on purpose (see `write_uneven_stage1_data`), so that
two ranks see different numbers of regions and of caption tokens in most steps: a normalisation that
divides by a per-process count instead of the count over all processes changes the results.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data" / "upstream_golden" / "fixtures-437"
BIN = Path(sys.executable).parent
PATCH_ENTRY = ("-m", "patch_align.train")
LLAVA_ENTRY = ("-m", "llava.train.train")
LAUNCHERS = ("python", "torchrun", "deepspeed")
# A tiny run takes 12-25 s on 2 cores; this is for a loaded machine, and a hang fails within it.
RUN_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a test run: offline, CPU only, one thread per process, the venv's
    launchers on PATH, plus `extra`."""
    return {
        **os.environ, "HF_HUB_OFFLINE": "1", "WANDB_DISABLED": "true", "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONFAULTHANDLER": "1",  # a rank killed by a signal prints where it was
        **(extra or {}),
    }


def launch(
    entry: tuple[str, ...] | list[str],
    flags: list[str],
    *,
    processes: int = 1,
    launcher: str = "torchrun",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run `entry` (`("-m", module)` or `(script.py,)`) with `flags` on `processes` local ranks;
    `env` adds environment variables."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {LAUNCHERS}, got {launcher!r}")
    if launcher == "python" and processes != 1:
        raise ValueError("the python launcher runs one process")
    env = run_env(env)
    entry = list(entry)
    if launcher == "python":
        cmd = [sys.executable, *entry]
    elif launcher == "torchrun":  # --standalone: torchrun binds a free port itself (no race for it)
        cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(processes), *entry]
    else:  # the deepspeed launcher takes a module as `--module name`, a script as its path
        target = ["--module", entry[1]] if entry[0] == "-m" else entry
        port = str(free_port())
        cmd = [str(BIN / "deepspeed"), "--num_gpus", str(processes), "--master_port", port, *target]
    return run_process_group([*cmd, *flags], cwd=REPO, env=env)


def run_process_group(
    cmd: list[str], *, timeout: float = RUN_TIMEOUT_S, **popen_kwargs
) -> subprocess.CompletedProcess:
    """Run `cmd` to the end in a process group of its own, capturing its text output.

    A launcher (`torchrun`, `deepspeed`, a launch script) starts its ranks as children; killing only
    the launcher on a timeout would leave them running, holding the cores (and any lock they hold)
    for the tests after. On a timeout the whole group gets SIGABRT (ranks started with
    PYTHONFAULTHANDLER print where they were), then SIGKILL; the result has exit status 124 and its
    stderr ends with a line saying so, for `assert_succeeded` to show."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, **popen_kwargs) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
            return subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGABRT)
            try:
                stdout, stderr = process.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                stdout, stderr = process.communicate()
            _signal_group(process.pid, signal.SIGKILL)  # ranks that outlived their launcher
            note = f"\n[timed out after {timeout:g} s; its process group was killed]\n"
            return subprocess.CompletedProcess(cmd, 124, stdout or "", (stderr or "") + note)


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except ProcessLookupError:  # every process of the group has already exited
        pass


def assert_succeeded(run: subprocess.CompletedProcess) -> None:
    """The run exited 0; else show its error lines (a rank's traceback is not at the end) and the tail."""
    if run.returncode == 0:
        return
    output = run.stdout + run.stderr
    errors = [line for line in output.splitlines() if "Error" in line or "error:" in line][:20]
    raise AssertionError("\n".join([f"exit status {run.returncode}", *errors, "...", output[-3000:]]))


def step_logs(output_dir: Path) -> list[dict]:
    """The per-step training logs (`log_history` entries with a `loss`) of a finished run."""
    history = json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]
    return [entry for entry in history if "loss" in entry]


def write_uneven_stage1_data(root: Path) -> tuple[Path, Path]:
    """The fixture stage-1 samples and PAD file, with every third sample keeping one region of its
    two and every even sample a caption of half the length. Returns (data JSON, PAD JSON)."""
    samples = json.loads((FIXTURES / "pretrain.json").read_text())
    records = json.loads((FIXTURES / "pad.json").read_text())
    for index, (sample, record) in enumerate(zip(samples, records, strict=True)):
        assert sample["id"] == record["id"]
        if index % 3 == 0:
            record["regions"] = record["regions"][:1]
        if index % 2 == 0:
            answer = sample["conversations"][1]
            answer["value"] = answer["value"].split(" and ")[0]
    root.mkdir(parents=True, exist_ok=True)
    data, pad = root / "pretrain.json", root / "pad.json"
    data.write_text(json.dumps(samples))
    pad.write_text(json.dumps(records))
    return data, pad


def stage1_flags(output_dir: Path, data: Path, pad: Path | None = None, **overrides) -> list[str]:
    """LLaVA-1.5 stage-1 flags on the fixture models (plus `--pad_path` when given); `overrides` win."""
    flags = {
        "model_name_or_path": FIXTURES / "llm", "version": "plain", "data_path": data,
        "image_folder": FIXTURES / "images", "vision_tower": FIXTURES / "clip",
        "mm_projector_type": "mlp2x_gelu", "tune_mm_mlp_adapter": True, "mm_vision_select_layer": -2,
        "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "output_dir": output_dir,
        "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "max_steps": 4,
        "learning_rate": 1e-2, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
        "model_max_length": 256, "dataloader_num_workers": 0, "disable_tqdm": True, "seed": 0,
    }
    if pad is not None:
        flags.update(pad_path=pad, patch_beta_schedule="constant", patch_loss_weight=5.0)
    flags.update(overrides)
    return [part for key, value in flags.items() for part in (f"--{key}", str(value))]


def log_differences(reference: Path, other: Path, keys: tuple[str, ...]) -> dict[str, float]:
    """Largest relative difference of each logged `key` over the steps; the step lists must match."""
    ref_logs, other_logs = step_logs(reference), step_logs(other)
    assert [e["step"] for e in other_logs] == [e["step"] for e in ref_logs]
    pairs = list(zip(ref_logs, other_logs, strict=True))
    return {key: max(abs(b[key] - a[key]) / max(abs(a[key]), 1e-12) for a, b in pairs) for key in keys}


def run_differences(reference: Path, other: Path, keys: tuple[str, ...]) -> dict[str, float]:
    """`log_differences`, and the largest absolute difference of the saved projector weights
    (`mm_projector`)."""
    differences = log_differences(reference, other, keys)
    ref_state = torch.load(Path(reference) / "mm_projector.bin", weights_only=True)
    other_state = torch.load(Path(other) / "mm_projector.bin", weights_only=True)
    assert ref_state.keys() == other_state.keys()
    differences["mm_projector"] = max(float((ref_state[k] - other_state[k]).abs().max()) for k in ref_state)
    return differences
