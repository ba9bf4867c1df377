"""Where a run happened: GPU, driver, CUDA, library versions, host, commit. Written as env.json."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import torch

from bench.instruments.nvml import NvmlReader, NvmlUnavailable


def _git(*args: str) -> str | None:
    """What git says of the tree this code runs from, or None outside one."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _git_branch() -> str | None:
    """The branch checked out; None on a detached HEAD (a CI checkout of one commit)."""
    branch = _git("rev-parse", "--abbrev-ref", "HEAD")
    return None if branch == "HEAD" else branch


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# the environment variables that change what a GPU step allocates: the caching allocator's
# settings and the cuBLAS workspaces (bench.planning.predict reads the same)
MEMORY_SETTINGS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "CUBLAS_WORKSPACE_CONFIG",
                   "CUBLASLT_WORKSPACE_SIZE", "TORCH_CUBLASLT_UNIFIED_WORKSPACE")


def collect(device: torch.device, environ=os.environ) -> dict:
    env = {
        "device": str(device),
        "gpu_name": None,
        "gpu_total_bytes": None,
        "driver_version": None,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
        else None,
        "torch_version": torch.__version__,
        # the installed distribution's version: importing torchvision for its __version__ took
        # 1.4 s of every command's start, for one string
        "torchvision_version": version("torchvision"),
        "python_version": platform.python_version(),
        "python": sys.executable,
        "host": platform.node(),
        "cpu": _cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "commit": _git("rev-parse", "HEAD"),
        # where the commit sits in history (bench.history orders a series' points by it)
        "commit_time": _git("show", "-s", "--format=%cI", "HEAD"),
        "branch": _git_branch(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "nvml_note": None,
        "memory_settings": {name: environ[name] for name in MEMORY_SETTINGS if name in environ},
    }
    if device.type == "cuda":
        try:
            with NvmlReader(device.index or 0) as reader:
                env.update(gpu_name=reader.name(), driver_version=reader.driver_version(),
                           gpu_total_bytes=reader.memory().total_bytes)
        except NvmlUnavailable as exc:
            env["nvml_note"] = str(exc)
            env["gpu_name"] = torch.cuda.get_device_name(device)
    return env
