"""What several test modules share: paths, skip marks, running a module as a user does."""

import json
import os
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
# The plugin to name with -p where the package is not installed (its pytest11 entry point absent).
PLUGIN = [] if any(ep.value == "bench.pytest_plugin" for ep in entry_points(group="pytest11")) \
    else ["bench.pytest_plugin"]
DEBIAN_DATA = Path("/usr/share/datasets/fashion-mnist")

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_real_data = pytest.mark.skipif(
    not DEBIAN_DATA.is_dir(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")


def one_line_error(result) -> str:
    """The single line a refused command prints on standard error (exit status 2)."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def run_module(*args, cwd=None, env=None, timeout=300):
    """`python -m ...` as a user runs it, from the project root unless told otherwise."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=full_env, timeout=timeout)


# bench.run options for tests that mean the CPU, so the suite passes where a GPU is visible too
CPU_SYNTHETIC = ["--device", "cpu", "--data", "synthetic", "--no-report"]
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}  # a machine without a GPU, wherever the test runs


def rows_of(run_dir):
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def _ctrl_c_as_at_a_terminal():
    """SIGINT's default action, as a terminal gives it: a shell that starts the suite in the
    background leaves SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_grid_and_wait_for_a_row(out, *more_args, **popen):
    """Start a four-cell CPU grid writing to `out`; return once its first row is on disk."""
    cmd = [sys.executable, "-m", "bench.run", "--grid", "smoke", "--set",
           "batch_size=32,64,128,256", "--set", "placement=device", "--out", str(out),
           *CPU_SYNTHETIC, *more_args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=_ctrl_c_as_at_a_terminal, **popen)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while not (results.exists() and results.read_text().count("\n") >= 1):
        assert time.monotonic() < deadline and proc.poll() is None, "no row was written"
        time.sleep(0.05)
    return proc


def slowed_tree(dest: Path, every: int) -> Path:
    """A copy of this source tree whose training step runs twice every `every`-th call: a
    planted slowdown of real work (every=4 is 25% more time, a 20% drop in examples/s)."""
    import shutil

    for package in ("bench", "lenet"):
        shutil.copytree(ROOT / package, dest / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    with (dest / "lenet" / "train.py").open("a") as f:
        f.write(f"""

# planted slowdown, for tests of the speed gate
_unslowed, _calls = TrainStep.__call__, [0]


def _slowed(self, images, labels):
    _calls[0] += 1
    if _calls[0] % {every} == 0:
        _unslowed(self, images, labels)
    return _unslowed(self, images, labels)


TrainStep.__call__ = _slowed
""")
    return dest
