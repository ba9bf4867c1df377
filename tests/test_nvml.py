import re
import threading
import time

import pytest

from bench.instruments.nvml import (
    NvmlDevice,
    NvmlReader,
    NvmlUnavailable,
    PeakSampler,
    nvml_index_for,
)
from helpers import needs_gpu


class Readings:
    """A read function for PeakSampler (not a card): the given readings in turn, then the last
    again."""

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
    reader = Readings([100, 300, 200, 250])
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
    reader = Readings([5, 7], fail_after=2)
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


H100_A = NvmlDevice(0, "GPU-aaaa1111-0000-0000-0000-000000000000", "NVIDIA H100 80GB HBM3")
H100_B = NvmlDevice(1, "GPU-bbbb2222-0000-0000-0000-000000000000", "NVIDIA H100 80GB HBM3")
L4 = NvmlDevice(2, "GPU-cccc3333-0000-0000-0000-000000000000", "NVIDIA L4")
SAME = [H100_A, H100_B]
MIXED = [H100_A, H100_B, L4]


@pytest.mark.parametrize("cuda_index, devices, visible, order, expected", [
    (1, SAME, None, None, 1),  # nothing hidden: CUDA's numbering is NVML's
    (0, SAME, "1", None, 1),  # equal cards: fastest first keeps PCI bus order
    (1, MIXED, "2,0", "PCI_BUS_ID", 0),
    (0, MIXED, "GPU-bbbb2222-0000-0000-0000-000000000000", None, 1),  # as Slurm sets it
    (0, MIXED, "GPU-cccc3333", None, 2),  # a unique prefix, as CUDA accepts
    (1, MIXED, "GPU-cccc3333,GPU-aaaa1111", None, 0),
])
def test_cuda_devices_map_to_nvml_indices(cuda_index, devices, visible, order, expected):
    assert nvml_index_for(cuda_index, devices, visible, order) == expected


def test_the_uuid_of_a_started_cuda_device_settles_it():
    # torch prints the UUID without NVML's "GPU-" prefix
    assert nvml_index_for(0, MIXED, "0", None, "cccc3333-0000-0000-0000-000000000000") == 2


@pytest.mark.parametrize("cuda_index, devices, visible, order, message", [
    (0, MIXED, "1", None, "set CUDA_DEVICE_ORDER=PCI_BUS_ID or name the GPU by UUID"),
    (0, MIXED, "GPU-dddd", None, "NVML has no GPU whose UUID starts 'GPU-dddd'"),
    (0, MIXED, "GPU-", None, "NVML has more than one GPU whose UUID starts 'GPU-'"),
    (1, SAME, "0", None, "CUDA_VISIBLE_DEVICES='0' shows no GPU 1"),
    (0, SAME, "MIG-1234", None, "is a MIG instance (MIG-1234)"),
    (0, SAME, "5", None, "NVML sees 2 GPU(s), none with index 5"),
])
def test_a_mapping_it_cannot_be_sure_of_is_refused_with_the_fix(cuda_index, devices, visible,
                                                                 order, message):
    with pytest.raises(NvmlUnavailable, match=re.escape(message)):
        nvml_index_for(cuda_index, devices, visible, order)


class FakeNvmlLibrary:
    """The seam under NvmlReader: pynvml's functions for one card, some of them failing."""

    def __init__(self, monkeypatch, failing=()):
        import pynvml

        def fails(name, error):
            def call(*args, **kwargs):
                raise error
            monkeypatch.setattr(pynvml, name, call)

        monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
        monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 1)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: f"handle{i}")
        monkeypatch.setattr(pynvml, "nvmlDeviceGetUUID", lambda h: H100_A.uuid)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetName", lambda h: H100_A.name)
        monkeypatch.setattr(pynvml, "nvmlSystemGetDriverVersion", lambda: "580.159.04")
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        # where this process has started CUDA, the real card's UUID would pick the device
        monkeypatch.setattr("bench.instruments.nvml._cuda_uuid", lambda index: None)
        lost = pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        for name in failing:
            if name == "nvmlDeviceGetComputeRunningProcesses":
                fails(name, pynvml.NVMLLibraryMismatchError("Unversioned function called"))
            else:
                fails(name, lost)


def test_a_failing_nvml_call_is_nvml_unavailable_with_the_reason(monkeypatch):
    FakeNvmlLibrary(monkeypatch, failing=["nvmlDeviceGetMemoryInfo"])
    with NvmlReader(0) as reader:
        assert reader.name() == "NVIDIA H100 80GB HBM3"
        with pytest.raises(NvmlUnavailable, match="memory not readable: GPU is lost"):
            reader.memory()


def test_a_process_list_the_library_cannot_read_is_not_available(monkeypatch):
    FakeNvmlLibrary(monkeypatch, failing=["nvmlDeviceGetComputeRunningProcesses"])
    with NvmlReader(0) as reader:
        assert reader.processes() is None


def test_a_run_notes_an_nvml_failure_instead_of_crashing(monkeypatch):
    from bench.execution.cell import Settings
    from bench.execution.runner import Baseline, Runner
    from bench.execution.worker import WorkerSpec

    FakeNvmlLibrary(monkeypatch, failing=["nvmlDeviceGetMemoryInfo"])
    runner = Runner(WorkerSpec("cuda:0", "synthetic", None, Settings()), cuda_index=0)
    assert runner._nvml_snapshot() == Baseline(note="memory not readable: GPU is lost")


def test_the_doctor_notes_an_nvml_failure_instead_of_crashing(monkeypatch):
    import torch

    from bench.doctor import report

    FakeNvmlLibrary(monkeypatch, failing=["nvmlDeviceGetMemoryInfo"])
    checkup = report(torch.device("cpu"), None)
    assert checkup.fits
    assert checkup.lines[-1] == ("NVML: unavailable (memory not readable: GPU is lost); NVML "
                                 "columns will read 'not measured'")


@needs_gpu
def test_real_nvml_reads_the_card():
    import torch

    with NvmlReader(0) as reader:
        info = reader.memory()
        assert info.total_bytes > 0
        assert info.reserved_bytes + info.used_bytes + info.free_bytes == pytest.approx(
            info.total_bytes, rel=0.01)
        with PeakSampler(reader.used_bytes) as sampler:
            time.sleep(0.05)
        assert sampler.peak > 0 and sampler.samples > 1
        # the cumulative counters a window's power cap is read from, and the clock events
        violations = reader.violation_ns()
        assert set(violations) <= {"power cap", "thermal"}
        assert all(isinstance(ns, int) and ns >= 0 for ns in violations.values())
        assert isinstance(reader.clock_event_reasons(), int)
        # what sizes the libraries' workspaces in the memory model, as torch sees it
        assert reader.compute_capability() == torch.cuda.get_device_capability(0)


def test_the_real_reader_and_the_one_fake_answer_every_call_of_the_protocol():
    """The instruments are written against GpuReader; the fake that stands in for a card in the
    CPU's tests cannot drift from what the real reader offers."""
    from bench.instruments.nvml import GpuReader
    from helpers import FakeCard

    calls = {name for name in vars(GpuReader) if not name.startswith("_")}
    assert {"memory", "processes", "total_energy_mj", "close"} <= calls
    assert calls <= set(dir(NvmlReader)) and calls <= set(dir(FakeCard))


def test_power_is_read_from_the_instantaneous_field_where_the_driver_has_it(monkeypatch):
    """nvmlDeviceGetPowerUsage averages over a second on Ampere and later; the instantaneous
    field does not. Where the field fails (an older driver), the averaged call answers."""
    import pynvml

    FakeNvmlLibrary(monkeypatch)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetPowerUsage", lambda handle: 300_000)

    def fields(handle, ids):
        assert ids == [pynvml.NVML_FI_DEV_POWER_INSTANT]
        value = pynvml.c_nvmlFieldValue_t()
        value.fieldId, value.nvmlReturn = ids[0], pynvml.NVML_SUCCESS
        value.valueType, value.value.uiVal = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, 412_345
        return [value]

    monkeypatch.setattr(pynvml, "nvmlDeviceGetFieldValues", fields)
    with NvmlReader(0) as reader:
        assert reader.power_mw() == 412_345

    def unsupported(handle, ids):
        value = pynvml.c_nvmlFieldValue_t()
        value.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
        return [value]

    monkeypatch.setattr(pynvml, "nvmlDeviceGetFieldValues", unsupported)
    with NvmlReader(0) as reader:
        assert reader.power_mw() == 300_000


def test_a_job_that_may_open_one_card_of_four_reads_that_card(monkeypatch):
    """Slurm's ConstrainDevices: the job's cgroup holds only NVML's card 2, which CUDA, seeing
    only it, calls 0 (CUDA_VISIBLE_DEVICES=0). NVML still counts four cards and refuses the
    others; the reader skips them and reads card 2, where it used to fail or read card 0."""
    import pynvml

    FakeNvmlLibrary(monkeypatch)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 4)

    def handle(index):
        if index != 2:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
        return "handle2"

    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", handle)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUUID", lambda h: f"GPU-uuid-of-{h}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with NvmlReader(0) as reader:
        assert reader.device.index == 2 and reader.device.uuid == "GPU-uuid-of-handle2"
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex",
                        lambda i: (_ for _ in ()).throw(
                            pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)))
    with pytest.raises(NvmlUnavailable, match="NVML may open none of the 4 GPU"):
        NvmlReader(0)
