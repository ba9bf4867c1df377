"""What the contention probes cost a cell: the time of one start, one sample and one stop of
bench.instruments.contention.ContentionWatch, against the 0.2 s a repeat lasts. The probes run
between repeats, never inside one, so this is time added to a cell, not error in its figure.

    python tests/benchmarks/contention_cost.py [--reads 200]

On a GPU machine the NVML reads (clocks, clock-event reasons, temperature, processes) are
timed too. Not a test: figures to read.
"""

import argparse
import statistics
import time

from bench.instruments.contention import ContentionWatch
from bench.instruments.nvml import NvmlReader, NvmlUnavailable

REPEAT_S = 0.2


def _median_us(action, reads: int) -> float:
    times = []
    for _ in range(reads):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=200)
    args = parser.parse_args()
    try:
        nvml = NvmlReader(0)
    except NvmlUnavailable as exc:
        nvml = None
        print(f"NVML: unavailable ({exc}); the CPU probes alone")
    watch = ContentionWatch(nvml)
    start_us = _median_us(watch.start, args.reads)
    sample_us = _median_us(watch.sample, args.reads)
    stop_us = _median_us(watch.stop, args.reads)
    repeats = 5
    per_cell_us = start_us + (repeats - 1) * sample_us + stop_us
    print(f"start {start_us:,.0f} us, sample {sample_us:,.0f} us, stop {stop_us:,.0f} us "
          f"(medians of {args.reads})")
    print(f"per cell of {repeats} repeats: {per_cell_us / 1e3:,.2f} ms, "
          f"{per_cell_us / 1e6 / (repeats * REPEAT_S):.2%} of its {repeats * REPEAT_S:g} s of "
          f"timed repeats, none of it inside a repeat")
    if nvml is not None:
        nvml.close()


if __name__ == "__main__":
    main()
