"""What a run directory holds and the one reader of it: a row, a boundary search's record, the
environment, where the run's time went, and the store that writes and reads them (strictly for
a resume or a gate, leniently for a report). Imports bench.basics, bench.instruments and
bench.planning."""
