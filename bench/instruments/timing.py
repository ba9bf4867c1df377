"""Timing steps on a device that runs ahead of Python: synchronise at the two ends of a block of
steps and never inside, so the GPU queues work as it would in training."""

from __future__ import annotations

import time

import torch


def synchronize(device: torch.device) -> None:
    """Wait until the device has finished what was queued; the CPU runs in order already."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step, batches, count: int, device: torch.device):
    """(seconds, the last loss) of `count` steps, each on the next batch."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(count):
        loss, _ = step(*next(batches))
    synchronize(device)
    return time.perf_counter() - start, loss


# A launch is timed over blocks of this many operators, and the fastest block of a few kept: the
# floor, as timeit takes the minimum, since anything else the machine did only adds to it
LAUNCHES_PER_BLOCK = 500
LAUNCH_BLOCKS = 5


def launch_s(device: torch.device) -> float:
    """Seconds one operator takes when it has next to nothing to compute: an in-place add to a
    one-element tensor, issued from Python. Through torch's dispatcher on the CPU, and on a GPU
    the kernel's launch (or its run, whichever is slower): a step of N operators cannot take
    less than about N of these, however small its batch."""
    tensor = torch.zeros(1, device=device)
    blocks = []
    for _ in range(LAUNCH_BLOCKS):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(LAUNCHES_PER_BLOCK):
            tensor.add_(1)
        synchronize(device)
        blocks.append((time.perf_counter() - start) / LAUNCHES_PER_BLOCK)
    return min(blocks)
