"""The OOM boundary: the largest batch that trains, per dtype and layout.

Bracket the boundary, then bisect between the last batch that worked and the first that failed
until they are within 1% of each other. The bracket starts at the memory model's predicted
boundary (5% past it, then 2x, 4x... away from it, up or down, until the outcome turns); where
there is no prediction (graph mode, a model that refuses the fake-tensor trace) it doubles from
the grid's smallest batch, as it does where the prediction lies past the grid's batch limit. The
search also stops at the batch limit (the grid's cap) or when its time budget is spent, and says
which. Each trial is one training step.

Where the cells measured how fast a step runs (`step_s`: seconds for one step at a batch), the
search never starts a trial that would end past its budget, and a search that memory will not
end (no prediction, or one past the limit: the CPU's searches) starts doubling at the largest
batch half its budget affords rather than at the grid's smallest: the limit itself, in one trial,
where it is in reach. Where no cell measured it (a Slurm task that only searches), the search
times its own trials: it climbs from the grid's smallest batch by doubling until they say a
trial at the prediction ends within the budget, so a prediction in the host's memory (358,702
on the CPU) does not start a step of minutes under a budget of seconds.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable

from bench.basics.outcome import SIZE_LIMITS, Attempt, Outcome
from bench.records.boundary import Boundary

TOLERANCE = 0.01  # the search ends when the last batch that trained is within 1% of the first
# that did not


def find_max_batch(trial: Callable[[int], Attempt], boundary: Boundary, start: int, limit: int,
                   budget_s: float, tolerance: float = TOLERANCE,
                   clock: Callable[[], float] = time.monotonic,
                   step_s: Callable[[int], float] | None = None) -> Boundary:
    """Fill `boundary` from trials, each one step at a batch: bracket the boundary from its
    prediction where there is one, else by doubling from `start` (or the largest batch the
    budget affords, given `step_s`), then bisect."""
    deadline = clock() + budget_s
    trained: list[tuple[int, float]] = []  # this search's trials that trained: (batch, seconds)

    def run(batch: int) -> bool:
        began = clock()
        attempt = trial(batch)
        boundary.trials.append(attempt)
        if attempt.outcome == Outcome.OK:
            boundary.max_ok_batch = batch
            trained.append((batch, clock() - began))
            return True
        boundary.first_failed_batch = batch
        boundary.stop_reason = attempt.outcome
        boundary.failure = attempt.error
        return False

    def cost_s(batch: int) -> float | None:
        """What a trial at `batch` will take: from the cells' step times where known, else
        scaled from this search's largest trial that trained (its worker's set-up included,
        so an overestimate that shrinks as the trials grow); None before any trial."""
        if step_s:
            return step_s(batch)
        if not trained:
            return None
        largest, seconds = max(trained)
        return seconds * batch / largest

    def out_of_time(batch: int) -> bool:
        """Whether a trial at `batch` would end past the budget (or the budget is spent)."""
        return clock() + (cost_s(batch) or 0.0) > deadline

    # a prediction past the limit says memory will not end the search; the limit may still be
    # out of reach in the budget (on the CPU a step at 65,536 can take a minute), so double
    seeded = boundary.predicted_max_batch and boundary.predicted_max_batch < limit
    if seeded:
        # where no cell says what a step costs (a Slurm task that only searches), a trial at
        # the prediction could outrun the budget many times over: climb to it by doubling,
        # timing each trial, until the prediction is affordable or memory ends it sooner
        climbed = None if step_s else _climb(boundary, run, out_of_time, cost_s, start)
        bracketed = climbed if climbed is not None else \
            _from_prediction(boundary, run, out_of_time, limit)
    else:
        affordable = _affordable(start, limit, step_s, budget_s / 2) if step_s else start
        bracketed = _by_doubling(boundary, run, out_of_time, affordable, limit)
    if not bracketed:
        return boundary
    low, high = boundary.max_ok_batch or 0, boundary.first_failed_batch
    while high - low > max(1, tolerance * low):  # narrow
        middle = (low + high) // 2
        if out_of_time(middle):
            boundary.stop_reason += ", then the time budget"
            return boundary
        if run(middle):
            low = middle
        else:
            high = middle
    return boundary


def _affordable(start: int, limit: int, step_s: Callable[[int], float], seconds: float) -> int:
    """The largest of start, 2 x start, 4 x start ... and the limit whose step fits `seconds`;
    `start` where none does."""
    ladder = [start * 2**k for k in range(max(0, (limit // start).bit_length()))
              if start * 2**k < limit] + [limit]
    return max((b for b in ladder if step_s(b) <= seconds), default=start)


def _climb(boundary: Boundary, run, out_of_time, cost_s, start: int) -> bool | None:
    """Double from `start` toward the predicted batch while the trials so far say a trial at
    the prediction would not end within the budget. None when the prediction is affordable (or
    reached), else whether a bisection should follow: True where a climbing trial ran out of
    memory, False where the budget or another failure stopped it."""
    predicted, batch = boundary.predicted_max_batch, start
    while batch < predicted and (cost_s(predicted) is None or out_of_time(predicted)):
        if out_of_time(batch):
            boundary.stop_reason = "time budget"
            return False
        if not run(batch):
            return boundary.stop_reason in SIZE_LIMITS
        batch *= 2
    return None


def _by_doubling(boundary: Boundary, run, out_of_time, start: int, limit: int) -> bool:
    """Double from `start` until a step fails. True when a bisection should follow."""
    batch = start
    while True:
        if out_of_time(batch):
            boundary.stop_reason = "time budget"
            return False
        if not run(batch):
            return boundary.stop_reason in SIZE_LIMITS
        if batch >= limit:
            boundary.stop_reason = "batch limit"
            return False
        batch = min(batch * 2, limit)


def _from_prediction(boundary: Boundary, run, out_of_time, limit: int) -> bool:
    """Try the predicted batch, then 5% beyond it, then twice, four times... as far from it (up
    where it trained, down where it did not) until the outcome turns. A prediction within 5%
    brackets the boundary in two trials; one off by 2x costs three or four. True when a
    bisection should follow."""
    predicted = boundary.predicted_max_batch
    grows, last = None, None  # grows: the prediction trained, so the search goes up
    factors = itertools.chain((1.0, 1.05), (2.0**k for k in itertools.count(1)))
    while True:  # ends at a return: the outcome turns, batch 1 fails, a limit is reached
        factor = next(factors)
        if grows is None:
            batch = predicted
        elif grows:
            batch = min(math.ceil(predicted * factor), limit)
        else:
            batch = math.floor(predicted / factor)
        if batch == last:
            continue
        if batch < 1:
            return False  # even batch 1 did not train
        if out_of_time(batch):
            boundary.stop_reason = "time budget"
            return False
        fits, last = run(batch), batch
        if not fits and boundary.stop_reason not in SIZE_LIMITS:
            return False  # an error or a timeout: a smaller batch would not say where memory ends
        if fits and batch >= limit:
            boundary.stop_reason = "batch limit"
            return False
        if grows is None:
            grows = fits
        elif fits != grows:
            return True
