"""Compiling ahead: which cells, in how many processes (bench.execution.ahead). The compile
itself, ahead and then warm in the cell, is tests/test_run.py's compile test."""

import pytest

from bench.execution.ahead import ahead_cells, processes_for
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
