"""What NVML sees of a GPU: device-wide memory (version 2, which splits off the driver's reserve),
per-process usage where the driver gives it, clocks, their slow-down reasons and temperature, and a
sampler thread that keeps the peak.

NVML has no peak counter, so the sampler polls (one call costs a few microseconds). The reader is
the seam: tests hand the sampler and the pre-flight check a fake one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


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
    """No NVML library, no driver, no such GPU, or a call that failed; the message says which.
    Every NVML failure is this one exception, so a caller degrades to a note with one except."""


@dataclass(frozen=True)
class NvmlDevice:
    index: int  # NVML's: every GPU on the host, in PCI bus order
    uuid: str  # GPU-xxxxxxxx-..., the same in NVML, CUDA and nvidia-smi
    name: str


def _bare_uuid(uuid: str) -> str:
    return uuid.strip().lower().removeprefix("gpu-")


def nvml_index_for(cuda_index: int, devices: list[NvmlDevice], visible: str | None,
                   order: str | None, cuda_uuid: str | None = None) -> int:
    """The NVML index of the GPU that CUDA calls `cuda_index`.

    NVML numbers every GPU on the host in PCI bus order; CUDA numbers the visible ones
    (CUDA_VISIBLE_DEVICES: indices or UUIDs) in CUDA_DEVICE_ORDER, fastest first by default.
    Where CUDA is already started its own UUID for the device (`cuda_uuid`) settles it.
    """
    def by_uuid(uuid: str) -> int:
        wanted = _bare_uuid(uuid)
        found = [d.index for d in devices if _bare_uuid(d.uuid).startswith(wanted)]
        if len(found) != 1:
            raise NvmlUnavailable(f"NVML has {'no' if not found else 'more than one'} GPU whose "
                                  f"UUID starts {uuid!r}")
        return found[0]

    if cuda_uuid is not None:
        return by_uuid(cuda_uuid)
    entries = None if visible is None else [v.strip() for v in visible.split(",") if v.strip()]
    if entries is not None and cuda_index >= len(entries):
        raise NvmlUnavailable(f"CUDA_VISIBLE_DEVICES={visible!r} shows no GPU {cuda_index}")
    entry = str(cuda_index) if entries is None else entries[cuda_index]
    if entry.upper().startswith("MIG-"):
        raise NvmlUnavailable(f"GPU {cuda_index} is a MIG instance ({entry}); NVML's memory "
                              f"figures here would be the whole card's")
    if not entry.isdigit():
        return by_uuid(entry)
    # Fastest first orders equal cards by PCI bus, as NVML does; unequal ones may differ.
    if (order or "FASTEST_FIRST") != "PCI_BUS_ID" and len({d.name for d in devices}) > 1:
        raise NvmlUnavailable("the GPUs differ and CUDA_DEVICE_ORDER is not PCI_BUS_ID, so "
                              "CUDA's numbering may not be NVML's; set CUDA_DEVICE_ORDER="
                              "PCI_BUS_ID or name the GPU by UUID in CUDA_VISIBLE_DEVICES")
    if int(entry) >= len(devices):
        raise NvmlUnavailable(f"NVML sees {len(devices)} GPU(s), none with index {entry}")
    # CUDA numbers the cards this process may open; where a cgroup hides some (Slurm's
    # ConstrainDevices), NVML's list of those it could open is in the same order
    return devices[int(entry)].index


def _cuda_uuid(cuda_index: int) -> str | None:
    """CUDA's UUID for the device, where this process has started CUDA (never starts it: the
    parent takes its NVML baseline before any CUDA context exists)."""
    import torch

    if not torch.cuda.is_initialized():
        return None
    return str(torch.cuda.get_device_properties(cuda_index).uuid)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


class GpuReader(Protocol):
    """What the instruments read of one card: NvmlReader on a GPU; in tests, the one fake of it
    (tests/helpers.py FakeCard), the seam through which the CPU covers the GPU's logic. Each
    method raises NvmlUnavailable, and nothing else, when the card cannot say."""

    def memory(self) -> MemoryInfo: ...
    def used_bytes(self) -> int: ...
    def processes(self) -> list[GpuProcess] | None: ...
    def sm_clock_mhz(self) -> int: ...
    def max_sm_clock_mhz(self) -> int: ...
    def clock_event_reasons(self) -> int: ...
    def violation_ns(self) -> dict[str, int]: ...
    def compute_capability(self) -> tuple[int, int]: ...
    def temperature_c(self) -> int: ...
    def total_energy_mj(self) -> int: ...
    def power_mw(self) -> int: ...
    def name(self) -> str: ...
    def driver_version(self) -> str: ...
    def close(self) -> None: ...


class NvmlReader:
    """One GPU through pynvml (a GpuReader). Close it (or use `with`): NVML is shut down each time.
    Each method raises NvmlUnavailable, and nothing else, when NVML fails."""

    def __init__(self, cuda_index: int = 0):
        try:
            import pynvml
        except ImportError as exc:
            raise NvmlUnavailable(f"nvidia-ml-py is not installed ({exc})") from None
        self._nvml = pynvml
        self._call("NVML could not start", pynvml.nvmlInit)
        try:
            count = self._call("no GPU count", pynvml.nvmlDeviceGetCount)
            devices = [d for d in map(self._device_if_open, range(count)) if d is not None]
            if not devices:
                raise NvmlUnavailable(f"NVML may open none of the {count} GPU(s) on this host")
            index = nvml_index_for(cuda_index, devices, os.environ.get("CUDA_VISIBLE_DEVICES"),
                                   os.environ.get("CUDA_DEVICE_ORDER"), _cuda_uuid(cuda_index))
            self._handle = self._call(f"NVML has no GPU {index}",
                                      pynvml.nvmlDeviceGetHandleByIndex, index)
        except NvmlUnavailable:
            self.close()
            raise
        self.device = next(d for d in devices if d.index == index)

    def _call(self, what: str, function, *args):
        try:
            return function(*args)
        # the process list's struct can mismatch the library: not an NVMLError subclass
        except (self._nvml.NVMLError, self._nvml.NVMLLibraryMismatchError) as exc:
            raise NvmlUnavailable(f"{what}: {exc}") from None

    def _device_if_open(self, index: int) -> NvmlDevice | None:
        """The card, or None where this process may not open it: a cgroup that holds only the
        cards a job was given (Slurm's ConstrainDevices) refuses the others."""
        try:
            handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
        except self._nvml.NVMLError_NoPermission:
            return None
        except self._nvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML has no GPU {index}: {exc}") from None
        return NvmlDevice(index, _text(self._call("no UUID", self._nvml.nvmlDeviceGetUUID, handle)),
                          _text(self._call("no name", self._nvml.nvmlDeviceGetName, handle)))

    def __enter__(self) -> NvmlReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass  # nothing left to release

    def memory(self) -> MemoryInfo:
        info = self._call("memory not readable", self._nvml.nvmlDeviceGetMemoryInfo,
                          self._handle, self._nvml.nvmlMemory_v2)
        return MemoryInfo(info.total, info.reserved, info.used, info.free)

    def used_bytes(self) -> int:
        return self.memory().used_bytes

    def processes(self) -> list[GpuProcess] | None:
        """Compute processes on the GPU, or None where the driver hides them (most containers)."""
        try:
            found = self._call("no process list",
                               self._nvml.nvmlDeviceGetComputeRunningProcesses, self._handle)
        except NvmlUnavailable:
            return None
        processes = []
        for p in found:
            try:
                name = _text(self._call("", self._nvml.nvmlSystemGetProcessName, p.pid))
            except NvmlUnavailable:
                name = "?"
            processes.append(GpuProcess(p.pid, p.usedGpuMemory, name))
        return processes

    def sm_clock_mhz(self) -> int:
        return self._call("no SM clock", self._nvml.nvmlDeviceGetClockInfo, self._handle,
                          self._nvml.NVML_CLOCK_SM)

    def max_sm_clock_mhz(self) -> int:
        return self._call("no maximum SM clock", self._nvml.nvmlDeviceGetMaxClockInfo,
                          self._handle, self._nvml.NVML_CLOCK_SM)

    def clock_event_reasons(self) -> int:
        """Why the clocks are below their maximum now: a mask of nvmlClocksEventReason bits.
        A driver older than the binding lacks the new call (FUNCTION_NOT_FOUND), and an older
        binding the new name, but both have the old one, of throttle reasons; the bits are the
        same."""
        for name in ("nvmlDeviceGetCurrentClocksEventReasons",
                     "nvmlDeviceGetCurrentClocksThrottleReasons"):
            read = getattr(self._nvml, name, None)  # an older binding lacks the newer name
            if read is None:
                continue
            try:
                return read(self._handle)
            except self._nvml.NVMLError_FunctionNotFound:
                continue
            except self._nvml.NVMLError as exc:
                raise NvmlUnavailable(f"no clock-event reasons: {exc}") from None
        raise NvmlUnavailable("no clock-event reasons: this driver has neither call")

    def violation_ns(self) -> dict[str, int]:
        """Nanoseconds the card has spent held below its clocks by its power cap and by heat,
        since the driver loaded: cumulative counters, so a window's share is the difference of
        two reads, whatever happened between them (a sample between repeats, when the card is
        idle, never sees a power cap during one). Policies the card does not count are left
        out."""
        found = {}
        for words, policy in (("power cap", self._nvml.NVML_PERF_POLICY_POWER),
                              ("thermal", self._nvml.NVML_PERF_POLICY_THERMAL)):
            try:
                found[words] = self._nvml.nvmlDeviceGetViolationStatus(
                    self._handle, policy).violationTime
            except self._nvml.NVMLError:
                continue
        return found

    def compute_capability(self) -> tuple[int, int]:
        """(major, minor): 9.0 for an H100 or H200."""
        major, minor = self._call("no compute capability",
                                  self._nvml.nvmlDeviceGetCudaComputeCapability, self._handle)
        return int(major), int(minor)

    def temperature_c(self) -> int:
        return self._call("no temperature", self._nvml.nvmlDeviceGetTemperature, self._handle,
                          self._nvml.NVML_TEMPERATURE_GPU)

    def total_energy_mj(self) -> int:
        """Millijoules used since the driver loaded (Volta and later): a counter, so the energy
        of a window is the difference of two reads."""
        return self._call("no energy counter", self._nvml.nvmlDeviceGetTotalEnergyConsumption,
                          self._handle)

    def power_mw(self) -> int:
        """Power draw now, in milliwatts: NVML's instantaneous field where the driver has it,
        else nvmlDeviceGetPowerUsage, which on Ampere and later averages over a second and so
        smears a 2 s window's edges."""
        field = getattr(self._nvml, "NVML_FI_DEV_POWER_INSTANT", None)  # newer bindings only
        if field is not None:
            try:
                value = self._nvml.nvmlDeviceGetFieldValues(self._handle, [field])[0]
            except self._nvml.NVMLError:
                value = None  # a driver without field values: the averaged call below
            if value is not None and value.nvmlReturn == self._nvml.NVML_SUCCESS:
                return int(_field_number(self._nvml, value))
        return self._call("no power reading", self._nvml.nvmlDeviceGetPowerUsage, self._handle)

    def name(self) -> str:
        return self.device.name

    def driver_version(self) -> str:
        return _text(self._call("no driver version", self._nvml.nvmlSystemGetDriverVersion))


def _field_number(nvml, value) -> float:
    """An NVML field value's number, read as its value type says (the oldest supported binding
    lacks some of the types' names)."""
    members = {getattr(nvml, f"NVML_VALUE_TYPE_{name}"): member for name, member in (
        ("DOUBLE", "dVal"), ("UNSIGNED_INT", "uiVal"), ("UNSIGNED_LONG", "ulVal"),
        ("UNSIGNED_LONG_LONG", "ullVal"), ("SIGNED_LONG_LONG", "sllVal"),
        ("SIGNED_INT", "siVal"), ("UNSIGNED_SHORT", "usVal"))
        if hasattr(nvml, f"NVML_VALUE_TYPE_{name}")}
    return getattr(value.value, members[value.valueType])


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


