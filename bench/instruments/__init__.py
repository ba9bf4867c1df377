"""What measures a cell: timing on a device that runs ahead of Python, the repeat statistics,
the allocator's and the tracked memory, NVML's readings, other processes on the card, energy,
and OOM detection and back-off. Imports bench.basics only."""
