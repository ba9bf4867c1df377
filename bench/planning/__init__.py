"""What a run will do and what a cell will cost before it runs: the grid and its axes, the
models, the memory model, a step's FLOPs and memory traffic, the cards' peaks, the devices a
run's workers use, and the plan (plan.json's typed form, and how a request becomes one).
Imports bench.basics and bench.instruments."""
