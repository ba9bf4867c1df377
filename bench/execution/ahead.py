"""Compile ahead, measure alone: before any cell is timed, the compiled cells' graphs are compiled
side by side in processes of their own, into torch.compile's on-disk caches (inductor's FX graphs,
AOTAutograd's joint graphs), so that each cell's own compile is a cache hit and a grid pays its
compiles in parallel rather than one after another.

Nothing is timed while they compile, and the cells then run one at a time as ever. A cell keeps
both figures: the cold compile, from the process that compiled it ahead (what a user's first run
pays), and its own setup from the warm cache. Side by side needs spare cores: a compile keeps
about two busy (inductor's compile threads beside dynamo's tracing), so where fewer than two
compiles fit, each cell compiles in its own setup, as a serial compile ahead would only add a
process. Side by side also needs memory: each compile runs its cell's warm-up steps, so no more
start than the card (on a GPU) and the host each hold. max-autotune's compile times candidate
kernels on the device; beside other compiles they would time each other, so those cells compile
alone, in their own setup.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from bench.basics.units import format_bytes
from bench.execution.cell import AheadCompile
from bench.execution.pool import Pool
from bench.execution.runner import Runner
from bench.execution.worker import WorkerSpec
from bench.planning.allocator import CONTEXT_ALLOWANCE_BYTES
from bench.planning.grid import Config
from bench.planning.plan import capacity_bytes, host_available_bytes
from bench.planning.predict import model_for
from lenet.modes import TABLE

CORES_PER_COMPILE = 2
# What a compiling process holds in the host's memory besides its model and step: torch, the
# data set, dynamo's and inductor's work, and the C++ compilers inductor runs beside it. On this
# project's CPU (LeNet at b64 and b1,024, torch 2.14.1): 1.03 GiB at the process's peak, 0.18 GiB
# in each of its two compilers; rounded up.
HOST_BYTES_PER_COMPILE = 3 * 2**29
# What the allocator reserves for a compiled step on a card, over its eager step's predicted
# peak: up to 1.9 times in the H200's modes run (docs/results/nvidia-h200/modes-results.jsonl:
# compile at b16,384 bfloat16 reserved 1,516,240,896 bytes against 796,193,300 predicted; 1.0 to
# 1.8 elsewhere). Reserved, not allocated: it is what the other processes cannot have.
COMPILED_OVER_EAGER = 2


@dataclass(frozen=True)
class Room:
    """A memory the compiling processes share, and what one of them needs of it."""

    memory: str  # "the card", "the host"
    free_bytes: int
    need_bytes: int

    @property
    def compiles(self) -> int:
        return self.free_bytes // self.need_bytes

    def words(self, wanted: int) -> str:
        held = self.compiles
        return (f"{self.memory} has {format_bytes(self.free_bytes)} free, room for "
                f"{'no' if held == 0 else held} compile{'' if held == 1 else 's'} of "
                f"{format_bytes(self.need_bytes)} each, not {wanted}")


def ahead_cells(cells: list[Config]) -> list[Config]:
    """The cells whose graphs can be compiled ahead: compiled modes whose compile times no
    kernel on the device."""
    return [c for c in cells
            if TABLE[c.mode].compiles and TABLE[c.mode].compiler_mode != "max-autotune"]


def usable_cores() -> int:
    """The cores this process may run on (a Slurm task's or a taskset's share, not the host's)."""
    return len(os.sched_getaffinity(0))


def processes_for(cells: int, cores: int, requested: int | None,
                  rooms: tuple[Room, ...] = ()) -> tuple[int, str | None]:
    """How many processes compile `cells` cells ahead, and why no more where the memory in
    `rooms` holds fewer than wanted, or why none (None where there is nothing to compile).
    `requested`: --compile-ahead, None for one per two cores."""
    if not cells:
        return 0, None
    if requested == 0:
        return 0, "--compile-ahead 0"
    if requested is None and cores // CORES_PER_COMPILE < 2:
        return 0, (f"{cores} cores leave no room for two compiles side by side "
                   f"(--compile-ahead N asks for N processes)")
    wanted = min(requested or cores // CORES_PER_COMPILE, cells)
    tightest = min(rooms, key=lambda room: room.compiles, default=None)
    if tightest is None or tightest.compiles >= wanted:
        return wanted, None
    # asked for: as many as the memory holds, even one; by default never one alone
    held = tightest.compiles if requested is not None or tightest.compiles >= 2 else 0
    return held, tightest.words(wanted)


def rooms_for(cells: list[Config], card_free_bytes: int | None,
              host_free_bytes: int | None) -> tuple[Room, ...]:
    """The memories compiles of `cells` share, where their free bytes are known: the host's
    always, the card's for CUDA cells. A compile needs room for the largest cell's model and step
    beside what every compiling process holds: its CUDA context on the card, itself in the host
    (with a CPU cell's data set, model and step). A compiled step has no prediction of its own
    (lenet.modes): its eager step's stands in."""
    largest = max(cells, key=lambda c: model_for(c).peak_bytes(c.batch_size))
    model = model_for(largest)
    rooms = []
    if largest.device.startswith("cuda"):
        if card_free_bytes is not None:
            need = CONTEXT_ALLOWANCE_BYTES + COMPILED_OVER_EAGER * model.peak_bytes(
                largest.batch_size)
            rooms.append(Room("the card", card_free_bytes, need))
        host_need = HOST_BYTES_PER_COMPILE
    else:  # LeNet's data set is in the process's own figure too: counted twice, 188 MB over
        host_need = HOST_BYTES_PER_COMPILE + model.peak_bytes(largest.batch_size)
    if host_free_bytes is not None:
        rooms.append(Room("the host", host_free_bytes, host_need))
    return tuple(rooms)


def free_bytes(cuda_index: int | None) -> tuple[int | None, int | None]:
    """(the card's free bytes, the host's available bytes), each None where not known: the
    card's as the plan reads it (NVML: the parent holds no CUDA context), none where the cells
    run on the CPU."""
    card = None if cuda_index is None else capacity_bytes(torch.device("cuda", cuda_index),
                                                          None)[0]
    return card, host_available_bytes()


def compile_spec(cell_spec: WorkerSpec) -> WorkerSpec:
    """A compiling process's spec, from the cell worker's: unbound to its cores (nothing is
    timed meanwhile), with the same torch threads (inductor's CPU kernels are keyed on them), and
    inductor's compile processes held to its share of the cores: by default each process would
    start one per core, eight compiles on 16 cores 128 of them."""
    bound = cell_spec.cpu_cores
    return replace(cell_spec, cpu_cores=None,
                   threads=cell_spec.threads or (len(bound) if bound else None),
                   compile_threads=CORES_PER_COMPILE)


def compile_all(runner: Runner, cells: list[Config], processes: int,
                on_done: Callable[[Config, AheadCompile], None]) -> None:
    """Compile `cells` in `processes` workers like `runner`'s, unbound to its cores (nothing is
    timed meanwhile), handing each result to `on_done` in this thread as it finishes. Ctrl-C
    kills them and is raised, as a cell's pool raises it."""
    spec = compile_spec(runner.spec)
    runners = [Runner(spec, runner.cuda_index, runner.timeout_s) for _ in range(processes)]
    try:
        Pool(runners, [None] * processes).run(
            cells, lambda each, config: each.compile_ahead(config), on_done)
    finally:
        for each in runners:
            each.retire_worker()
