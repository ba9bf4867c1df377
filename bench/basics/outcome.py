"""The words a cell, a boundary trial or a failed attempt ends with: one enum for all of them.

A member is its word (`Outcome.OK == "ok"`), so rows keep plain strings on disk and a row read
back compares equal to the member without conversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Outcome(str, Enum):
    # a row's status is one of OK, OOM_BACKED_OFF, OOM and ERROR; the others are the finer
    # outcome of an attempt or a trial, which a failed row keeps in `error_kind`
    OK = "ok"
    OOM_BACKED_OFF = "oom_backed_off"  # a cell that trained at a smaller batch than it asked
    OOM = "oom"
    KERNEL_LIMIT = "kernel_limit"  # a kernel's 32-bit index limit, however much memory is free
    ERROR = "error"
    TIMEOUT = "timeout"  # the worker held a cell past its limit and was stopped
    WORKER_DIED = "worker_died"  # a signal, the OOM killer, a sticky CUDA error
    # the Slurm job holding the cell ended first (cancelled, timed out, preempted, failed): not a
    # finding about the cell, so --resume runs it again
    JOB_ENDED = "job_ended"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


# The statuses of a cell that has figures.
TRAINED = frozenset({Outcome.OK, Outcome.OOM_BACKED_OFF})
# Failures that depend on the batch's size, so a smaller batch may train: bisecting narrows them
# down. The kernel's OOM killer ends a worker with SIGKILL: on the CPU that is running out of
# memory too.
SIZE_LIMITS = frozenset({Outcome.OOM, Outcome.KERNEL_LIMIT, Outcome.WORKER_DIED})


@dataclass(frozen=True)
class Attempt:
    """One try of a cell or a boundary trial at one batch."""

    batch_size: int
    outcome: Outcome
    error: str | None = None
