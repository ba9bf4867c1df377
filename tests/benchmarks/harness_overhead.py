"""What the harness itself costs: one cell's throughput timed by bench.execution.cell.measure
(with a memory sampler thread polling every 5 ms) against a bare loop of the same steps,
alternated in one run.

    python tests/benchmarks/harness_overhead.py [--device cpu] [--batch-size 256] [--rounds 7]

Prints the median examples/s of each and their ratio. Not a test: a figure to read.
"""

import argparse
import statistics
import time

import torch

from bench.execution.cell import Settings, measure
from bench.instruments import memory, timing
from bench.instruments.nvml import NvmlReader, NvmlUnavailable, PeakSampler
from bench.planning.grid import Config
from lenet.data import device_batches, synthetic_tensors
from lenet.model import build_lenet
from lenet.train import TrainStep


def bare_loop(data, config: Config, settings: Settings, steps: int) -> float:
    device = torch.device(config.device)
    step = TrainStep(build_lenet(seed=0).to(device), settings.lr, config.dtype,
                     config.channels_last)
    batches = device_batches(data, config.batch_size, device)
    for _ in range(settings.warmup_steps):
        step(*next(batches))
    rates = []
    for _ in range(settings.repeats):
        timing.synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step(*next(batches))
        timing.synchronize(device)
        rates.append(steps * config.batch_size / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    config = Config(args.batch_size, device=args.device)
    settings = Settings(min_repeat_s=0.2)
    data = synthetic_tensors()
    device = torch.device(args.device)
    try:
        reader = NvmlReader(device.index or 0).used_bytes if device.type == "cuda" else None
    except NvmlUnavailable:
        reader = None
    read = reader or memory.rss_bytes  # on the CPU, /proc reads: dearer than an NVML call
    harness, bare = [], []
    for _ in range(args.rounds):
        with PeakSampler(read):
            result = measure(config, args.batch_size, data, settings)
        harness.append(result.measurement.examples_per_s_median)
        bare.append(bare_loop(data, config, settings, result.measurement.steps_per_repeat))
    h, b = statistics.median(harness), statistics.median(bare)
    print(f"{config.key()} on {args.device}, {args.rounds} alternating rounds")
    print(f"bare loop:           {b:12,.0f} examples/s (median)")
    print(f"harness and sampler: {h:12,.0f} examples/s (median)")
    print(f"harness / bare:      {h / b:12.3f}  (cost {1 - h / b:+.1%})")


if __name__ == "__main__":
    main()
