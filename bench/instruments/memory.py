"""The memory a cell takes, as the allocator and the operating system see it.

On a GPU: PyTorch's caching allocator, whose *allocated* bytes are live tensors and whose
*reserved* bytes add the cache it keeps for reuse. NVML's device-wide figure
(bench.instruments.nvml) adds the CUDA context, the libraries' workspaces and the driver's own
reserve on top. On the CPU: the worker's peak resident set (VmHWM), reset before each attempt, which
counts the libraries and whatever the C allocator kept from earlier cells; and, exact and
repeatable, the peak of live tensor bytes over one step, tracked operator by operator (LiveBytes).
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def vm_size_bytes() -> int | None:
    kib = _status_kib("VmSize")
    return None if kib is None else kib * 1024


def cpu_peak_rss_bytes() -> int | None:
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


@dataclass(frozen=True)
class AllocatorPeaks:
    peak_allocated_bytes: int | None
    peak_reserved_bytes: int | None
    cpu_peak_rss_bytes: int | None


def _start_cuda() -> None:
    """torch.cuda's peak calls do no lazy start: called first in a process, the allocator raises
    'Invalid device argument 0: did you call init?'. Starting CUDA twice is a no-op."""
    torch.cuda.init()


def reset_peaks(device: torch.device) -> None:
    """Start a new peak: the allocator's on a GPU, the resident set's high-water mark on the CPU.
    Safe to call first in a process."""
    if device.type == "cuda":
        _start_cuda()
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        _CLEAR_REFS.write_text("5")  # Linux: "5" resets VmHWM to the current RSS
    except OSError:
        pass  # not Linux, or not allowed: the peak is then the worker's lifetime peak


def read_peaks(device: torch.device) -> AllocatorPeaks:
    if device.type == "cuda":
        _start_cuda()
        return AllocatorPeaks(torch.cuda.max_memory_allocated(device),
                              torch.cuda.max_memory_reserved(device), cpu_peak_rss_bytes())
    return AllocatorPeaks(None, None, cpu_peak_rss_bytes())


def allocated_bytes(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def release(device: torch.device) -> None:
    """Give memory back after a failure: collect dead tensors, drop the cuBLAS workspaces, then
    empty the allocator cache."""
    gc.collect()
    if device.type == "cuda":
        # cuBLAS and cuBLASLt keep their workspaces (32 MiB each on sm90) in the caching allocator
        # as live blocks that empty_cache() leaves alone; the next matmul makes them again
        torch._C._cuda_clearCublasWorkspaces()
        torch.cuda.empty_cache()


def settled_bytes(device: torch.device) -> int:
    """Allocated bytes once dead tensors and library workspaces are released: what a process
    holds between cells. Memory "came back" when this is no higher after a cell than before."""
    release(device)
    return allocated_bytes(device)


def apply_memory_cap(device: torch.device, cap_bytes: int) -> str:
    """Make `cap_bytes` the most this process may use, so real OOMs happen at a smaller size.

    GPU: the allocator's per-process fraction of the card. CPU: an address-space rlimit that leaves
    the process what it already maps (torch's libraries map gigabytes) plus `cap_bytes`.
    Returns how the cap was applied.
    """
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        fraction = min(1.0, cap_bytes / total)
        torch.cuda.set_per_process_memory_fraction(fraction, device)
        return f"allocator limited to {fraction:.4f} of the card"
    import resource

    # garbage mapped now would be freed after the limit is set, and its room added to the cap's
    # (torchvision's FashionMNIST leaves its 47 MB of raw images in a reference cycle)
    gc.collect()
    current = vm_size_bytes()
    if current is None:
        raise RuntimeError("the CPU memory cap needs Linux's /proc/self/status")
    limit = current + cap_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return f"address space limited to {limit} bytes (start-up mappings + cap)"


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of storages created under it that are still alive, and their peak."""

    def __init__(self):
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._tracked: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._tracked.discard(key)
        self.live_bytes -= nbytes

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        # the storage's own identity, not its address: a fake tensor's storage has none
        key = storage._cdata
        if key in self._tracked or storage.nbytes() == 0:
            return  # a view of a storage already counted
        self._tracked.add(key)
        self.live_bytes += storage.nbytes()
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        weakref.finalize(storage, self._free, key, storage.nbytes())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self._track(value)
        return out


class AllocationTrace(LiveBytes):
    """LiveBytes that also keeps the order storages were created and died in: what a caching
    allocator is asked for (bench.planning.allocator). Storages in `existing` (a model's
    parameters, made before the trace) are counted as LiveBytes counts them, since a view of
    one looks new, but are no allocation of the step's."""

    def __init__(self, existing: Iterable[int] = ()):
        super().__init__()
        self._existing = set(existing)
        # ("alloc", bytes, operator) or ("free", the index of its "alloc" event)
        self.events: list[tuple] = []
        self._event_of: dict[int, int] = {}  # storage key -> its "alloc" event's index
        self._operator = ""  # the operator whose outputs are being tracked

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._operator = str(func)
        return super().__torch_dispatch__(func, types, args, kwargs)

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        fresh = key not in self._tracked and storage.nbytes() > 0
        super()._track(tensor)
        if fresh and key not in self._existing:
            self._event_of[key] = len(self.events)
            self.events.append(("alloc", storage.nbytes(), self._operator))

    def _free(self, key: int, nbytes: int) -> None:
        super()._free(key, nbytes)
        if key in self._event_of:
            self.events.append(("free", self._event_of.pop(key)))
