"""The OOM boundary: the largest batch that trains, per dtype and layout.

Double from a start until a step fails, then bisect between the last batch that worked and the
first that failed until they are within 5% of each other. It also stops at the batch limit (the
grid's cap) or when its time budget is spent, and says which. Each trial is one training step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from bench.grid import DEFAULTS, Config
from bench.outcome import SIZE_LIMITS, Attempt, Outcome
from bench.schema import SCHEMA_VERSION, field_defaults, upgraded


@dataclass
class Boundary:
    config: Config  # the cell searched, its batch left to the search
    max_ok_batch: int | None = None  # the largest batch that trained
    first_failed_batch: int | None = None  # the smallest that did not
    stop_reason: str = ""  # a failed trial's outcome, or: batch limit, time budget
    failure: str | None = None  # the error text of the first failed batch
    trials: list[Attempt] = field(default_factory=list)
    predicted_max_batch: int | None = None
    gpu_name: str | None = None  # the card model searched on: one search per model in a pool

    def as_dict(self) -> dict:
        """As stored: flat, the cell's settings (but its batch) beside the search's findings."""
        stored = asdict(self)
        settings = stored.pop("config")
        del settings["batch_size"]
        return {"schema_version": SCHEMA_VERSION, "key": self.config.boundary_key(), **settings,
                **stored}


_DEFAULTS = {**DEFAULTS, **field_defaults(Boundary, leave_out=("config",))}


def read_boundary(raw: dict, where: str) -> dict:
    """A stored boundary at this schema, every key present; NewerSchemaError for a newer one."""
    return upgraded(raw, _DEFAULTS, where)


def find_max_batch(trial: Callable[[int], Attempt], boundary: Boundary, start: int, limit: int,
                   budget_s: float, tolerance: float = 0.05,
                   clock: Callable[[], float] = time.monotonic) -> Boundary:
    """Fill `boundary` from trials, each one step at a batch."""
    deadline = clock() + budget_s

    def run(batch: int) -> bool:
        attempt = trial(batch)
        boundary.trials.append(attempt)
        if attempt.outcome == Outcome.OK:
            boundary.max_ok_batch = batch
            return True
        boundary.first_failed_batch = batch
        boundary.stop_reason = attempt.outcome
        boundary.failure = attempt.error
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
