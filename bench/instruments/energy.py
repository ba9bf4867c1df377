"""The energy a cell's timed repeats used: NVML's total-energy counter on a GPU, power samples
integrated over time where the card has no counter, and RAPL's package counter on a CPU where the
kernel lets this user read it. Nowhere is a missing figure a zero.

Both counters are read at the two ends of the timed window. NVML's updates every 20 to 100 ms, so
each end can be off by up to 100 ms of energy: a window of 2 s keeps that under 10%. A shorter
window gives no figure, only a note saying why; a cell therefore times repeats until its window
lasts the minimum (`EnergyMeter.short_s`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.instruments.nvml import GpuReader

MIN_WINDOW_S = 2.0  # two ends, each up to 0.1 s of energy off: at most 10% of 2 s
POWER_SAMPLE_PERIOD_S = 0.02

COUNTER = "nvml-energy-counter"
POWER_SAMPLES = "nvml-power-samples"
RAPL = "rapl-package"
# a cell that never reached its timed repeats has no window to measure energy over
NO_TIMED_WINDOW = "not measured: the cell did not reach its timed repeats (see its error)"


@dataclass(frozen=True)
class Energy:
    """The energy of one timed window, or None with the reason."""

    joules: float | None = None
    window_s: float | None = None
    method: str | None = None  # COUNTER, POWER_SAMPLES or RAPL
    note: str | None = None  # why there is no figure, or what it includes

    @property
    def mean_power_w(self) -> float | None:
        return None if self.joules is None else self.joules / self.window_s

    def per_1000_examples_j(self, examples: int) -> float | None:
        return None if self.joules is None else 1000 * self.joules / examples


RAPL_ROOT = Path("/sys/class/powercap")


class RaplCounter:
    """The CPU packages' energy, summed over packages, from the kernel's powercap interface. It
    counts everything the packages ran, other processes included, and wraps at its range."""

    def __init__(self, domains: list[Path]):
        self._domains = domains

    @classmethod
    def find(cls, root: Path = RAPL_ROOT) -> RaplCounter | str:
        """The counter, or why there is none (recent kernels let only root read it)."""
        packages = [d for d in sorted(root.glob("intel-rapl:*"))
                    if d.name.count(":") == 1 and (d / "name").is_file()
                    and (d / "name").read_text().startswith("package")]
        if not packages:
            return f"no RAPL package counter under {root}"
        try:
            for domain in packages:
                int((domain / "energy_uj").read_text())
        except OSError as exc:
            return f"RAPL's counter is not readable here ({exc.strerror}: {exc.filename})"
        return cls(packages)

    def read_uj(self) -> list[int]:
        return [int((d / "energy_uj").read_text()) for d in self._domains]

    def joules_between(self, start: list[int], end: list[int]) -> float:
        total = 0
        for domain, a, b in zip(self._domains, start, end):
            if b < a:  # it wrapped once; a window of seconds cannot wrap twice
                b += int((domain / "max_energy_range_uj").read_text())
            total += b - a
        return total / 1e6


class _PowerIntegral:
    """Integrates `read_mw()` over time on a thread (trapezoids between samples)."""

    def __init__(self, read_mw):
        self._read_mw = read_mw
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="power-sampler", daemon=True)
        self.joules = 0.0
        self.error: str | None = None

    def _run(self) -> None:
        try:
            last_t, last_w = time.perf_counter(), self._read_mw() / 1000
        except Exception as exc:  # noqa: BLE001 - no first reading: no figure, never 0 J
            self.error = f"{type(exc).__name__}: {exc}"
            return
        while not self._stop.wait(POWER_SAMPLE_PERIOD_S):
            try:
                w = self._read_mw() / 1000
            except Exception as exc:  # noqa: BLE001 - a failing reader ends the figure
                self.error = f"{type(exc).__name__}: {exc}"
                return
            t = time.perf_counter()
            self.joules += (w + last_w) / 2 * (t - last_t)
            last_t, last_w = t, w

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class EnergyMeter:
    """Measures one window: `start()`, the timed work, `stop()` -> Energy.

    `nvml` is a GPU's reader (bench.instruments.nvml.GpuReader), None on a CPU; `rapl`
    is the CPU's counter or the reason it has none (RaplCounter.find)."""

    def __init__(self, nvml: GpuReader | None = None, rapl: RaplCounter | str | None = None,
                 min_window_s: float = MIN_WINDOW_S):
        self._nvml, self._rapl, self._min_window_s = nvml, rapl, min_window_s
        self.method, self.note = self._choose()

    def _choose(self) -> tuple[str | None, str | None]:
        if self._nvml is not None:
            try:
                self._nvml.total_energy_mj()
                return COUNTER, None
            except Exception as counter_failure:  # noqa: BLE001 - fall back to power samples
                try:
                    self._nvml.power_mw()
                    return POWER_SAMPLES, str(counter_failure)  # "no energy counter: why"
                except Exception as exc:  # noqa: BLE001
                    return None, f"not measured: NVML gives neither energy nor power ({exc})"
        if isinstance(self._rapl, RaplCounter):
            return RAPL, "the CPU packages' energy, other processes' share included"
        return None, f"not measured: {self._rapl or 'no energy counter on this device'}"

    def start(self) -> None:
        self._began = time.perf_counter()
        if self.method == COUNTER:
            self._start_reading = self._nvml.total_energy_mj()
        elif self.method == RAPL:
            self._start_reading = self._rapl.read_uj()
        elif self.method == POWER_SAMPLES:
            self._integral = _PowerIntegral(self._nvml.power_mw)
            self._integral.start()

    def short_s(self) -> float:
        """How much longer the window must last for a figure (0 where it is long enough, or
        where nothing is measured): the timed repeats go on until it is 0."""
        if self.method is None:
            return 0.0
        return max(0.0, self._min_window_s - (time.perf_counter() - self._began))

    def stop(self) -> Energy:
        window_s = time.perf_counter() - self._began
        if self.method is None:
            return Energy(window_s=window_s, note=self.note)
        try:
            joules = self._joules()
        except Exception as exc:  # noqa: BLE001 - a counter that failed mid-window: no figure
            return Energy(window_s=window_s, method=self.method,
                          note=f"not measured: the {self.method} failed ({exc})")
        if window_s < self._min_window_s:
            return Energy(window_s=window_s, method=self.method,
                          note=f"not measured: the timed window lasted {window_s:.2f} s, under "
                               f"the {self._min_window_s:g} s a reading needs (counters update "
                               f"every 20 to 100 ms); give more --repeats")
        if joules <= 0:  # a card draws power all the time: a counter that did not move is stuck
            return Energy(window_s=window_s, method=self.method,
                          note=f"not measured: the {self.method} did not move over "
                               f"{window_s:.2f} s (a counter this driver does not update)")
        return Energy(joules, window_s, self.method, self.note)

    def _joules(self) -> float:
        if self.method == COUNTER:
            return (self._nvml.total_energy_mj() - self._start_reading) / 1000
        if self.method == RAPL:
            return self._rapl.joules_between(self._start_reading, self._rapl.read_uj())
        self._integral.stop()
        if self._integral.error is not None:
            raise RuntimeError(self._integral.error)
        return self._integral.joules


def meter_for(device_type: str, nvml: GpuReader | None, rapl_root: Path = RAPL_ROOT) -> EnergyMeter:
    """The meter of a cell: its card's, through the NVML reader where there is one; for a CUDA
    cell without one, nothing (the CPU packages' counter would not be the card's energy); for a
    CPU cell, RAPL where the kernel allows."""
    if nvml is not None:
        return EnergyMeter(nvml)
    if device_type == "cuda":
        return EnergyMeter(None, "NVML cannot read this card, and the CPU packages' counter "
                                 "(RAPL) would not be the card's energy")
    return EnergyMeter(None, RaplCounter.find(rapl_root))
