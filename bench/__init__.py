"""The grid runner: measures a model's training speed and memory per cell. Renders nothing.

Its folders are floors; a module imports from its own floor and the floors below it, never
above (tests/test_floors.py holds them to it), and none imports `reports`:

    basics       words and numbers every floor shares: units, outcomes, settings, the schema
    instruments  what measures a cell: timing, statistics, memory, NVML, contention, energy, OOM
    planning     what a run will do and cost: the grid, the models, the memory model, FLOPs and
                 traffic, the cards' peaks, the devices, the plan
    records      what a run directory holds and the one reader of it: rows, boundaries, the
                 environment, where the time went
    gates        what judges two runs: the comparison and the growth check
    series       every run's figures across commits: the store, the steps, the bisection
    execution    what runs the cells: a cell, the worker, the runner, the pool, the session, the
                 boundary search, the Slurm launcher

The modules at the top are the command lines, each a `python -m bench.NAME` (run, compare, ab,
doctor, history, and repeat_server, which `bench.ab` starts in each tree it times, old trees
included), the pytest plugin's entry point (pytest_plugin) and what the command lines share (cli).
The `reports` package sits above every floor and below the command lines: `bench.run` writes its
report.
"""
