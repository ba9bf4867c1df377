"""Compiling ahead: which cells, in how many processes (bench.execution.ahead). The compile
itself, ahead and then warm in the cell, is tests/test_run.py's compile test."""

import pytest

from bench.basics.settings import Settings
from bench.execution.ahead import (
    CORES_PER_COMPILE,
    ahead_cells,
    compile_spec,
    processes_for,
)
from bench.execution.worker import WorkerSpec
from bench.planning.grid import Config


def test_only_compiled_modes_whose_compile_times_no_kernel_are_compiled_ahead():
    cells = [Config(64, mode=mode) for mode in
             ("eager", "compile", "compile-step", "compile-step-max-autotune", "graph",
              "compile-cudagraphs")]
    assert [c.mode for c in ahead_cells(cells)] == ["compile", "compile-step",
                                                    "compile-cudagraphs"]


@pytest.mark.parametrize("cells, cores, requested, expected", [
    (0, 16, None, (0, None)),  # nothing to compile: nothing said
    (20, 16, None, (8, None)),  # one process per two cores
    (3, 16, None, (3, None)),  # no more processes than cells
    (5, 4, None, (2, None)),
    (5, 3, None, (0, "3 cores leave no room for two compiles side by side (--compile-ahead N "
                     "asks for N processes)")),
    (5, 2, 1, (1, None)),  # asked for: even where it gains nothing
    (5, 16, 0, (0, "--compile-ahead 0")),
    (2, 2, 4, (2, None)),
])
def test_compiles_ahead_in_one_process_per_two_cores_and_never_in_one_alone(
        cells, cores, requested, expected):
    assert processes_for(cells, cores, requested) == expected


@pytest.mark.parametrize("cores, threads, expected_threads", [
    ((0, 1, 2, 3), None, 4),  # a bound cell worker: its torch threads, not its cores
    (None, 6, 6),  # a Slurm task's CPUs
    (None, None, None),  # torch's own choice, as in the cell
])
def test_a_compiling_process_runs_unbound_with_the_cells_threads_and_its_share_of_compiles(
        cores, threads, expected_threads):
    cell = WorkerSpec(device="cpu", data="synthetic", data_root=None, settings=Settings(),
                      cpu_cores=cores, threads=threads)
    spec = compile_spec(cell)
    assert spec.cpu_cores is None and spec.threads == expected_threads
    assert spec.compile_threads == CORES_PER_COMPILE
    assert cell.compile_threads is None  # the cell's own compile: inductor's choice
