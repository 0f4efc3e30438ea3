"""The multi-process tests' runner (`distributed_runs.run_process_group`): a run that outlives its
timeout takes its children with it, so a hung launcher cannot starve the tests after it."""

from __future__ import annotations

import sys
import time

from distributed_runs import run_process_group

# A "launcher" that starts a child (a "rank") writing its pid, then both sleep far past the timeout.
HANGING_LAUNCHER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(str(child.pid))
print("launched", flush=True)
time.sleep(600)
"""


def process_exists(pid: int) -> bool:
    """`pid` is running (a killed child not yet reaped, a zombie, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_timed_out_run_kills_its_children_and_says_it_timed_out(tmp_path):
    pid_file = tmp_path / "child.pid"
    started = time.monotonic()
    run = run_process_group([sys.executable, "-c", HANGING_LAUNCHER, str(pid_file)], timeout=3)
    assert time.monotonic() - started < 30
    assert run.returncode == 124
    assert "launched" in run.stdout
    assert run.stderr.rstrip().endswith("[timed out after 3 s; its process group was killed]")
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while process_exists(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process_exists(child)


def test_a_finished_run_gives_its_exit_status_and_output():
    run = run_process_group([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"])
    assert (run.returncode, run.stdout, run.stderr) == (3, "out\n", "")
