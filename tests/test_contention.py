"""Contention: what else the machine did while a cell was timed. Real CPU hogs for the CPU; the
GPU's readings through a fake NVML reader (the seam), since no GPU is here."""

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from bench.instruments.contention import (
    PROC,
    ContentionWatch,
    CpuTimes,
    _ticks_of,
    cpu_shares,
    read_cpu_times,
)
from bench.instruments.nvml import GpuProcess, NvmlUnavailable
from helpers import CPU_SYNTHETIC, FakeCard, rows_of, run_module

SPIN = "import time; end = time.monotonic() + 600; exec('while time.monotonic() < end: pass')"
# Starts a spinning process and exits at once, so the spinner belongs to no process here.
ORPHAN = ("import subprocess, sys; "
          f"print(subprocess.Popen([sys.executable, '-c', {SPIN!r}], stdout=subprocess.DEVNULL, "
          f"stderr=subprocess.DEVNULL).pid)")


@contextmanager
def cpu_hogs(detached=False):
    """One process per CPU this process may use, each spinning. `detached`: orphaned, so no
    process of the test's owns them; else children of the test process."""
    count = len(os.sched_getaffinity(0))
    if detached:
        pids = [int(subprocess.run([sys.executable, "-c", ORPHAN], capture_output=True,
                                   text=True, check=True).stdout) for _ in range(count)]
    else:
        pids = [subprocess.Popen([sys.executable, "-c", SPIN]).pid for _ in range(count)]
    try:
        time.sleep(0.3)  # spinning before the first reading
        yield pids
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        if not detached:
            for pid in pids:
                os.waitpid(pid, 0)


def test_shares_come_from_the_difference_of_two_readings():
    before = CpuTimes(busy=1000, steal=10, total=2000, own=100)
    after = CpuTimes(busy=1150, steal=30, total=2200, own=200)
    others, stolen = cpu_shares(before, after)
    assert (others, stolen) == (50 / 200, 20 / 200)


def test_a_cpu_hog_of_another_process_makes_the_machine_busy():
    with cpu_hogs(detached=True):
        watch = ContentionWatch()
        watch.start()
        time.sleep(1.0)
        contention = watch.stop()
    assert contention.cpu_other_fraction > 0.5
    assert contention.busy is True
    assert contention.busy_reasons[0].startswith("other processes used ")


def _ticks(pid):
    return _ticks_of(PROC, pid)[1]  # user + system ticks, as the watch reads them


def test_the_cells_own_children_count_as_its_own_time():
    """Loader workers are the cell's own: the CPU time of the measured process's children is
    taken off the busy time before the rest is called other processes'. (Counted, not asserted
    as a share: a busy CI machine shares its CPUs with them.)"""
    with cpu_hogs() as pids:
        # the hogs' ticks read inside the window the process's are read around: they spin on
        # between two reads, so the other order could count them a tick short
        before = read_cpu_times()
        hogs_before = sum(_ticks(pid) for pid in pids)
        time.sleep(1.0)
        hogs_after = sum(_ticks(pid) for pid in pids)
        after = read_cpu_times()
    spun = hogs_after - hogs_before
    assert spun > 10  # the hogs ran
    assert after.own - before.own >= spun


def _gpu_only(nvml, tmp_path):
    watch = ContentionWatch(nvml, proc=tmp_path)  # an empty /proc: the CPU part reads nothing
    watch.start()
    watch.sample()
    return watch.stop()


def test_a_throttled_shared_gpu_is_busy_and_says_why(tmp_path):
    me = GpuProcess(os.getpid(), 2**30, "python")
    other = GpuProcess(4242, 40 * 2**30, "train.py")
    contention = _gpu_only(FakeCard(processes=[me, other], clock_mhz=1410, events=0x4 | 0x1),
                           tmp_path)
    assert contention.busy is True
    assert contention.busy_reasons == (
        "1 other process on the GPU",
        "the GPU slowed itself (power cap, SM clock down to 1,410 of 1,980 MHz)")
    assert contention.gpu_temperature_max_c == 71 and contention.cpu_other_fraction is None


def test_an_idle_clock_event_alone_is_quiet(tmp_path):
    """Between repeats the GPU may report itself idle: that is not contention."""
    contention = _gpu_only(FakeCard(processes=[GpuProcess(os.getpid(), 2**30, "python")],
                                    events=0x1), tmp_path)
    assert contention.busy is False and contention.busy_reasons == ()
    assert contention.gpu_other_processes == 0


def test_hidden_processes_and_failed_reads_leave_figures_empty_not_zero(tmp_path):
    contention = _gpu_only(FakeCard(processes=None, fail=True), tmp_path)
    assert contention.gpu_other_processes is None and contention.gpu_sm_clock_min_mhz is None
    assert contention.busy is None  # nothing could be read: not "quiet"


def test_a_power_cap_during_the_repeats_is_seen_by_the_counters_not_the_samples(tmp_path):
    """Samples between repeats see an idle card at full clocks and no events; NVML's
    violation counters saw 120 ms of the window held down by the power cap."""
    me = GpuProcess(os.getpid(), 2**30, "python")
    contention = _gpu_only(FakeCard(processes=[me], power_capped_ns=120_000_000), tmp_path)
    assert contention.busy is True
    assert contention.gpu_clock_events == ("power cap: clocks held down 120 ms of the repeats",)


def test_a_card_without_a_temperature_still_gives_its_clocks_and_events(tmp_path):
    me = GpuProcess(os.getpid(), 2**30, "python")
    contention = _gpu_only(FakeCard(processes=[me], clock_mhz=1410, events=0x4,
                                    temperature_c=None), tmp_path)
    assert contention.gpu_sm_clock_min_mhz == 1410 and contention.gpu_clock_events == (
        "power cap",)
    assert contention.gpu_temperature_max_c is None


def test_a_pools_parent_and_sibling_workers_are_not_other_processes():
    """On a 4-GPU box each worker saw its parent (a context from asking the card's
    properties) and so every cell read busy."""
    from bench.instruments.contention import _family, _other_processes

    workers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
               for _ in range(2)]
    try:
        listed = [GpuProcess(pid, 2**30, "python") for pid in
                  (workers[0].pid, workers[1].pid, os.getpid(), 4242)]
        own = _family(workers[0].pid)
        assert _other_processes(listed, own, me=workers[0].pid) == 1  # 4242 alone
        assert _other_processes(listed[:3], own, me=workers[0].pid) == 0
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()


def test_an_empty_process_list_means_nvml_cannot_see_not_none_there(tmp_path):
    """This process holds a context on the card: a list without it is a list NVML hides."""
    contention = _gpu_only(FakeCard(processes=[]), tmp_path)
    assert contention.gpu_other_processes is None


def test_an_older_driver_gives_the_clock_events_through_the_older_call(monkeypatch):
    import pynvml

    from bench.instruments.nvml import NvmlReader

    def missing(handle):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)  # its subclass, by code

    reader = NvmlReader.__new__(NvmlReader)  # the reader's calls alone, no driver (the seam)
    reader._nvml, reader._handle = pynvml, "handle"
    # the newer call where the binding has it (the oldest supported binding does not)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", missing, raising=False)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCurrentClocksThrottleReasons", lambda h: 0x4)
    assert reader.clock_event_reasons() == 0x4
    monkeypatch.delattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons")
    assert reader.clock_event_reasons() == 0x4  # a binding that predates the newer name
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCurrentClocksThrottleReasons", missing)
    with pytest.raises(NvmlUnavailable, match="this driver has neither call"):
        reader.clock_event_reasons()


@pytest.mark.e2e
def test_a_cell_timed_beside_a_cpu_hog_is_named_busy_in_the_rows_and_the_page(tmp_path):
    out = tmp_path / "run"
    with cpu_hogs():
        result = run_module("bench.run", "--grid", "smoke", "--set", "batch_size=64",
                            "--set", "placement=device", "--out", str(out),
                            *[a for a in CPU_SYNTHETIC if a != "--no-report"])
    assert result.returncode == 0, result.stderr
    (row,) = rows_of(out)
    assert row["busy"] is True, row
    assert row["busy_reasons"][0].startswith("other processes used ")
    assert "(busy: other processes used " in result.stdout
    page = (out / "report" / "index.html").read_text()
    assert re.search(r"Every timed cell was measured while the machine was busy, so no figure "
                     r"here is vouched for \(other processes used \d+% of the CPUs; "
                     r"b64-float32-nchw-device\)", page)
    assert "(every timed cell was measured while the machine was busy" in page
