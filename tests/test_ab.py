"""The interleaved speed gate: two source trees, each served by its own code, timed in turn."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from bench.ab import median_interval
from helpers import (
    ROOT,
    ctrl_c_as_at_a_terminal,
    one_line_error,
    run_main,
    run_module,
    slowed_tree,
)

ONE_CELL = ["--set", "batch_size=64", "--set", "placement=device", "--device", "cpu"]


def test_the_median_interval_takes_the_binomial_ranks():
    assert median_interval(range(30)) == (9, 20)  # ranks 10 and 21 of 30, as in the tables
    assert median_interval(range(10)) == (1, 8)
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few: the whole range


@pytest.mark.e2e
def test_a_planted_slowdown_fails_the_gate_and_names_the_cell(tmp_path):
    slow = slowed_tree(tmp_path / "slow", every=1, times=3)  # every step thrice: a third
    result = run_module("bench.ab", str(ROOT), str(slow), *ONE_CELL, "--pairs", "2",
                        "--rounds", "4", "--max-slowdown", "10%")
    assert result.returncode == 1, result.stderr
    line = result.stdout.splitlines()[0]
    assert line.startswith("b64-float32-nchw-device: candidate at ")
    assert line.endswith("slowed past the 10% allowed")
    ratio = float(re.search(r"candidate at ([0-9.]+)x", line)[1])
    # 0.31 to 0.45 here (the loop around the step is not slowed); a busy machine has moved a
    # planted half speed up to 0.78
    assert 0.15 < ratio < 0.7
    assert result.stdout.splitlines()[-1] == "1 of 1 cells slowed past 10%"


def test_a_tree_that_is_not_this_project_is_refused(tmp_path):
    line = one_line_error(run_main("bench.ab", tmp_path, *ONE_CELL))
    assert line.startswith(f"python -m bench.ab: error: argument BASE_TREE: {tmp_path} is not a "
                           f"source tree of this project")


@pytest.mark.e2e
def test_a_side_that_cannot_build_its_cell_is_named(tmp_path):
    line = one_line_error(run_module("bench.ab", str(ROOT), str(ROOT), *ONE_CELL, "--data",
                                     "real", "--data-root", str(tmp_path / "nowhere")))
    assert line.startswith("python -m bench.ab: error: the base side failed: DataError: ")


def _fake_tree(where, server_code: str):
    """A source tree whose repeat server is `server_code`: a side that misbehaves."""
    (where / "bench").mkdir(parents=True)
    (where / "bench" / "__init__.py").write_text("")
    (where / "bench" / "repeat_server.py").write_text(server_code)
    return where


HELLO = "import json, sys, time\nprint(json.dumps({'protocol': 1}), flush=True)\n"
# a side that speaks the protocol at once, without torch: the other side's timing is the test
PROMPT = HELLO + """for line in sys.stdin:
    op = json.loads(line)["op"]
    print(json.dumps({"steps": 1} if op == "prepare" else {"seconds": 0.01}), flush=True)
"""


@pytest.mark.parametrize("code, words", [
    ("import time\ntime.sleep(3600)\n",
     "the candidate side did not answer within 2 s while starting and was stopped; its log: "),
    (HELLO + "sys.stdin.readline()\ntime.sleep(3600)\n",
     "the candidate side did not answer within 2 s while prepare and was stopped; its log: "),
    ("print('Loading the weights...', flush=True)\n",
     "does not speak the repeat protocol: it printed 'Loading the weights...'; gate it with "
     "python -m bench.compare instead"),
])
def test_a_side_that_hangs_or_speaks_otherwise_is_one_line_and_exit_2(tmp_path, code, words):
    good, bad = _fake_tree(tmp_path / "good", PROMPT), _fake_tree(tmp_path / "bad", code)
    result = run_main("bench.ab", good, bad, *ONE_CELL, "--pairs", "1", "--rounds", "1",
                      "--timeout", "2")
    assert words in one_line_error(result)


@pytest.mark.e2e
def test_a_side_that_floods_its_standard_error_is_still_served(tmp_path):
    """About 64 KiB of stderr filled a pipe nobody read: the side blocked, and bench.ab with it."""
    loud = slowed_tree(tmp_path / "loud", every=10**9)
    server = loud / "bench" / "repeat_server.py"
    server.write_text(server.read_text().replace(
        "def main() -> int:\n", "def main() -> int:\n    sys.stderr.write('x' * 300_000)\n"))
    result = run_module("bench.ab", str(ROOT), str(loud), *ONE_CELL, "--pairs", "1",
                        "--rounds", "2", "--timeout", "120", timeout=200)
    assert result.returncode in (0, 1), result.stderr
    assert result.stdout.splitlines()[-1].startswith(("passed: 1 cells", "1 of 1 cells"))


@pytest.mark.e2e
@pytest.mark.parametrize("signum, status", [(signal.SIGKILL, -9), (signal.SIGINT, 130)])
def test_a_stopped_gate_leaves_no_server_running(tmp_path, signum, status):
    hung = _fake_tree(tmp_path / "hung", HELLO + "sys.stdin.readline()\ntime.sleep(3600)\n")
    proc = subprocess.Popen([sys.executable, "-m", "bench.ab", str(hung), str(hung), *ONE_CELL],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_as_at_a_terminal)
    deadline = time.monotonic() + 60
    while len(servers := _servers(proc.pid)) < 2:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)  # both asked to prepare, and hung there
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == status
    assert "Traceback" not in stderr
    if signum == signal.SIGINT:
        assert "interrupted: no verdict (the servers were stopped)" in stderr
    time.sleep(0.5)
    assert not [pid for pid in servers if os.path.exists(f"/proc/{pid}")
                and open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] != "Z"]


def _servers(pid) -> list[int]:
    children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    return [int(c) for c in children]
