"""Compiling ahead: which cells, in how many processes (bench.execution.ahead). The compile
itself, ahead and then warm in the cell, is tests/test_run.py's compile test."""

import os

import pytest

from bench.basics.settings import Settings
from bench.execution.ahead import (
    CORES_PER_COMPILE,
    HOST_BYTES_PER_COMPILE,
    Room,
    ahead_cells,
    compile_spec,
    processes_for,
    rooms_for,
)
from bench.execution.worker import WorkerSpec
from bench.planning.allocator import CONTEXT_ALLOWANCE_BYTES
from bench.planning.grid import Config
from bench.planning.plan import host_available_bytes
from bench.planning.predict import model_for

GIB = 2**30


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


@pytest.mark.parametrize("cells, cores, requested, free_gib, expected", [
    # the default's 8 processes on 16 cores, where the card holds 3 compiles of 6 GiB
    (20, 16, None, 18, (3, "the card has 18.0 GiB free, room for 3 compiles of 6.0 GiB each, "
                           "not 8")),
    (20, 16, None, 48, (8, None)),  # room for all it wants: nothing said
    (3, 16, None, 18, (3, None)),  # fewer cells than the room holds
    # room for one: by default never one alone; asked for, as many as fit
    (20, 16, None, 11, (0, "the card has 11.0 GiB free, room for 1 compile of 6.0 GiB each, "
                           "not 8")),
    (20, 16, 4, 11, (1, "the card has 11.0 GiB free, room for 1 compile of 6.0 GiB each, "
                        "not 4")),
    (20, 16, 4, 5, (0, "the card has 5.0 GiB free, room for no compiles of 6.0 GiB each, "
                       "not 4")),
])
def test_no_more_compile_side_by_side_than_the_memory_they_share_holds(
        cells, cores, requested, free_gib, expected):
    rooms = (Room("the card", free_gib * GIB, 6 * GIB), Room("the host", 100 * GIB, 2 * GIB))
    assert processes_for(cells, cores, requested, rooms) == expected


def test_the_tightest_memory_decides_and_is_named():
    rooms = (Room("the card", 100 * GIB, 2 * GIB), Room("the host", 7 * GIB, 2 * GIB))
    assert processes_for(20, 16, None, rooms) == (
        3, "the host has 7.0 GiB free, room for 3 compiles of 2.0 GiB each, not 8")


def test_a_gpu_compile_needs_its_largest_cells_peak_and_a_context_on_the_card():
    cells = [Config(b, mode="compile", device="cuda:0") for b in (256, 16_384)]
    card, host = rooms_for(cells, card_free_bytes=40 * GIB, host_free_bytes=64 * GIB)
    # a compiled step reserves up to twice its eager step's predicted peak
    assert card == Room("the card", 40 * GIB,
                        CONTEXT_ALLOWANCE_BYTES + 2 * model_for(cells[1]).peak_bytes(16_384))
    # the steps are on the card: the host holds the process alone
    assert host == Room("the host", 64 * GIB, HOST_BYTES_PER_COMPILE)


def test_a_cpu_compile_needs_its_largest_cells_whole_peak_in_the_host():
    cells = [Config(b, mode="compile", device="cpu", placement="device") for b in (64, 4096)]
    assert rooms_for(cells, card_free_bytes=None, host_free_bytes=8 * GIB) == (
        Room("the host", 8 * GIB, HOST_BYTES_PER_COMPILE + model_for(cells[1]).peak_bytes(4096)),)


def test_where_no_free_figure_is_known_the_cores_alone_decide():
    cells = [Config(64, mode="compile", device="cuda:0")]
    assert rooms_for(cells, card_free_bytes=None, host_free_bytes=None) == ()
    assert rooms_for(cells, card_free_bytes=None, host_free_bytes=GIB) == (
        Room("the host", GIB, HOST_BYTES_PER_COMPILE),)
    assert processes_for(20, 16, None, ()) == (8, None)


def test_the_hosts_room_is_the_kernels_available_memory_not_its_free_pages(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:         1000000 kB\n"
                       "MemAvailable:   20000000 kB\nBuffers:           1000 kB\n")
    assert host_available_bytes(meminfo) == 20_000_000 * 1024
    # a kernel before 3.14 has no MemAvailable, and a host without /proc no file: free pages
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:         1000000 kB\n")
    free_pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert host_available_bytes(meminfo) == pytest.approx(free_pages, rel=0.5)
    assert host_available_bytes(tmp_path / "absent") == pytest.approx(free_pages, rel=0.5)
