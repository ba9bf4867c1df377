"""The one place a plan and its slots become measured rows and boundary searches, for every
launcher: the local run (bench.run: the lock, results.jsonl, the signals) and each Slurm array task
(bench.execution.slurm: a part file of its own) call it alike.

A session builds the worker spec from the plan, one Runner per slot and a Pool grouped by card
model; it gives each cell its prediction, applies one budget rule to the boundary searches, hands
every row and boundary to the launcher's sink as it finishes, and retires the workers however it
ends. The workers stamp what they built (the model's fingerprint) and the runners where they ran.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import replace

from bench.basics.outcome import Outcome
from bench.execution import ahead
from bench.execution.boundary_search import find_max_batch
from bench.execution.cell import AheadCompile, CellResult
from bench.execution.pool import Pool
from bench.execution.runner import Runner, Stamps
from bench.execution.worker import WorkerSpec
from bench.instruments.energy import NO_TIMED_WINDOW
from bench.instruments.oom import status_of
from bench.planning import devices as placing
from bench.planning import plan as planning
from bench.planning.flops import counted, traffic_of
from bench.planning.grid import Config
from bench.planning.models import resolve
from bench.planning.plan_file import Plan
from bench.planning.predict import boundary_batch, prediction_method, unmodelled
from bench.records.boundary import Boundary
from bench.records.row import Row
from lenet.modes import implementation


class Session:
    """Workers for a plan's cells on `slots`, from one queue; close it (or use `with`)."""

    def __init__(self, plan: Plan, slots: list[placing.Slot], capacity: int | None,
                 threads: int | None = None, labels: dict | None = None):
        # threads: torch's threads per worker where not one per bound core (a Slurm task's
        # CPUs); labels: row fields every row gets (its job)
        self.plan, self.capacity = plan, capacity
        self.cells = list(plan.cells)
        spec = WorkerSpec(plan.device, plan.data, plan.data_root, plan.settings,
                          plan.memory_cap_bytes, plan.model.name, plan.input_shape,
                          threads=threads, model_fingerprint=plan.model.fingerprint)
        self.runners = [Runner(replace(spec, device=slot.device,
                                       visible_devices=slot.visible_devices,
                                       cpu_cores=slot.cpu_cores),
                               slot.gpu_index, plan.cell_timeout_s,
                               {**placing.where(slot), **(labels or {})})
                        for slot in slots]
        self.card_models = [r.where["gpu_name"] for r in self.runners]
        self.pool = Pool(self.runners, [model or "cpu" for model in self.card_models])
        self._planned = {row.config.key(): row for row in planning.plan_rows(
            self.cells, capacity, plan.memory_cap_bytes is not None)}
        # per boundary and card model, (batch, examples/s) of its largest cell that trained here:
        # what a boundary trial will cost (two pool threads racing may lose one; it is a guide)
        self._measured: dict[tuple[str, str | None], tuple[int, float]] = {}
        self._ahead: dict[str, AheadCompile] = {}  # by cell key: what compile_ahead found
        # one model and input shape a run, counted on fake tensors before any cell runs: not in
        # the parent while a sibling worker is timing a cell, nor twice from two pool threads
        model = resolve(plan.model.name, plan.input_shape)
        self.flops_per_example = counted(model)
        self.traffic = {key: traffic_of(model, *key)
                        for key in dict.fromkeys(_traffic_key(c) for c in self.cells)}

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Retire every worker: each finishes what it holds, then exits."""
        for runner in self.runners:
            runner.retire_worker()

    def ahead_processes(self, cells: list[Config],
                        requested: int | None) -> tuple[list[Config], int, str | None]:
        """The cells whose graphs `compile_ahead` would compile, in how many processes, and
        why in no more or none (bench.execution.ahead.processes_for): they compile where the
        first slot's cells run, so on its card."""
        todo = ahead.ahead_cells(cells)
        cores = ahead.usable_cores()
        if not todo or requested == 0:  # nothing compiles ahead: no memory to read
            return (todo, *ahead.processes_for(len(todo), cores, requested))
        rooms = ahead.rooms_for(todo, *ahead.free_bytes(self.runners[0].cuda_index))
        return (todo, *ahead.processes_for(len(todo), cores, requested, rooms))

    def compile_ahead(self, cells: list[Config], processes: int,
                      done: Callable[[Config, AheadCompile], None] = lambda *_: None) -> None:
        """Compile `cells`' graphs side by side before any is measured; each cell's row then
        carries its cold compile beside its own warm setup."""
        def keep(config: Config, compiled: AheadCompile) -> None:
            self._ahead[config.key()] = compiled
            done(config, compiled)

        ahead.compile_all(self.runners[0], cells, processes, keep)

    def measure(self, cells: Iterable[Config], sink: Callable[[Config, Row], None]) -> None:
        """Run `cells`, each on whichever worker is free, handing each row to `sink`."""
        def cell(runner: Runner, config: Config) -> Row:
            planned = self._planned[config.key()]
            result, stamps = runner.cell(config)
            row = build_row(result, replace(
                stamps, predicted_peak_bytes=planned.predicted_peak_bytes,
                prediction_note=planned.prediction_note,
                flops_per_example=self.flops_per_example,
                traffic=self.traffic[_traffic_key(config)], ahead=self._ahead.get(config.key())))
            if row.examples_per_s:
                key = (config.boundary_key(), row.gpu_name)
                self._measured[key] = max(self._measured.get(key, (0, 0.0)),
                                          (row.batch_size, row.examples_per_s))
            return row

        self.pool.run(list(cells), cell, sink)

    def boundary_jobs(self, done: set[tuple[str, str | None]]) -> list[tuple[Config, str | None]]:
        """The searches still to run here: one per boundary and card model (None on the CPU)."""
        return boundary_jobs(self.cells, self.card_models, done)

    def search_boundaries(self, jobs: list[tuple[Config, str | None]],
                          sink: Callable[[tuple[Config, str | None], Boundary], None]) -> None:
        """One search per job, each card model's on its own cards. The plan's budget is wall
        time for them all: searches side by side on several workers each get a worker's share
        of it, and never more than the whole."""
        if not jobs:
            return
        budget_s = min(self.plan.boundary_budget_s,
                       self.plan.boundary_budget_s * len(self.runners) / len(jobs))
        self.pool.run(jobs, lambda runner, job: self._search(runner, job, budget_s), sink,
                      group_of=lambda job: job[1] or "cpu")

    def _search(self, runner: Runner, job: tuple[Config, str | None],
                budget_s: float) -> Boundary:
        config, gpu_name = job
        predicted = (boundary_batch(config, self.capacity, self.plan.memory_cap_bytes is not None)
                     if self.capacity and not unmodelled(config) else None)
        boundary = Boundary(config, predicted_max_batch=predicted, gpu_name=gpu_name,
                            prediction=None if predicted is None else prediction_method(config))
        measured = self._measured.get((config.boundary_key(), gpu_name))
        if measured is None:  # the search times its own trials: their steps, not a start
            runner.start_worker()
        began = time.monotonic()
        find_max_batch(lambda batch: runner.trial(replace(config, batch_size=batch), batch),
                       boundary, min(c.batch_size for c in self.cells),
                       self.plan.boundary_limit, budget_s,
                       step_s=None if measured is None else lambda batch: batch / measured[1])
        boundary.search_s = time.monotonic() - began
        return boundary


def _traffic_key(config: Config) -> tuple[str, str]:
    """What a cell's step traffic depends on: its dtype, and the SGD implementation its device
    runs (a loop of adds on the CPU, one multi-tensor add on a GPU, one kernel fused)."""
    return config.dtype, implementation(config.optimizer, config.device)


def boundary_jobs(cells: list[Config], card_models: list[str | None],
                  done: set[tuple[str, str | None]]) -> list[tuple[Config, str | None]]:
    """The searches still to run: one per boundary of `cells` and card model (None on the CPU),
    less those `done` holds as (boundary key, card model)."""
    return [(c, m) for m in dict.fromkeys(card_models) for c in planning.boundary_configs(cells)
            if (c.boundary_key(), m) not in done]


def build_row(result: CellResult, stamps: Stamps | None = None) -> Row:
    """The one place a cell's row is made: from what its worker measured and what the parent
    knows of it (none: a cell measured in this process, as tests do)."""
    stamps = stamps or Stamps()
    config = result.config
    last = result.attempts[-1]
    trained = last.outcome == Outcome.OK
    measured, card, baseline = result.measured, result.card, stamps.baseline
    compiled = stamps.ahead or AheadCompile(None, None)  # none: compiled in its own setup
    figures = {"energy_note": NO_TIMED_WINDOW}
    if measured is not None:
        energy, peaks = measured.energy, measured.peaks
        # Linux keeps RSS in per-thread counters it folds in lazily, so a high-water mark read
        # later can land a few pages under the RSS read at the reset: the peak is at least that
        peak_rss = peaks.cpu_peak_rss_bytes
        figures = {
            **measured.measurement.summary(), "contention": measured.contention,
            "setup_s": measured.setup_s, "sizing_s": measured.sizing_s,
            "compile_cache": measured.compile_cache,
            "launch_us": None if measured.launch_s is None else measured.launch_s * 1e6,
            "energy_j_per_1000_examples": energy.per_1000_examples_j(
                measured.measurement.examples),
            "mean_power_w": energy.mean_power_w, "energy_window_s": energy.window_s,
            "energy_method": energy.method, "energy_note": energy.note,
            "peak_allocated_bytes": peaks.peak_allocated_bytes,
            "peak_reserved_bytes": peaks.peak_reserved_bytes,
            "cpu_peak_rss_bytes": None if peak_rss is None
            else max(peak_rss, measured.start_rss_bytes or 0),
            "cpu_baseline_rss_bytes": measured.start_rss_bytes,
            "tracked_peak_bytes": measured.tracked_peak_bytes,
            "loss_first": measured.loss_first, "loss_last": measured.loss_last}
    return Row(
        result.config, result.data_source, status_of(result.attempts),
        batch_size=last.batch_size if trained else None,
        error_kind=None if trained else last.outcome, error=None if trained else last.error,
        attempts=result.attempts, started_at=result.started_at, wall_s=result.wall_s,
        **figures,
        nvml_total_bytes=baseline.total_bytes,
        nvml_driver_reserved_bytes=baseline.driver_reserved_bytes,
        nvml_baseline_used_bytes=baseline.used_bytes,
        nvml_peak_used_bytes=card.peak_used_bytes if card else None,
        nvml_process_used_bytes=card.process_used_bytes if card else None,
        nvml_note=(card.note if card else None) or baseline.note,
        predicted_peak_bytes=stamps.predicted_peak_bytes,
        prediction_note=stamps.prediction_note, flops_per_example=stamps.flops_per_example,
        # K replicas move K models' traffic; stacked by vmap they run one set of operators
        step_traffic_bytes=stamps.traffic.bytes_at(last.batch_size) * config.replicas
        if stamps.traffic and trained else None,
        step_operators=stamps.traffic.operators * (
            config.replicas if config.replica_method == "streams" else 1)
        if stamps.traffic else None,
        memory_cap_bytes=stamps.memory_cap_bytes,
        compile_ahead_s=compiled.seconds, compile_ahead_cache=compiled.cache,
        compile_ahead_error=compiled.error,
        model_fingerprint=stamps.model_fingerprint, worker_start_s=stamps.worker_start_s,
        data_load_s=stamps.data_load_s, **stamps.where)
