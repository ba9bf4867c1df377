"""What only a GPU can show: allocator peaks against the prediction, a real CUDA OOM under the
cap and the memory coming back. Skipped, with the reason, where there is no GPU; the same logic
runs on the CPU in test_oom.py, test_predict.py and test_run.py."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from bench.basics.outcome import Outcome
from bench.execution.cell import Settings, run_cell
from bench.execution.session import build_row
from bench.execution.worker import Worker, WorkerSpec
from bench.instruments.nvml import NvmlReader
from bench.planning.grid import Config
from bench.planning.predict import boundary_batch, predict_peak_bytes
from helpers import ROOT, needs_gpu
from lenet.data import synthetic_tensors

pytestmark = needs_gpu
QUICK = Settings(min_repeat_s=0.05, warmup_steps=2)


def test_allocator_peaks_and_nvml_fill_the_row():
    data = synthetic_tensors()
    with NvmlReader(0) as reader:
        result, healthy = run_cell(Config(4096, device="cuda:0"), data, QUICK, reader)
    row = build_row(result)
    assert row.status == "ok" and healthy
    assert row.peak_reserved_bytes >= row.peak_allocated_bytes > 0
    assert row.nvml_peak_used_bytes > row.peak_reserved_bytes
    predicted = predict_peak_bytes(4096, "float32", False, "device", device_type="cuda")
    # on an H100 (torch 2.11): 477.5 MiB predicted, 480.4 MiB measured
    assert 0.95 * row.peak_allocated_bytes < predicted < 1.02 * row.peak_allocated_bytes
    assert torch.cuda.memory_allocated() <= data.images.numel() * 4 + 2**20


def test_a_2gib_cap_makes_a_real_oom_and_backs_off():
    """On an H200 with a 2 GiB cap, b65,536 ran out of memory and b32,768 fitted."""
    spec = WorkerSpec("cuda:0", "synthetic", None, QUICK, memory_cap_bytes=2 * 2**30)
    worker = Worker(spec)
    try:
        result, healthy = worker.cell(Config(65536, device="cuda:0"))
    finally:
        worker.close()
    row = build_row(result)
    assert row.status == "oom_backed_off" and healthy
    assert [a.batch_size for a in row.attempts][:2] == [65536, 32768]
    assert row.attempts[0].outcome == Outcome.OOM
    assert row.peak_reserved_bytes <= 2 * 2**30


def test_a_trial_runs_out_of_memory_where_the_replayed_allocator_does():
    """Under a 2 GiB cap a float32 trial's allocations replayed through the caching allocator
    (bench.planning.allocator) fit at 24,854 and not past it: on the card, 2% either side of
    the predicted boundary trains and runs out of memory."""
    predicted = boundary_batch(Config(256, device="cuda:0"), 2 * 2**30, capped=True)
    worker = Worker(WorkerSpec("cuda:0", "synthetic", None, QUICK, memory_cap_bytes=2 * 2**30))
    try:
        below = worker.trial(Config(256, device="cuda:0"), int(0.98 * predicted))
        above = worker.trial(Config(256, device="cuda:0"), int(1.02 * predicted) + 1)
    finally:
        worker.close()
    assert below.attempt.outcome == Outcome.OK, below.attempt.error
    assert above.attempt.outcome == Outcome.OOM, above.attempt.error


def _fresh_process(code: str):
    """Run `code` in a new interpreter (nothing has started CUDA) and return the JSON it prints."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_memory_probes_are_safe_to_call_first_in_a_process():
    peaks = _fresh_process("""
        import json, torch
        from bench.instruments import memory
        device = torch.device("cuda:0")
        memory.reset_peaks(device)  # before anything else has started CUDA
        print(json.dumps(memory.read_peaks(device).peak_allocated_bytes))
    """)
    assert peaks == 0


def test_the_first_cell_of_a_fresh_process_gives_its_memory_back():
    """cuBLAS workspaces outlive a cell unless released: the first cell must still read healthy."""
    result = _fresh_process("""
        import json
        from bench.execution.cell import Settings, run_cell
from bench.execution.session import build_row
        from bench.planning.grid import Config
        from bench.execution.session import build_row
        from lenet.data import synthetic_tensors
        result, healthy = run_cell(Config(1024, device="cuda:0"), synthetic_tensors(),
                                   Settings(min_repeat_s=0.05, warmup_steps=2))
        print(json.dumps({"status": build_row(result).status, "healthy": healthy}))
    """)
    assert result == {"status": "ok", "healthy": True}


def test_nvml_reads_the_card_cuda_uses_by_its_uuid():
    torch.cuda.init()
    uuid = str(torch.cuda.get_device_properties(0).uuid)
    with NvmlReader(0) as reader:
        assert reader.device.uuid.lower().removeprefix("gpu-") == uuid.lower()
    # a parent that has not started CUDA finds the same card through CUDA_VISIBLE_DEVICES
    found = _fresh_process(f"""
        import json, os
        os.environ["CUDA_VISIBLE_DEVICES"] = "GPU-{uuid}"
        from bench.instruments.nvml import NvmlReader
        with NvmlReader(0) as reader:
            print(json.dumps(reader.device.uuid))
    """)
    assert found.lower().removeprefix("gpu-") == uuid.lower()


def test_the_cuda_graph_modes_train_to_eagers_loss():
    from lenet.model import build_lenet
    from lenet.train import build_step

    data = synthetic_tensors(256, seed=1)
    images, labels = data.images.cuda(), data.labels.cuda()

    def losses(mode, calls):
        step = build_step(build_lenet(seed=0).cuda(), lr=0.9, mode=mode)
        return [float(step(images, labels)[0]) for _ in range(calls)]

    eager = losses("eager", 15)
    assert eager[-1] < eager[0]
    assert losses("compile-cudagraphs", 12) == pytest.approx(eager[:12], abs=1e-3)
    # graph mode's first call trains 3 steps on a side stream before the captured one
    assert losses("graph", 12) == pytest.approx(eager[3:], abs=1e-3)
    graphed = build_step(build_lenet(seed=0).cuda(), lr=0.9, mode="graph")
    graphed(images, labels)
    assert float(graphed.first_loss) == pytest.approx(eager[0], abs=1e-3)  # not the fourth


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_graph_mode_captures_on_the_steps_own_card_not_the_current_one():
    from lenet.model import build_lenet
    from lenet.train import build_step

    data = synthetic_tensors(256, seed=1)
    images, labels = data.images.to("cuda:1"), data.labels.to("cuda:1")
    assert torch.cuda.current_device() == 0
    step = build_step(build_lenet(seed=0).to("cuda:1"), lr=0.9, mode="graph")
    losses = [float(step(images, labels)[0]) for _ in range(6)]
    assert losses[-1] < losses[0]  # the replays train: the graph holds the step


@pytest.mark.parametrize("mode", ["graph", "compile-cudagraphs"])
def test_a_graph_mode_cell_records_setup_energy_and_gives_memory_back(mode):
    data = synthetic_tensors()
    settings = Settings(min_repeat_s=0.45, warmup_steps=2)  # a window of 5 x 0.45 s
    with NvmlReader(0) as reader:
        result, healthy = run_cell(Config(1024, device="cuda:0", mode=mode), data, settings,
                                   reader)
    row = build_row(result)
    assert row.status == "ok" and healthy, row.error
    assert row.setup_s > 0 and row.loss_last < row.loss_first
    # a figure, not a note: the repeats go on until the window is long enough for the counter
    assert row.energy_method == "nvml-energy-counter" and row.energy_note is None, \
        row.energy_note
    assert row.energy_window_s >= 2.0 and row.mean_power_w is not None
    assert 10 < row.mean_power_w < 2000  # watts: a card at work, not noise or a unit slip
    assert row.energy_j_per_1000_examples > 0


def test_a_pooled_gpu_worker_is_pinned_to_its_card_and_its_rows_name_it(tmp_path):
    last = torch.cuda.device_count() - 1  # the last card: pinning shows where it is not 0
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--grid", "smoke", "--set", "batch_size=256",
         "--set", "placement=device", "--data", "synthetic", "--devices", str(last), "--out",
         str(out), "--no-report"], capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    with NvmlReader(last) as reader:
        name, uuid = reader.name(), reader.device.uuid
    assert rows and all(r["status"] == "ok" and r["device"] == "cuda:0" for r in rows)
    assert {(r["gpu_index"], r["gpu_name"], r["gpu_uuid"], r["worker"]) for r in rows} == {
        (last, name, uuid, f"GPU {last}")}
    # the pinned worker's NVML reader found its card through CUDA_VISIBLE_DEVICES
    assert all(r["nvml_peak_used_bytes"] for r in rows)


@pytest.mark.parametrize("method, mode", [("vmap", "eager"), ("streams", "eager"),
                                          ("vmap", "graph")])
def test_several_models_on_the_card_each_train_as_alone(method, mode):
    """Four LeNets at once on the card, stacked (eager, or captured in one CUDA graph) or on
    four streams: each replica's first losses are those it reaches alone from its seed."""
    from lenet.model import build_lenet
    from lenet.train import build_step

    data = synthetic_tensors(256, seed=1)
    images, labels = data.images.cuda(), data.labels.cuda()
    alone = []
    for seed in range(4):
        step = build_step(build_lenet(seed=seed).cuda(), lr=0.9, precision="highest")
        alone.append([float(step(images, labels)[0]) for _ in range(3)])
    step = build_step([build_lenet(seed=k).cuda() for k in range(4)], lr=0.9, mode=mode,
                      precision="highest", replica_method=method)
    together = [float(step(images, labels)[0]) for _ in range(3)]
    # a graphed step's first call trains its warm-up steps before the one it returns
    first = float(getattr(step, "first_loss", together[0]))
    assert first == pytest.approx(sum(run[0] for run in alone) / 4, rel=1e-4)
    assert together[-1] < first


def test_graph_mode_trains_from_a_pinned_host_loader_with_workers():
    """The DataLoader's pin thread allocates pinned host memory while the step is captured:
    captured in thread_local mode, as inductor captures, that does not break the capture."""
    data = synthetic_tensors(4096)
    config = Config(256, placement="host", pin_memory=True, num_workers=2, mode="graph",
                    device="cuda:0")
    result, healthy = run_cell(config, data, QUICK)
    row = build_row(result)
    assert row.status == "ok", row.error
    assert row.loss_last < row.loss_first
