import torch

from bench.doctor import fits, report
from bench.instruments.nvml import GpuProcess, NvmlUnavailable
from helpers import FakeCard, GiB, run_main


def test_a_card_held_by_other_processes_names_them():
    card = FakeCard(GiB // 4, processes=[GpuProcess(4242, 60 * GiB, "python"),
                                         GpuProcess(77, 19 * GiB, "jupyter-kernel")])
    ok, message = fits(card, needed_bytes=10 * 2**20)
    assert not ok
    assert message == (
        "does not fit: 778.0 MiB needed, only 256.0 MiB of 80.0 GiB free; other processes "
        "hold the card: pid 4242 (python) holds 60.0 GiB, pid 77 (jupyter-kernel) holds 19.0 GiB;"
        " stop them or use another GPU")


def test_a_full_card_whose_processes_are_hidden():
    ok, message = fits(FakeCard(GiB // 4, processes=None), needed_bytes=10 * 2**20)
    assert not ok and "processes NVML cannot name here" in message


def test_a_free_card_fits():
    ok, message = fits(FakeCard(70 * GiB, processes=[]), needed_bytes=10 * 2**20)
    assert ok and message.startswith("fits: 778.0 MiB needed")


def test_report_lists_the_card_and_its_processes():
    card = FakeCard(GiB // 4, processes=[GpuProcess(4242, 60 * GiB, "python")])
    checkup = report(torch.device("cuda", 0), 10 * 2**20, reader_factory=lambda i: card)
    assert not checkup.fits
    assert "GPU: NVIDIA H100 80GB HBM3, driver 580.65.06" in checkup.lines
    assert "process 4242 (python): 60.0 GiB" in checkup.lines
    assert checkup.verdict.startswith("does not fit: ")
    assert checkup.lines[-1] == f"smallest cell: {checkup.verdict}"


def test_without_nvml_it_says_so_and_carries_on():
    def missing(index):
        raise NvmlUnavailable("NVML could not start: NVML Shared Library Not Found")

    checkup = report(torch.device("cpu"), None, reader_factory=missing)
    assert checkup.fits and checkup.verdict is None
    assert checkup.lines[-1] == ("NVML: unavailable (NVML could not start: NVML Shared Library Not "
                         "Found); NVML columns will read 'not measured'")


def test_doctor_command_on_a_machine_without_a_gpu(no_gpu):
    result = run_main("bench.doctor")
    assert result.returncode == 0, result.stderr
    assert "device: cpu (no CUDA GPU is visible)" in result.stdout
