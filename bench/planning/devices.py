"""Where a run's cells go on this machine: one worker per listed device, and what each row says
of the device it ran on.

    --devices all         every GPU, one worker each
    --devices 0,2,3       those GPUs (torch's numbering, which nvidia-smi shares by default)
    --devices cpu,cpu     two CPU workers, each bound to its own share of the cores
    --devices 4xcpu       four CPU workers, by count

A pooled GPU worker is pinned with CUDA_VISIBLE_DEVICES, so it sees its one card as cuda:0 and
its cells name that device; the row records the card in this machine's numbering, its name and
its UUID, and the host.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass

from bench.instruments.nvml import NvmlReader, NvmlUnavailable
from lenet.cli import UsageError


@dataclass(frozen=True)
class Slot:
    """One worker's place: the device its cells name, and how its process is pinned there."""

    device: str  # what the worker's cells run on: cpu, or cuda:N
    gpu_index: int | None = None  # the card in the parent's numbering
    visible_devices: str | None = None  # CUDA_VISIBLE_DEVICES for the worker; None: inherited
    cpu_cores: tuple[int, ...] | None = None  # the cores a CPU worker is bound to; None: all

    @property
    def label(self) -> str:
        if self.gpu_index is not None:
            return f"GPU {self.gpu_index}"
        return f"cpu cores {_ranges(self.cpu_cores)}" if self.cpu_cores else "cpu"


def single(device: str) -> list[Slot]:
    """The run's one device, as without --devices: nothing pinned, nothing bound."""
    if device.startswith("cuda"):
        return [Slot(device, int(device.partition(":")[2] or 0))]
    return [Slot(device)]


def parent_device(slots: list[Slot]) -> str:
    """The run's device as this process numbers it: the first listed card (a pooled worker sees
    its own card as cuda:0; the parent's cuda:0 may be a card the run never uses). The run's
    capacity and env.json are read from it."""
    first = slots[0]
    return first.device if first.gpu_index is None else f"cuda:{first.gpu_index}"


def usable(slots: list[Slot], allowed: set[int] | None = None) -> tuple[list[Slot], str | None]:
    """The slots with CPU workers bound only to cores this process may use (a run resumed on a
    smaller host, or under a taskset or cgroup that leaves some out), shared anew where the
    stored ones are not; and the notice that says so, or None."""
    allowed = os.sched_getaffinity(0) if allowed is None else allowed
    bound = [s for s in slots if s.cpu_cores]
    if all(set(s.cpu_cores) <= allowed for s in bound):
        return slots, None
    others = [s for s in slots if not s.cpu_cores]
    shared = _cpu_slots(min(len(bound), len(allowed)), sorted(allowed))
    stored = ", ".join(_ranges(s.cpu_cores) for s in bound)
    return shared + others, (f"the stored CPU cores ({stored}) are not all this process's to use "
                             f"(it may use {len(allowed)}): {len(shared)} CPU workers are bound "
                             f"to {', '.join(_ranges(s.cpu_cores) for s in shared)} instead")


def parse(text: str, gpu_count: int, cores: list[int] | None = None) -> list[Slot]:
    """The slots `--devices TEXT` names; UsageError, saying what to write, for anything else."""
    text = text.strip().lower()
    cores = sorted(os.sched_getaffinity(0)) if cores is None else cores
    counted = re.fullmatch(r"(\d+)xcpu", text)
    if counted or (text and set(text.split(",")) == {"cpu"}):
        workers = int(counted.group(1)) if counted else len(text.split(","))
        return _cpu_slots(workers, cores)
    if text == "all":
        if gpu_count == 0:
            raise UsageError("--devices all: no GPU is visible; use --devices cpu,cpu (or "
                             "Nxcpu) for CPU workers")
        return _gpu_slots(list(range(gpu_count)))
    words = text.split(",")
    if not all(w.isdigit() for w in words):
        raise UsageError(f"--devices {text!r}: write all, GPU indexes such as 0,2,3, cpu,cpu, "
                         f"or a count of CPU workers such as 2xcpu")
    indexes = [int(w) for w in words]
    if len(set(indexes)) != len(indexes):
        raise UsageError(f"--devices {text}: a GPU is listed twice; one worker per GPU")
    missing = [i for i in indexes if i >= gpu_count]
    if missing:
        there = f"GPUs 0 to {gpu_count - 1}" if gpu_count else "no GPU"
        raise UsageError(f"--devices {text}: there is no GPU {missing[0]} (this machine has "
                         f"{there}); list GPUs that exist, or use --devices cpu,cpu")
    return _gpu_slots(indexes)


def _gpu_slots(indexes: list[int]) -> list[Slot]:
    # the parent's own CUDA_VISIBLE_DEVICES renumbers the cards; a worker is pinned to the card
    # that the parent calls `index`, in the words the driver understands
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [w.strip() for w in inherited.split(",")] if inherited else None
    return [Slot("cuda:0", i, names[i] if names else str(i)) for i in indexes]


def _cpu_slots(workers: int, cores: list[int]) -> list[Slot]:
    if workers < 1:
        raise UsageError("--devices 0xcpu: name at least one CPU worker")
    if workers > len(cores):
        raise UsageError(f"--devices: {workers} CPU workers but {len(cores)} cores to bind them "
                         f"to; use at most {len(cores)}")
    share, extra = divmod(len(cores), workers)
    slots, start = [], 0
    for n in range(workers):
        size = share + (n < extra)
        slots.append(Slot("cpu", cpu_cores=tuple(cores[start:start + size])))
        start += size
    return slots


def _ranges(cores: tuple[int, ...]) -> str:
    return f"{cores[0]}-{cores[-1]}" if len(cores) > 1 else str(cores[0])


def where(slot: Slot) -> dict:
    """What a row records of the device it ran on: host, and the card's index, name and UUID."""
    found = {"host": platform.node(), "worker": slot.label, "gpu_index": slot.gpu_index,
             "gpu_name": None, "gpu_uuid": None}
    if slot.gpu_index is None:
        return found
    try:
        with NvmlReader(slot.gpu_index) as reader:
            found.update(gpu_name=reader.name(), gpu_uuid=reader.device.uuid)
    except NvmlUnavailable:
        import torch

        properties = torch.cuda.get_device_properties(slot.gpu_index)
        found.update(gpu_name=properties.name, gpu_uuid=f"GPU-{properties.uuid}")
    return found
