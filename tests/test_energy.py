"""Energy of a timed window through the seams: a fake NVML reader (the counter, or only power)
and a powercap tree written in a temporary folder (RAPL). The real counter is read in
test_gpu.py where there is a GPU."""

import re
import time

import pytest

from bench.instruments.energy import (
    COUNTER,
    MIN_WINDOW_S,
    POWER_SAMPLES,
    RAPL,
    EnergyMeter,
    RaplCounter,
    meter_for,
)
from bench.instruments.nvml import NvmlUnavailable
from helpers import FakeCard


def window(meter, seconds):
    meter.start()
    time.sleep(seconds)
    return meter.stop()


def test_the_counter_gives_joules_watts_and_joules_per_1000_examples():
    energy = window(EnergyMeter(FakeCard(watts=250.0), min_window_s=0.2), 0.3)
    assert energy.method == COUNTER and energy.note is None
    assert energy.mean_power_w == pytest.approx(250.0, rel=0.02)
    assert energy.per_1000_examples_j(30_000) == pytest.approx(energy.joules / 30, rel=1e-9)


def test_a_window_shorter_than_the_counter_needs_gives_a_note_not_noise():
    # a counter that moves in 100 ms steps, read over 150 ms: the raw figure would be 0 or 2x
    energy = window(EnergyMeter(FakeCard(update_s=0.1), min_window_s=2.0), 0.15)
    assert energy.joules is None and energy.mean_power_w is None
    assert energy.per_1000_examples_j(1000) is None
    assert re.match(r"not measured: the timed window lasted 0\.1\d s, under the 2 s a reading "
                    r"needs \(counters update every 20 to 100 ms\); give more --repeats$",
                    energy.note)


def test_without_the_counter_power_samples_are_integrated_and_named():
    energy = window(EnergyMeter(FakeCard(watts=120.0, counter=False), min_window_s=0.2), 0.4)
    assert energy.method == POWER_SAMPLES
    assert energy.note == "no energy counter: Not Supported"
    assert energy.mean_power_w == pytest.approx(120.0, rel=0.1)


def test_a_power_reading_that_fails_from_the_first_is_not_measured_never_zero():
    class FailsAfterChoosing(FakeCard):
        calls = 0

        def power_mw(self):
            self.calls += 1
            if self.calls > 1:  # the meter's choice read it once; the window's first fails
                raise NvmlUnavailable("no power reading: GPU is lost")
            return 120_000

    energy = window(EnergyMeter(FailsAfterChoosing(counter=False), min_window_s=0.1), 0.15)
    assert energy.joules is None and energy.method == POWER_SAMPLES
    assert energy.note == ("not measured: the nvml-power-samples failed (NvmlUnavailable: no "
                           "power reading: GPU is lost)")


def test_a_card_with_neither_is_not_measured_never_zero():
    energy = window(EnergyMeter(FakeCard(counter=False, power=False)), 0.01)
    assert energy.joules is None and energy.method is None
    assert energy.note == ("not measured: NVML gives neither energy nor power (no power "
                           "reading: Not Supported)")


@pytest.mark.parametrize("card", [FakeCard(watts=0.0), FakeCard(watts=0.0, counter=False)])
def test_a_counter_that_does_not_move_is_not_measured_never_zero(card):
    energy = window(EnergyMeter(card, min_window_s=0.1), 0.15)
    assert energy.joules is None and energy.per_1000_examples_j(1000) is None
    assert re.match(r"not measured: the nvml-(energy-counter|power-samples) did not move over "
                    r"0\.1\d s \(a counter this driver does not update\)$", energy.note)


def test_a_rapl_counter_that_does_not_move_is_not_measured(tmp_path):
    rapl = RaplCounter.find(_powercap(tmp_path, [(1_000_000, 10_000_000)]))
    energy = window(EnergyMeter(None, rapl, min_window_s=0.0), 0.01)
    assert energy.joules is None and "rapl-package did not move" in energy.note


def _powercap(root, packages):
    for index, (uj, range_uj) in enumerate(packages):
        domain = root / f"intel-rapl:{index}"
        domain.mkdir(parents=True)
        (domain / "name").write_text(f"package-{index}\n")
        (domain / "energy_uj").write_text(f"{uj}\n")
        (domain / "max_energy_range_uj").write_text(f"{range_uj}\n")
        sub = root / f"intel-rapl:{index}:0"  # a core domain: inside the package, not added
        sub.mkdir()
        (sub / "name").write_text("core\n")
        (sub / "energy_uj").write_text("0\n")
    return root


def test_rapl_sums_the_packages_and_survives_a_wrap(tmp_path):
    root = _powercap(tmp_path, [(1_000_000, 10_000_000), (9_900_000, 10_000_000)])
    rapl = RaplCounter.find(root)
    meter = EnergyMeter(None, rapl, min_window_s=0.0)
    assert meter.method == RAPL
    meter.start()
    (root / "intel-rapl:0" / "energy_uj").write_text("3000000\n")  # +2 J
    (root / "intel-rapl:1" / "energy_uj").write_text("400000\n")  # wrapped: +0.5 J
    energy = meter.stop()
    assert energy.joules == pytest.approx(2.5)
    assert energy.note == "the CPU packages' energy, other processes' share included"


def test_a_cuda_cells_energy_comes_from_its_card_or_is_not_measured(tmp_path):
    """RAPL counts the CPU packages: never a GPU cell's figure, even where NVML is missing."""
    root = _powercap(tmp_path, [(1_000_000, 10_000_000)])
    assert meter_for("cuda", FakeCard(), root).method == COUNTER
    without_nvml = meter_for("cuda", None, root)
    assert without_nvml.method is None
    assert without_nvml.note == ("not measured: NVML cannot read this card, and the CPU "
                                 "packages' counter (RAPL) would not be the card's energy")
    assert meter_for("cpu", None, root).method == RAPL


def test_no_rapl_is_not_measured_with_the_reason(tmp_path):
    energy = window(EnergyMeter(None, RaplCounter.find(tmp_path / "powercap")), 0.01)
    assert energy.joules is None and energy.method is None
    assert energy.note == f"not measured: no RAPL package counter under {tmp_path / 'powercap'}"


def test_a_cell_stores_the_energy_of_its_timed_repeats():
    from bench.execution.cell import Settings, run_cell
    from bench.execution.session import build_row
    from bench.planning.grid import Config
    from lenet.data import synthetic_tensors

    # five repeats of 0.05 s make 0.25 s: short of the 2 s the counter needs, so the cell times
    # more repeats of the same size until the window is long enough (repeats sized from the
    # faster of two blocks made 5 x 0.4 s land either side of 2 s: energy lost at random)
    settings = Settings(min_repeat_s=0.05, warmup_steps=1)
    result, _ = run_cell(Config(64, device="cpu"), synthetic_tensors(512), settings,
                         FakeCard(watts=250.0))
    row = build_row(result)
    assert row.status == "ok" and row.energy_method == COUNTER and row.energy_note is None
    assert row.energy_window_s >= MIN_WINDOW_S and row.energy_window_s >= sum(row.repeat_s)
    assert len(row.repeat_s) == row.repeats >= settings.repeats
    if row.repeats > settings.repeats:  # none more than the window needed
        assert row.energy_window_s - row.repeat_s[-1] < MIN_WINDOW_S
    assert row.mean_power_w == pytest.approx(250.0, rel=0.02)
    examples = row.repeats * row.steps_per_repeat * row.batch_size
    assert row.energy_j_per_1000_examples == pytest.approx(
        1000 * row.mean_power_w * row.energy_window_s / examples, rel=1e-9)


def test_without_an_energy_figure_to_take_a_cell_times_just_its_repeats():
    from bench.execution.cell import Settings, run_cell
    from bench.execution.session import build_row
    from bench.planning.grid import Config
    from lenet.data import synthetic_tensors

    settings = Settings(min_repeat_s=0.01, warmup_steps=1)
    result, _ = run_cell(Config(64, device="cpu"), synthetic_tensors(512), settings,
                         FakeCard(watts=250.0, counter=False, power=False))
    row = build_row(result)
    assert row.energy_method is None and row.repeats == settings.repeats


def test_the_process_figure_is_read_while_the_allocators_cache_is_still_held(monkeypatch):
    """nvml_process_used_bytes is this process's share as the driver sees it, cache included:
    read before the cell's memory is released, or H100 and H200 figures differ by what each
    happened to keep."""
    import os

    from bench.execution.cell import Settings, run_cell
    from bench.execution.session import build_row
    from bench.instruments import memory
    from bench.instruments.nvml import GpuProcess
    from bench.planning.grid import Config
    from lenet.data import synthetic_tensors

    events = []
    release = memory.release
    monkeypatch.setattr(memory, "release", lambda device: (events.append("release"),
                                                           release(device)))

    class Reader(FakeCard):
        def processes(self):
            events.append("processes")
            return [GpuProcess(os.getpid(), 123 * 2**20, "python")]

    result, _ = run_cell(Config(64, device="cpu"), synthetic_tensors(512),
                         Settings(min_repeat_s=0.01, warmup_steps=1), Reader())
    row = build_row(result)
    assert row.nvml_process_used_bytes == 123 * 2**20
    assert events[-2:] == ["processes", "release"]
