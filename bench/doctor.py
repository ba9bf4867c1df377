"""Pre-flight check: is there a GPU, what holds its memory, and can the smallest cell fit?

    python -m bench.doctor [--device cuda:0] [--grid default]

The notebook died with `CUDA error: out of memory` training a net of a few hundred KiB: the card
was full before it started, or the settings were far too big. This says which, with numbers,
before a kernel does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.basics.units import format_bytes
from bench.instruments.nvml import GpuReader, MemoryInfo, NvmlReader, NvmlUnavailable
from bench.planning.allocator import CONTEXT_ALLOWANCE_BYTES
from bench.planning.grid import GridError, get_grid
from bench.planning.plan import smallest_need_bytes
from lenet.cli import OneLineParser, UsageError, exit_with, fail, resolve_device


def memory_lines(info: MemoryInfo) -> list[str]:
    return [f"memory: total {format_bytes(info.total_bytes)}, driver reserved "
            f"{format_bytes(info.reserved_bytes)}, used {format_bytes(info.used_bytes)}, "
            f"free {format_bytes(info.free_bytes)}"]


def process_lines(processes) -> list[str]:
    if processes is None:
        return ["processes: not available (the driver hides them, as in most containers)"]
    if not processes:
        return ["processes: none on the card"]
    return [f"process {p.pid} ({p.name}): {format_bytes(p.used_bytes)}" for p in processes]


def fits(reader: GpuReader, needed_bytes: int) -> tuple[bool, str]:
    """Whether `needed_bytes` of tensors plus a CUDA context fit in what is free now; the reason."""
    info = reader.memory()
    required = needed_bytes + CONTEXT_ALLOWANCE_BYTES
    if info.free_bytes >= required:
        return True, (f"fits: {format_bytes(required)} needed (predicted peak "
                      f"{format_bytes(needed_bytes)} + context allowance), "
                      f"{format_bytes(info.free_bytes)} free")
    processes = reader.processes()
    if processes:
        held = ", ".join(f"pid {p.pid} ({p.name}) holds {format_bytes(p.used_bytes)}"
                         for p in processes)
        who = f"other processes hold the card: {held}; stop them or use another GPU"
    elif processes is None:
        who = (f"{format_bytes(info.used_bytes)} is used by processes NVML cannot name here "
               f"(see nvidia-smi on the host); free the card or use another GPU")
    else:
        who = "choose a smaller batch or a card with more memory"
    return False, (f"does not fit: {format_bytes(required)} needed, only "
                   f"{format_bytes(info.free_bytes)} of {format_bytes(info.total_bytes)} free; "
                   f"{who}")


@dataclass(frozen=True)
class Checkup:
    """What the doctor found: the lines it prints, and its verdict on the smallest cell."""

    lines: list[str] = field(default_factory=list)
    fits: bool = True  # True also where it could not be checked (no GPU, no NVML)
    verdict: str | None = None  # why the smallest cell fits or does not, where it was checked


def report(device: torch.device, needed_bytes: int | None,
           reader_factory=NvmlReader) -> Checkup:
    """The doctor's checkup: can a run whose smallest cell needs `needed_bytes` go ahead?"""
    lines = [f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}"]
    if device.type != "cuda":
        why = "no CUDA GPU is visible" if not torch.cuda.is_available() else "--device cpu"
        lines.append(f"device: cpu ({why}); GPU memory is not measured, the worker's resident "
                     f"set is")
    try:
        with reader_factory(device.index or 0) as reader:
            lines.append(f"GPU: {reader.name()}, driver {reader.driver_version()}")
            lines += memory_lines(reader.memory()) + process_lines(reader.processes())
            if device.type != "cuda" or needed_bytes is None:
                return Checkup(lines)
            ok, verdict = fits(reader, needed_bytes)
    except NvmlUnavailable as exc:  # no NVML at all, or a call that failed
        lines.append(f"NVML: unavailable ({exc}); NVML columns will read 'not measured'")
        return Checkup(lines)
    return Checkup(lines + [f"smallest cell: {verdict}"], ok, verdict)


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m bench.doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda:N")
    parser.add_argument("--grid", default="default", help="whose smallest cell must fit")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
        cells = get_grid(args.grid, device.type == "cuda").cells(str(device))
    except (UsageError, GridError) as exc:
        fail(parser.prog, str(exc))
    checkup = report(device, smallest_need_bytes(cells))
    print("\n".join(checkup.lines))
    return 0 if checkup.fits else 1


if __name__ == "__main__":
    exit_with(main)
