"""What runs the cells: one cell in a worker (with its OOM back-off), the worker process, the
runner that feeds it, the pool of one worker per slot, the session every launcher calls, the
boundary search, and the Slurm launcher. Imports every floor below it: basics, instruments,
planning, records and gates."""
