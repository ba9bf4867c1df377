"""Words and numbers every floor shares: byte sizes and percentages, the outcome of a cell or an
attempt, the settings every cell of a run shares, and the schema's version and upgrade path.
Imports nothing of bench and nothing heavy (no torch): a worker unpickles Settings before it
can ignore Ctrl-C."""
