"""The LeNet training step under pytest-benchmark, through this project's own plugin: a CI gate
on time and memory.

    pytest tests/benchmarks --benchmark-autosave
    pytest tests/benchmarks --benchmark-compare --benchmark-compare-fail=median:10% \
        --benchmark-memory-compare-fail=tracked_peak_bytes:5%

Each round runs a fixed number of steps; `memory_benchmark` ends it with a device synchronize, so
on a GPU the time is the work's and not the launch queue's. Pedantic mode with warm-up rounds,
because calibration would time a few asynchronous launches, and because the warm-up is where a
compiled or captured step is built (its build time is not a training step's). Peak memory goes
into extra_info, where the plugin's gate and `python -m bench.compare` read it.
"""

import pytest
import torch

from lenet.data import synthetic_tensors
from lenet.model import build_lenet
from lenet.train import build_step

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param(
    "cuda:0", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU"))]
SETTINGS = [  # batch, dtype, channels_last, mode
    (64, "float32", False, "eager"),
    (256, "float32", False, "eager"),
    (256, "bfloat16", False, "eager"),
    (256, "float32", True, "eager"),
    # its first compile takes about 40 s on 2 cores: in the full suite, not the fast tier
    pytest.param(256, "float32", False, "compile", marks=pytest.mark.slow),
    (256, "float32", False, "compile-cudagraphs"),
    (256, "float32", False, "graph"),
]
CUDA_ONLY_MODES = ("compile-cudagraphs", "graph")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_size, dtype, channels_last, mode", SETTINGS)
def test_train_step(memory_benchmark, device, batch_size, dtype, channels_last, mode):
    device = torch.device(device)
    if mode in CUDA_ONLY_MODES and device.type != "cuda":
        pytest.skip(f"mode {mode} needs a CUDA device")
    data = synthetic_tensors(batch_size, seed=0)
    images, labels = data.images.to(device), data.labels.to(device)
    step = build_step(build_lenet(seed=0).to(device), lr=0.9, dtype=dtype,
                      channels_last=channels_last, mode=mode)
    steps_per_round = 5 if device.type == "cpu" else 50

    def steps():
        for _ in range(steps_per_round):
            step(images, labels)

    memory_benchmark.pedantic(steps, rounds=10, iterations=1, warmup_rounds=2)
    # bench.compare turns a round's time into examples/s with examples_per_round
    memory_benchmark.extra_info.update(
        batch_size=batch_size, examples_per_round=batch_size * steps_per_round, dtype=dtype,
        channels_last=channels_last, mode=mode, device=str(device))
