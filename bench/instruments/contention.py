"""What else the machine did while a cell was timed, and whether that makes its figure suspect.

A figure measured while other processes took the CPU, while the hypervisor stole it, or while the
GPU ran someone else's kernels or slowed its clock for heat or power, is a figure of that moment,
not of the settings. Each cell reads, outside its timed repeats:

- the CPU: from /proc/stat, over the CPUs this process may run on, the time they spent busy and
  stolen; from /proc/PID/stat, the time this process and its children (loader workers) used. What
  was busy beyond that was other processes'. /proc/loadavg's one-minute load is kept beside it.
- the GPU (through the NVML reader, the seam tests fake): other processes on the card, the SM
  clock against its maximum, the clock-event (throttle) reasons and the temperature.

Reads are cheap next to a repeat (tests/benchmarks/contention_cost.py prints what they cost).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from bench.instruments.nvml import GpuReader, NvmlUnavailable

PROC = Path("/proc")
# A share of the CPUs' time taken by other processes, or stolen, past which the figure is not
# vouched for: on a two-core machine, a tenth is one core busy a fifth of the time.
BUSY_OTHER_CPU_FRACTION = 0.10
BUSY_STEAL_FRACTION = 0.05
# NVML's clock-event reasons (nvmlClocksEventReason*, formerly *ThrottleReason*) that slow a
# card for reasons of its own; idle and clock settings are not among them.
CLOCK_EVENTS = {
    0x4: "power cap",
    0x8: "hardware slowdown",
    0x20: "thermal (software)",
    0x40: "thermal (hardware)",
    0x80: "power brake",
}


@dataclass(frozen=True)
class Contention:
    cpu_other_fraction: float | None = None  # others' CPU time / the CPUs' time, timed repeats
    cpu_steal_fraction: float | None = None  # stolen by the hypervisor / the CPUs' time
    cpu_load_1m: float | None = None  # /proc/loadavg after the repeats
    gpu_other_processes: int | None = None  # the most seen at once; None where NVML hides them
    gpu_sm_clock_min_mhz: int | None = None  # the lowest SM clock read between repeats
    gpu_sm_clock_max_mhz: int | None = None  # the card's maximum SM clock
    gpu_clock_events: tuple[str, ...] = ()  # reasons the card slowed itself, from CLOCK_EVENTS
    gpu_temperature_max_c: int | None = None
    busy: bool | None = None  # None: nothing could be read
    busy_reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class CpuTimes:
    busy: int  # clock ticks, summed over the CPUs this process may use
    steal: int
    total: int
    own: int  # ticks this process and its children used


def _cpu_lines(proc: Path) -> dict[str, list[int]]:
    lines = {}
    for line in (proc / "stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            lines[name] = [int(v) for v in values]
    return lines


def _ticks_of(proc: Path, pid: int) -> tuple[int, int] | None:
    """(parent pid, user + system ticks) of a process; None where it is gone."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the name, in parentheses, may hold spaces
    return int(fields[1]), int(fields[11]) + int(fields[12])


def _own_ticks(proc: Path, pid: int) -> int:
    """Ticks used by `pid` and every process below it (DataLoader workers)."""
    parents: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            found = _ticks_of(proc, int(entry.name))
            if found is not None:
                parents.setdefault(found[0], []).append(int(entry.name))
                ticks[int(entry.name)] = found[1]
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += ticks.get(current, 0)
        stack += parents.get(current, [])
    return total


def read_cpu_times(proc: Path = PROC, pid: int | None = None,
                   cpus: set[int] | None = None) -> CpuTimes:
    """The CPU counters now. /proc/stat's fields: user nice system idle iowait irq softirq steal
    (guest time is inside user already)."""
    pid = os.getpid() if pid is None else pid
    cpus = os.sched_getaffinity(0) if cpus is None else cpus
    busy = steal = total = 0
    for name, values in _cpu_lines(proc).items():
        if int(name[3:]) not in cpus:
            continue
        user, nice, system, idle, iowait, irq, softirq, stolen = (values + [0] * 8)[:8]
        busy += user + nice + system + irq + softirq
        steal += stolen
        total += user + nice + system + idle + iowait + irq + softirq + stolen
    return CpuTimes(busy, steal, total, _own_ticks(proc, pid))


def load_1m(proc: Path = PROC) -> float | None:
    try:
        return float((proc / "loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cpu_shares(before: CpuTimes, after: CpuTimes) -> tuple[float, float] | None:
    """(others' share, stolen share) of the CPUs' time between two readings."""
    total = after.total - before.total
    if total <= 0:
        return None
    others = (after.busy - before.busy) - (after.own - before.own)
    return max(0, others) / total, (after.steal - before.steal) / total


def clock_event_words(mask: int) -> tuple[str, ...]:
    return tuple(words for bit, words in CLOCK_EVENTS.items() if mask & bit)


def verdict(contention: Contention) -> Contention:
    """The same readings with `busy` and the reasons, in words, filled in."""
    reasons = []
    c = contention
    if c.cpu_other_fraction is not None and c.cpu_other_fraction > BUSY_OTHER_CPU_FRACTION:
        reasons.append(f"other processes used {c.cpu_other_fraction:.0%} of the CPUs")
    if c.cpu_steal_fraction is not None and c.cpu_steal_fraction > BUSY_STEAL_FRACTION:
        reasons.append(f"the hypervisor stole {c.cpu_steal_fraction:.0%} of the CPUs")
    if c.gpu_other_processes:
        reasons.append(f"{c.gpu_other_processes} other process"
                       f"{'es' if c.gpu_other_processes > 1 else ''} on the GPU")
    if c.gpu_clock_events:
        clock = (f", SM clock down to {c.gpu_sm_clock_min_mhz:,} of {c.gpu_sm_clock_max_mhz:,} MHz"
                 if c.gpu_sm_clock_min_mhz and c.gpu_sm_clock_max_mhz else "")
        reasons.append(f"the GPU slowed itself ({', '.join(c.gpu_clock_events)}{clock})")
    read = c.cpu_other_fraction is not None or c.gpu_sm_clock_max_mhz is not None
    return replace(c, busy=bool(reasons) if read else None, busy_reasons=tuple(reasons))


class ContentionWatch:
    """Reads contention over the timed repeats: `start()` before them, `sample()` between two,
    `stop()` after; every read falls outside a repeat.

        watch = ContentionWatch(nvml)
        watch.start(); ...; watch.sample(); ...; contention = watch.stop()
    """

    def __init__(self, nvml: GpuReader | None = None, proc: Path = PROC):
        self._nvml, self._proc = nvml, proc
        self._before: CpuTimes | None = None
        self._violations_before: dict[str, int] = {}
        self._own: set[int] = set()
        self._others: int | None = None
        self._clock_min: int | None = None
        self._clock_max: int | None = None
        self._events = 0
        self._temperature: int | None = None

    def start(self) -> None:
        try:
            self._before = read_cpu_times(self._proc)
        except (OSError, ValueError):
            self._before = None  # not Linux: the CPU columns stay empty
        self._violations_before = self._violations()
        # this run's own processes, read from /proc once per window, not at every sample
        self._own = _family(os.getpid(), self._proc) if self._nvml is not None else set()
        self.sample()

    def _violations(self) -> dict[str, int]:
        return {} if self._nvml is None else self._nvml.violation_ns()

    def sample(self) -> None:
        """The GPU's state now; a reading NVML refuses is left out."""
        if self._nvml is None:
            return
        # each reading on its own: a card without one still gives the others
        try:
            clock, top = self._nvml.sm_clock_mhz(), self._nvml.max_sm_clock_mhz()
            self._clock_min = clock if self._clock_min is None else min(self._clock_min, clock)
            self._clock_max = top
        except NvmlUnavailable:
            pass
        try:
            self._events |= self._nvml.clock_event_reasons()
        except NvmlUnavailable:
            pass
        try:
            temperature = self._nvml.temperature_c()
            self._temperature = max(self._temperature or temperature, temperature)
        except NvmlUnavailable:
            pass
        others = _other_processes(self._nvml.processes(), self._own)
        if others is not None:
            self._others = max(self._others or 0, others)

    def stop(self) -> Contention:
        self.sample()
        held = {words: ns - self._violations_before[words]
                for words, ns in self._violations().items() if words in self._violations_before}
        shares = None
        if self._before is not None:
            try:
                shares = cpu_shares(self._before, read_cpu_times(self._proc))
            except (OSError, ValueError):
                shares = None
        return verdict(Contention(
            cpu_other_fraction=None if shares is None else shares[0],
            cpu_steal_fraction=None if shares is None else shares[1],
            cpu_load_1m=load_1m(self._proc),
            gpu_other_processes=self._others, gpu_sm_clock_min_mhz=self._clock_min,
            gpu_sm_clock_max_mhz=self._clock_max,
            gpu_clock_events=clock_event_words(self._events) + tuple(
                f"{words}: clocks held down {ns / 1e6:,.0f} ms of the repeats"
                for words, ns in held.items() if ns > 0),
            gpu_temperature_max_c=self._temperature))


def _other_processes(processes, own: set[int], me: int | None = None) -> int | None:
    """Processes on the card besides this run's `own` (_family: this worker, its parent, which
    may hold a context of its own from asking the card's properties, and the parent's other
    workers: in a pool on one host none of them is contention), or None where NVML cannot see
    them: hidden, or an empty list while this process holds a context. In a container NVML may
    list host pids, so this process is not always found by its pid: then one of those listed is
    taken to be it."""
    if not processes:  # this process holds a context: an empty list means NVML cannot see
        return None
    pids = {p.pid for p in processes}
    if (os.getpid() if me is None else me) not in pids:
        return max(0, len(pids) - 1)
    return len(pids - own)


def _family(pid: int, proc: Path = PROC) -> set[int]:
    """`pid`, its parent and its parent's other children, from /proc (just `pid` elsewhere)."""
    parent = _parent_of(pid, proc)
    if parent is None:
        return {pid}
    siblings = set()
    for entry in proc.glob("[0-9]*"):
        if _parent_of(int(entry.name), proc) == parent:
            siblings.add(int(entry.name))
    return {pid, parent} | siblings


def _parent_of(pid: int, proc: Path = PROC) -> int | None:
    try:
        return int((proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
