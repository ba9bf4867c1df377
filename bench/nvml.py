"""What NVML sees of a GPU: device-wide memory (version 2, which splits off the driver's reserve),
per-process usage where the driver gives it, and a sampler thread that keeps the peak.

NVML has no peak counter, so the sampler polls (one call costs a few microseconds). The reader is
the seam: tests hand the sampler and the pre-flight check a fake one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class MemoryInfo:
    total_bytes: int
    reserved_bytes: int  # held by the driver; NVML version 1 counted it as used
    used_bytes: int  # by contexts and allocations of every process
    free_bytes: int


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_bytes: int | None  # None where the driver does not say
    name: str


class NvmlUnavailable(Exception):
    """No NVML library, no driver or no such GPU; the message says which."""


def nvml_index(cuda_index: int) -> int:
    """NVML numbers every GPU on the host; CUDA only the visible ones. Map one to the other."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if ids and all(v.isdigit() for v in ids) and cuda_index < len(ids):
        return int(ids[cuda_index])
    return cuda_index


class NvmlReader:
    """One GPU through pynvml. Close it (or use `with`): NVML is shut down each time."""

    def __init__(self, cuda_index: int = 0):
        try:
            import pynvml
        except ImportError as exc:
            raise NvmlUnavailable(f"nvidia-ml-py is not installed ({exc})") from None
        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML could not start: {exc}") from None
        try:
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index(cuda_index))
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            raise NvmlUnavailable(f"NVML has no GPU {cuda_index}: {exc}") from None

    def __enter__(self) -> NvmlReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._nvml.nvmlShutdown()

    def memory(self) -> MemoryInfo:
        info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle, version=self._nvml.nvmlMemory_v2)
        return MemoryInfo(info.total, info.reserved, info.used, info.free)

    def used_bytes(self) -> int:
        return self.memory().used_bytes

    def processes(self) -> list[GpuProcess] | None:
        """Compute processes on the GPU, or None where the driver hides them (most containers)."""
        try:
            found = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except self._nvml.NVMLError:
            return None
        processes = []
        for p in found:
            try:
                name = self._nvml.nvmlSystemGetProcessName(p.pid)
                name = name.decode() if isinstance(name, bytes) else name
            except self._nvml.NVMLError:
                name = "?"
            processes.append(GpuProcess(p.pid, p.usedGpuMemory, name))
        return processes

    def name(self) -> str:
        name = self._nvml.nvmlDeviceGetName(self._handle)
        return name.decode() if isinstance(name, bytes) else name

    def driver_version(self) -> str:
        version = self._nvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else version


class PeakSampler:
    """Polls `read()` on a thread every `period_s` and keeps the largest value seen.

        with PeakSampler(reader.used_bytes) as sampler:
            train()
        sampler.peak  # bytes
    """

    def __init__(self, read: Callable[[], int], period_s: float = 0.005):
        self._read, self._period_s = read, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self.peak: int | None = None
        self.samples = 0
        self.error: str | None = None  # the first failure; sampling ends there

    def _sample(self) -> None:
        value = self._read()
        self.samples += 1
        self.peak = value if self.peak is None else max(self.peak, value)

    def _run(self) -> None:
        while True:
            try:
                self._sample()
            except Exception as exc:  # noqa: BLE001 - a failing reader ends sampling, not the cell
                self.error = f"{type(exc).__name__}: {exc}"
                return
            if self._stop.wait(self._period_s):
                return

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> int | None:
        self._stop.set()
        self._thread.join()
        if self.error is None:
            try:  # one last reading, so a peak reached just before stop is not missed
                self._sample()
            except Exception as exc:  # noqa: BLE001
                self.error = f"{type(exc).__name__}: {exc}"
        return self.peak


