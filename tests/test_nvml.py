import threading
import time

import pytest

from bench.nvml import NvmlReader, PeakSampler, nvml_index
from helpers import needs_gpu


class FakeReader:
    """Returns the given readings in turn, then repeats the last."""

    def __init__(self, values, fail_after=None):
        self.values, self.calls, self.fail_after = list(values), 0, fail_after

    def __call__(self):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        return self.values[min(self.calls, len(self.values)) - 1]


def _wait_for(predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "the sampler never sampled"
        time.sleep(0.001)


def test_sampler_keeps_the_peak():
    reader = FakeReader([100, 300, 200, 250])
    with PeakSampler(reader, period_s=0.0005) as sampler:
        _wait_for(lambda: reader.calls >= 4)
    assert sampler.peak == 300 and sampler.error is None


def test_a_reading_taken_at_stop_counts():
    values = [10]
    with PeakSampler(lambda: values[-1], period_s=10) as sampler:
        _wait_for(lambda: sampler.samples >= 1)
        values.append(99)  # rises after the last periodic sample
    assert sampler.peak == 99


def test_a_failing_reader_ends_sampling_and_is_recorded():
    reader = FakeReader([5, 7], fail_after=2)
    with PeakSampler(reader, period_s=0.0005) as sampler:
        _wait_for(lambda: sampler.error is not None)
    assert sampler.peak == 7
    assert sampler.error == "RuntimeError: NVML_ERROR_GPU_IS_LOST"


def test_stop_returns_within_one_period():
    sampler = PeakSampler(lambda: 1, period_s=0.2)
    sampler.__enter__()
    _wait_for(lambda: sampler.samples >= 1)
    start = time.monotonic()
    sampler.stop()
    assert time.monotonic() - start < 0.2
    assert not any(t.name == "nvml-sampler" for t in threading.enumerate())


def test_cuda_visible_devices_maps_to_nvml_indices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert nvml_index(0) == 2 and nvml_index(1) == 3
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert nvml_index(1) == 1


@needs_gpu
def test_real_nvml_reads_the_card():
    with NvmlReader(0) as reader:
        info = reader.memory()
        assert info.total_bytes > 0
        assert info.reserved_bytes + info.used_bytes + info.free_bytes == pytest.approx(
            info.total_bytes, rel=0.01)
        with PeakSampler(reader.used_bytes) as sampler:
            time.sleep(0.05)
        assert sampler.peak > 0 and sampler.samples > 1
