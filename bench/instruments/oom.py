"""Out-of-memory: recognising it, and backing off from it. The predicate and the policy are apart.

Only an OOM is retried at a smaller batch; anything else ends the cell as an error. A failure at a
huge batch is not always an OOM: `RuntimeError: integer out of range` is a kernel's index limit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from bench.basics.outcome import Attempt, Outcome

# RuntimeError texts that mean the allocator (or a library's own allocation) ran out of memory.
OOM_MESSAGES = (
    "CUDA out of memory",
    "CUDA error: out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    # cuDNN reports a workspace it cannot allocate this way (accelerate treats it as OOM too)
    "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED",
    "DefaultCPUAllocator: can't allocate memory",
    # a DataLoader worker's shared-memory batch: "unable to mmap ... Cannot allocate memory (12)"
    "Cannot allocate memory",
    # oneDNN, when it cannot map memory for a kernel (seen under an 8 MiB CPU cap); huge shapes
    # fail this way too, and a smaller batch is the way out of both
    "could not create a primitive",
)
# Texts of failures that come from a kernel's 32-bit indexing, however much memory is free.
KERNEL_LIMIT_MESSAGES = (
    "integer out of range",
    "canUse32BitIndexMath",
    "exceeds the maximum supported size",
    "must be less than 2^31",
)


def is_oom(exc: BaseException) -> bool:
    """Whether `exc`, or a failure it was raised while handling, ran out of memory: an OOM inside
    a CUDA graph's capture surfaces as the capture's end failing ("operation not permitted when
    stream is capturing"), with the OOM as its context."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if _ran_out(exc):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _ran_out(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in OOM_MESSAGES)


def failure_kind(exc: BaseException) -> Outcome:
    """OOM, KERNEL_LIMIT or ERROR: what a result row says of a failure."""
    if is_oom(exc):
        return Outcome.OOM
    if any(m in str(exc) for m in KERNEL_LIMIT_MESSAGES):
        return Outcome.KERNEL_LIMIT
    return Outcome.ERROR


def one_line(exc: BaseException) -> str:
    """The exception's first line, with its type: what a row and a console can show. The rest of
    a long message (torch.compile's adds how to get its internal stack trace) stays out."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:500]


def halve(batch_size: int, floor: int = 1) -> Iterator[int]:
    """The default backoff: the batch asked for, then half of it, down to `floor`."""
    while batch_size >= floor:
        yield batch_size
        batch_size //= 2


def run_with_backoff(attempt: Callable[[int], object], batch_size: int,
                     release: Callable[[], None], policy=halve):
    """Call `attempt(batch)` for each batch `policy` yields until one does not run out of memory.

    Returns (value or None, attempts). Memory is released after every failure, outside the except
    block: while it runs, the traceback pins the frames and the tensors they hold.
    """
    attempts: list[Attempt] = []
    for batch in policy(batch_size):
        failure = None
        try:
            value = attempt(batch)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a recorded attempt
            failure = Attempt(batch, failure_kind(exc), one_line(exc))
        if failure is None:
            attempts.append(Attempt(batch, Outcome.OK))
            return value, attempts
        attempts.append(failure)
        release()
        if failure.outcome != Outcome.OOM:
            break
    return None, attempts


def status_of(attempts: list[Attempt]) -> Outcome:
    """OK, OOM_BACKED_OFF (fitted at a smaller batch), OOM (even the floor failed) or ERROR."""
    last = attempts[-1]
    if last.outcome == Outcome.OK:
        return Outcome.OK if len(attempts) == 1 else Outcome.OOM_BACKED_OFF
    return Outcome.OOM if last.outcome == Outcome.OOM else Outcome.ERROR
