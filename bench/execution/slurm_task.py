"""The function each Slurm array task starts in, light to import on purpose.

submitit unpickles the submitted function (importing its module) before it handles any signal,
and Slurm sends the warning signal it asks for (SIGUSR2) up to a minute earlier than asked. A
task whose function lived in a module that imports torch could take that signal while still
importing, and die of it (exit 140, reported FAILED) instead of running on to its limit
(TIMEOUT, with every finished row on disk). Here the signal is ignored before anything heavy is
imported.
"""

from __future__ import annotations

import signal


def task(run_dir: str, keys: list[str], boundaries: bool) -> int:
    """bench.execution.slurm.run_task, with Slurm's warning signal ignored first: a cell cannot
    stop mid-way, so the task runs on and Slurm ends it at its limit."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    from bench.execution.slurm import run_task

    return run_task(run_dir, keys, boundaries)
