"""The OOM boundary: the largest batch that trains, per dtype and layout.

Double from a start until a step fails, then bisect between the last batch that worked and the
first that failed until they are within 5% of each other. It also stops at the batch limit (the
grid's cap) or when its time budget is spent, and says which. Each trial is one training step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

# Trial outcomes that depend on the batch's size, so bisecting narrows them down. The kernel's
# OOM killer ends a worker with SIGKILL: on the CPU that is running out of memory too.
SIZE_LIMITS = ("oom", "kernel_limit", "worker_died")


@dataclass
class Boundary:
    key: str
    dtype: str
    channels_last: bool
    placement: str
    max_ok_batch: int | None = None  # the largest batch that trained
    first_failed_batch: int | None = None  # the smallest that did not
    stop_reason: str = ""  # oom, kernel_limit, error, batch limit, time budget
    failure: str | None = None  # the error text of the first failed batch
    trials: list = field(default_factory=list)  # [{batch_size, outcome, error}]
    predicted_max_batch: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def find_max_batch(trial: Callable[[int], dict], boundary: Boundary, start: int, limit: int,
                   budget_s: float, tolerance: float = 0.05,
                   clock: Callable[[], float] = time.monotonic) -> Boundary:
    """Fill `boundary` from trials; `trial(batch)` returns {batch_size, outcome, error}."""
    deadline = clock() + budget_s

    def run(batch: int) -> bool:
        attempt = trial(batch)
        boundary.trials.append(attempt)
        if attempt["outcome"] == "ok":
            boundary.max_ok_batch = batch
            return True
        boundary.first_failed_batch = batch
        boundary.stop_reason = attempt["outcome"]
        boundary.failure = attempt.get("error")
        return False

    batch = start
    while True:  # grow
        if clock() > deadline:
            boundary.stop_reason = "time budget"
            return boundary
        if not run(batch):
            break
        if batch >= limit:
            boundary.stop_reason = "batch limit"
            return boundary
        batch = min(batch * 2, limit)
    if boundary.stop_reason not in SIZE_LIMITS:
        return boundary  # an error or a timeout: a smaller batch would not say where memory ends
    low, high = boundary.max_ok_batch or 0, boundary.first_failed_batch
    while high - low > max(1, tolerance * low):  # narrow
        if clock() > deadline:
            boundary.stop_reason += ", then the time budget"
            return boundary
        middle = (low + high) // 2
        if run(middle):
            low = middle
        else:
            high = middle
    return boundary
