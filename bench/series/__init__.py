"""Every run's figures across commits: the points a run directory or a pytest-benchmark file
gives, the store that keeps them (SQLite or PostgreSQL), and the change points found in each
series. Imports bench.basics, bench.instruments, bench.planning, bench.records and bench.gates
(the one reader of a run directory or a pytest-benchmark file), nothing above."""
