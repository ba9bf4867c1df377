"""What several test modules share: paths, skip marks, running a module as a user does."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DEBIAN_DATA = Path("/usr/share/datasets/fashion-mnist")

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_real_data = pytest.mark.skipif(
    not DEBIAN_DATA.is_dir(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")


def run_module(*args, cwd=None, env=None, timeout=300):
    """`python -m ...` as a user runs it, from the project root unless told otherwise."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=full_env, timeout=timeout)
