"""Jobs from one queue, run by one worker per slot (bench.planning.devices); only the caller writes.

Each slot's Runner lives in a thread that waits on its worker's pipe. What a thread finishes goes
back on a queue that the caller's thread reads, so the caller stays the one writer (a `kill -9`
costs at most the cells in flight) and the one that signals reach: when it stops, for Ctrl-C,
SIGTERM or a failed write, the workers are killed and what they were running is not recorded.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Hashable
from typing import Any

from bench.execution.runner import Runner


class Pool:
    """Runners, each with a group: a job goes to a runner of its group, or to any where it has
    none (a boundary search runs once per GPU model, a cell on whichever card is free)."""

    def __init__(self, runners: list[Runner], groups: list[Hashable]):
        self.runners, self.groups = runners, groups

    def run(self, jobs: list[Any], work: Callable[[Runner, Any], Any],
            on_done: Callable[[Any, Any], None],
            group_of: Callable[[Any], Hashable | None] = lambda job: None) -> None:
        """work(runner, job) in the runners' threads; on_done(job, result) in this one, as each
        finishes. Raises what work or on_done raised, and what stopped this thread, having
        killed the workers."""
        queues: dict[Hashable | None, queue.SimpleQueue] = {}
        for job in jobs:
            queues.setdefault(group_of(job), queue.SimpleQueue()).put(job)
        finished: queue.SimpleQueue = queue.SimpleQueue()
        stop = threading.Event()

        def serve(runner: Runner, own: list[queue.SimpleQueue]) -> None:
            for source in own:
                while not stop.is_set():
                    try:
                        job = source.get_nowait()
                    except queue.Empty:
                        break
                    try:
                        finished.put((job, work(runner, job)))
                    except BaseException as exc:  # noqa: BLE001 - the caller raises it
                        finished.put((job, exc))
                        return

        threads = []
        for runner, group in zip(self.runners, self.groups):
            own = [q for g, q in queues.items() if g is None or g == group]
            if own:
                threads.append(threading.Thread(target=serve, args=(runner, own), daemon=True))
        unserved = [g for g in queues if g is not None and g not in self.groups]
        if unserved:
            raise ValueError(f"no runner for group {unserved[0]!r}")
        for thread in threads:
            thread.start()
        done = False
        try:
            for _ in jobs:
                job, result = _next(finished, threads)
                if isinstance(result, BaseException):
                    raise result
                on_done(job, result)
            done = True
        finally:
            stop.set()
            if not done:
                for runner in self.runners:
                    runner.kill_worker()
            for thread in threads:
                thread.join(timeout=None if done else 10)


def _next(finished: queue.SimpleQueue, threads: list[threading.Thread]):
    while True:
        try:
            # a short wait at a time: the signal handlers run in this thread between waits
            return finished.get(timeout=0.2)
        except queue.Empty:
            if not any(t.is_alive() for t in threads) and finished.empty():
                raise RuntimeError("every worker thread ended with jobs left") from None
