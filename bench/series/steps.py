"""Steps in a noisy series: where its level changed, and by how much.

The series is taken relative to its median and fitted piecewise-constant by PELT (ruptures,
least squares), whose penalty for one more step is PENALTY_FACTOR x sigma^2 x ln(n): sigma is
the series' own noise, the larger of two figures, the robust spread of its point-to-point
differences (a step moves one difference; the median of their deviations ignores it) and the
spread its points' own IQRs give. A series of fewer than MIN_POINTS points has no steps: the
noise of so few is not known well enough to tell a step from it. A segment has at least
MIN_SEGMENT points, so a step is seen
once that many points follow it. tests/benchmarks/change_point_study.py measures how often a
planted step is caught, and how often noise alone is called a step, for these constants.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np
import ruptures

PENALTY_FACTOR = 8.0
MIN_SEGMENT = 2
MIN_POINTS = 6
NORMAL_MAD = 1.4826  # a normal sample's standard deviation over its median absolute deviation
NORMAL_IQR = 1.349  # a normal sample's IQR over its standard deviation


@dataclass(frozen=True)
class Step:
    at: int  # the first point after the step, an index into the values searched
    before: float  # the median of the segment before it
    after: float  # and of the one after

    @property
    def size(self) -> float:
        """The change as a fraction of the level before: -0.1 is 10% lower."""
        return self.after / self.before - 1


def noise(values: list[float], iqrs: list[float | None] | None = None) -> float:
    """The series' noise as a fraction of its level (see the module's docstring)."""
    level = statistics.median(values)
    relative = [v / level for v in values]
    differences = [b - a for a, b in zip(relative, relative[1:])]
    spread = 0.0
    if len(differences) >= 2:
        centre = statistics.median(differences)
        spread = NORMAL_MAD * statistics.median(abs(d - centre) for d in differences) / \
            math.sqrt(2)  # a difference of two points has twice a point's variance
    own = [iqr / v for iqr, v in zip(iqrs or [], values) if iqr is not None and v > 0]
    within = statistics.median(own) / NORMAL_IQR if own else 0.0
    return max(spread, within, 1e-6)


def find_steps(values: list[float], iqrs: list[float | None] | None = None,
               penalty_factor: float = PENALTY_FACTOR) -> list[Step]:
    """The steps in `values` (positive figures in commit order), oldest first."""
    if len(values) < MIN_POINTS:
        return []
    level = statistics.median(values)
    signal = np.array([v / level for v in values]).reshape(-1, 1)
    sigma = noise(values, iqrs)
    penalty = penalty_factor * sigma**2 * math.log(len(values))
    ends = ruptures.Pelt(model="l2", min_size=MIN_SEGMENT, jump=1).fit(signal).predict(
        pen=penalty)
    starts = [0, *ends[:-1]]
    segments = [values[a:b] for a, b in zip(starts, ends)]
    return [Step(at, statistics.median(before), statistics.median(after))
            for at, before, after in zip(ends[:-1], segments, segments[1:])]


# a step among a series' newest 3 points is news (a check fails on it); older ones are history.
# A noisier machine sees a step later: a check there looks further back (check --newest).
NEWEST = 3


def regressions_in(values: list[float], iqrs: list[float | None] | None = None,
                   penalty_factor: float = PENALTY_FACTOR, higher_is_better: bool = True,
                   min_step: float = 0.0, newest: int = NEWEST) -> list[Step]:
    """The steps among the newest points that made the figure worse by at least `min_step`."""
    return [step for step in find_steps(values, iqrs, penalty_factor)
            if step.at >= len(values) - newest and abs(step.size) >= min_step
            and (step.size < 0) == higher_is_better]
