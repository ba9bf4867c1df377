"""What every cell of a run shares. A module of its own, without torch: a worker process unpickles
its settings before it can ignore Ctrl-C, and importing torch there would widen that window."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """What every cell of a run shares."""

    repeats: int = 5
    min_repeat_s: float = 0.2
    warmup_steps: int = 3
    lr: float = 0.9  # the notebook's
    seed: int = 0
    max_steps_per_repeat: int = 100_000
