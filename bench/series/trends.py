"""What a series says: the steps in its speed and energy, and the growth of its memory, each placed
between two commits, and which of them are regressions among its newest points.

Speed and energy are noisy: they change where bench.series.steps finds a step, fitted to the
points timed on a quiet machine only (a busy point is kept and drawn, never fitted). Memory
figures repeat to the byte: the newest point gates at once on growth past a bound over any of
the points before it among the newest. A cell that trained and now fails is a regression too.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.basics.outcome import TRAINED
from bench.basics.units import format_bytes
from bench.series.database import SeriesPoint
from bench.series.steps import NEWEST, PENALTY_FACTOR, find_steps, noise, regressions_in

SeriesKey = tuple[str, str, str, str]  # machine, card, model, cell


@dataclass(frozen=True)
class Metric:
    name: str  # the Point's field
    words: str
    higher_is_better: bool
    iqr: str | None = None  # the Point's field holding its spread


SPEED = Metric("examples_per_s", "examples/s", True, "examples_per_s_iqr")
ENERGY = Metric("energy_j_per_1000_examples", "J per 1,000 examples", False)
NOISY = (SPEED, ENERGY)


@dataclass(frozen=True)
class Change:
    """A change in a series, between the last point before it and the first after it."""

    series: SeriesKey
    what: str  # the metric's words, "peak memory" or "status"
    before: float | None
    after: float | None
    last_before: SeriesPoint
    first_after: SeriesPoint
    detail: str = ""

    @property
    def size(self) -> float | None:
        if not self.before or self.after is None:
            return None
        return self.after / self.before - 1

    @property
    def within_one_commit(self) -> bool:
        """Both sides ran the same commit: a change of the machine's, not of the code's."""
        a, b = self.last_before.run.commit_id, self.first_after.run.commit_id
        return a is not None and a == b

    def commits(self) -> str:
        """The commit range the change lies in, as git names it."""
        a, b = self.last_before.run.commit_id, self.first_after.run.commit_id
        return f"{(a or 'unknown')[:12]}..{(b or 'unknown')[:12]}"

    def words(self) -> str:
        """What changed, by how much, where and on what evidence."""
        size = "" if self.size is None else f" {self.size:+.1%}"
        return f"{self.what}{size} in {self.commits()} ({self.detail})"

    def line(self) -> str:
        return f"{label(self.series)}: {self.words()}"


def label(series: SeriesKey) -> str:
    machine, card, model, cell = series
    return f"{cell} · {model} · {card} · {machine}"


def timed(points: list[SeriesPoint], metric: Metric) -> list[SeriesPoint]:
    """The points a noisy metric is fitted to: trained, not busy, with the figure."""
    return [p for p in points if p.point.status in TRAINED and not p.point.busy
            and (getattr(p.point, metric.name) or 0) > 0]


def steps(series: SeriesKey, points: list[SeriesPoint], metric: Metric,
          penalty_factor: float = PENALTY_FACTOR, newest: int | None = None,
          min_step: float = 0.0) -> list[Change]:
    """The metric's steps; with `newest`, the regressions among that many newest points."""
    fitted = timed(points, metric)
    values = [getattr(p.point, metric.name) for p in fitted]
    iqrs = [getattr(p.point, metric.iqr) if metric.iqr else None for p in fitted]
    found = find_steps(values, iqrs, penalty_factor) if newest is None else \
        regressions_in(values, iqrs, penalty_factor, metric.higher_is_better, min_step, newest)
    if not found:
        return []
    words = f"noise {noise(values, iqrs):.1%} a point"
    changes = [Change(series, metric.words, step.before, step.after, fitted[step.at - 1],
                      fitted[step.at], f"median {_figure(step.before)} -> "
                                       f"{_figure(step.after)}; {len(fitted) - step.at} points "
                                       f"after; {words}")
               for step in found]
    # a step between two runs of one commit is not a regression: no change of the code made it
    return changes if newest is None else [c for c in changes if not c.within_one_commit]


def _figure(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"


def memory_growth(series: SeriesKey, points: list[SeriesPoint], fraction: float,
                  bytes_: int, newest: int = NEWEST) -> list[Change]:
    """The newest point's peak memory past the bound over the smallest of the points before it
    among the newest (the same figure, trained, busy or not: memory does not care)."""
    measured = [p for p in points if p.point.memory_bytes]
    if len(measured) < 2:
        return []
    latest = measured[-1]
    earlier = [i for i in range(max(0, len(measured) - newest - 1), len(measured) - 1)
               if measured[i].point.memory_field == latest.point.memory_field]
    if not earlier:
        return []
    # the latest of the smallest: the growth lies after it
    low = min(reversed(earlier), key=lambda i: measured[i].point.memory_bytes)
    before, after = measured[low].point.memory_bytes, latest.point.memory_bytes
    bound = max(fraction * before, bytes_)
    if after - before <= bound:
        return []
    # the growth lies before the first point past the bound
    first = next(i for i in range(low + 1, len(measured))
                 if measured[i].point.memory_bytes - before > bound)
    return [Change(series, "peak memory", before, after, measured[first - 1], measured[first],
                   f"{format_bytes(before)} -> {format_bytes(after)} "
                   f"({latest.point.memory_field})")]


def stopped_training(series: SeriesKey, points: list[SeriesPoint]) -> list[Change]:
    """The newest point failed where the one before it trained."""
    if len(points) < 2 or points[-1].point.status in TRAINED or \
            points[-2].point.status not in TRAINED:
        return []
    return [Change(series, "status", None, None, points[-2], points[-1],
                   f"trained before, now {points[-1].point.status}")]


def regressions(series: SeriesKey, points: list[SeriesPoint], min_step: float,
                memory_fraction: float, memory_bytes: int, newest: int = NEWEST,
                penalty_factor: float = PENALTY_FACTOR) -> list[Change]:
    """Everything that got worse among the series' `newest` points."""
    return [*stopped_training(series, points),
            *memory_growth(series, points, memory_fraction, memory_bytes, newest),
            *(change for metric in NOISY for change in
              steps(series, points, metric, penalty_factor, newest, min_step))]
