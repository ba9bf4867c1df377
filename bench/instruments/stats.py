"""A measurement keeps its raw repeat times and derives the rest: median, IQR, noisy or not."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

NOISY_IQR_FRACTION = 0.05  # a cell whose spread is over 5% of its median is flagged


@dataclass(frozen=True)
class Measurement:
    repeat_s: tuple[float, ...]  # wall time of each repeat
    steps_per_repeat: int
    examples_per_step: int  # the batch, times the models a step trains (bench.planning.grid)

    @property
    def examples(self) -> int:
        """Every timed example, over all repeats."""
        return self.steps_per_repeat * self.examples_per_step * len(self.repeat_s)

    @property
    def examples_per_s(self) -> list[float]:
        per_repeat = self.steps_per_repeat * self.examples_per_step
        return [per_repeat / t for t in self.repeat_s]

    @property
    def examples_per_s_median(self) -> float:
        return statistics.median(self.examples_per_s)

    @property
    def examples_per_s_iqr(self) -> float:
        if len(self.repeat_s) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.examples_per_s, n=4, method="inclusive")
        return q3 - q1

    @property
    def step_ms_median(self) -> float:
        return statistics.median(self.repeat_s) / self.steps_per_repeat * 1e3

    @property
    def noisy(self) -> bool:
        return self.examples_per_s_iqr > NOISY_IQR_FRACTION * self.examples_per_s_median

    def summary(self) -> dict:
        """The figures a result row stores, by the row's names for them."""
        return {"examples_per_s": self.examples_per_s_median,
                "examples_per_s_iqr": self.examples_per_s_iqr, "noisy": self.noisy,
                "step_ms_median": self.step_ms_median, "repeats": len(self.repeat_s),
                "steps_per_repeat": self.steps_per_repeat, "repeat_s": list(self.repeat_s)}
