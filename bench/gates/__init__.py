"""What judges two runs: the cell-by-cell comparison `bench.compare` gates on and the report's
comparison page shows, and the one check of a figure that grew past its bound. Imports
bench.basics, bench.instruments, bench.planning and bench.records (the run directory's reader),
and no floor above: a gate reads what was measured and runs nothing."""
