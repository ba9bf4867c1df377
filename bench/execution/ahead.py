"""Compile ahead, measure alone: before any cell is timed, the compiled cells' graphs are compiled
side by side in processes of their own, into torch.compile's on-disk caches (inductor's FX graphs,
AOTAutograd's joint graphs), so that each cell's own compile is a cache hit and a grid pays its
compiles in parallel rather than one after another.

Nothing is timed while they compile, and the cells then run one at a time as ever. A cell keeps
both figures: the cold compile, from the process that compiled it ahead (what a user's first run
pays), and its own setup from the warm cache. Side by side needs spare cores: a compile keeps
about two busy (inductor's compile threads beside dynamo's tracing), so where fewer than two
compiles fit, each cell compiles in its own setup, as a serial compile ahead would only add a
process. max-autotune's compile times candidate kernels on the device; beside other compiles
they would time each other, so those cells compile alone, in their own setup.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

from bench.execution.cell import AheadCompile
from bench.execution.pool import Pool
from bench.execution.runner import Runner
from bench.execution.worker import WorkerSpec
from bench.planning.grid import Config
from lenet.modes import TABLE

CORES_PER_COMPILE = 2


def ahead_cells(cells: list[Config]) -> list[Config]:
    """The cells whose graphs can be compiled ahead: compiled modes whose compile times no
    kernel on the device."""
    return [c for c in cells
            if TABLE[c.mode].compiles and TABLE[c.mode].compiler_mode != "max-autotune"]


def usable_cores() -> int:
    """The cores this process may run on (a Slurm task's or a taskset's share, not the host's)."""
    return len(os.sched_getaffinity(0))


def processes_for(cells: int, cores: int, requested: int | None) -> tuple[int, str | None]:
    """How many processes compile `cells` cells ahead, and why none where none do (None where
    there is nothing to compile). `requested`: --compile-ahead, None for one per two cores."""
    if not cells:
        return 0, None
    if requested == 0:
        return 0, "--compile-ahead 0"
    if requested is not None:
        return min(requested, cells), None
    fit = cores // CORES_PER_COMPILE
    if fit < 2:
        return 0, (f"{cores} cores leave no room for two compiles side by side "
                   f"(--compile-ahead N asks for N processes)")
    return min(fit, cells), None


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
