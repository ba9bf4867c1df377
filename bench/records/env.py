"""Where a run happened: GPU, driver, CUDA, library versions, host, commit. Written as env.json."""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
import torchvision

from bench.instruments.nvml import NvmlReader, NvmlUnavailable


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collect(device: torch.device) -> dict:
    env = {
        "device": str(device),
        "gpu_name": None,
        "gpu_total_bytes": None,
        "driver_version": None,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
        else None,
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "python_version": platform.python_version(),
        "python": sys.executable,
        "host": platform.node(),
        "cpu": _cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "commit": _git_commit(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "nvml_note": None,
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
