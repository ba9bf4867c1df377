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
