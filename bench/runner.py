"""The parent's side of the worker: feeds it cells and boundary trials, records what a dead or
stuck worker cost, and replaces a worker that died or kept memory."""

from __future__ import annotations

from bench.energy import NO_TIMED_WINDOW
from bench.grid import Config
from bench.nvml import NvmlReader, NvmlUnavailable
from bench.outcome import Attempt, Outcome
from bench.row import Row
from bench.worker import Worker, WorkerDied, WorkerSpec


class Runner:
    """Feeds cells to a worker, replacing it when it dies or holds on to memory."""

    def __init__(self, spec: WorkerSpec, cuda_index: int | None, timeout_s: float | None = None,
                 where: dict | None = None):
        # cuda_index: the card in this process's numbering, for NVML; `where`: the row fields
        # that say where the cells ran (bench.devices.where)
        self.spec, self.cuda_index, self.timeout_s = spec, cuda_index, timeout_s
        self.where = where or {}
        self.worker: Worker | None = None
        self.nvml_before: dict = {}
        self.model_fingerprint: str | None = None  # what the latest worker built

    def _nvml_snapshot(self) -> dict:
        """Device-wide memory before the worker's CUDA context exists: the baseline."""
        if self.cuda_index is None:
            return {"nvml_note": "no GPU"}
        try:
            with NvmlReader(self.cuda_index) as reader:
                info = reader.memory()
        except NvmlUnavailable as exc:
            return {"nvml_note": str(exc)}
        return {"nvml_total_bytes": info.total_bytes,
                "nvml_driver_reserved_bytes": info.reserved_bytes,
                "nvml_baseline_used_bytes": info.used_bytes}

    def _ensure_worker(self) -> Worker:
        if self.worker is None:
            self.nvml_before = self._nvml_snapshot()
            # the cell's time limit covers the worker's start: a worker stopped while starting
            # holds the cell no longer than one that stops while training
            self.model_fingerprint = None
            self.worker = Worker(self.spec, start_timeout_s=self.timeout_s or 300)
            self.model_fingerprint = self.worker.model_fingerprint
        return self.worker

    def retire_worker(self) -> None:
        """Close the worker between cells: it finishes what it holds, then exits."""
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    def kill_worker(self) -> None:
        """Stop the worker now, mid-cell: the run is being stopped."""
        if self.worker is not None:
            self.worker.kill()
            self.worker = None

    def cell(self, config: Config, predicted: int | None,
             prediction_note: str | None = None) -> Row:
        try:
            started = self.worker is None  # this cell needs a worker: it carries the start
            worker = self._ensure_worker()
            row, healthy = worker.cell(config, self.timeout_s)
            if started:
                row.worker_start_s, row.data_load_s = worker.start_s, worker.data_load_s
        except WorkerDied as exc:
            self.worker = None
            row, healthy = _failed_row(config, self.spec.data, exc.kind, str(exc)), True
        except RuntimeError as exc:
            self.retire_worker()
            row, healthy = _failed_row(config, self.spec.data, Outcome.ERROR, str(exc)), True
        for name, value in self.nvml_before.items():
            if getattr(row, name) is None:
                setattr(row, name, value)
        row.predicted_peak_bytes, row.prediction_note = predicted, prediction_note
        row.memory_cap_bytes = self.spec.memory_cap_bytes
        row.model_fingerprint = self.model_fingerprint  # None where no worker built the model
        for name, value in self.where.items():
            setattr(row, name, value)
        # memory that did not come back, or a CUDA error that may be sticky: start afresh
        if not healthy or (row.status == Outcome.ERROR and config.device.startswith("cuda")):
            self.retire_worker()
        return row

    def trial(self, config: Config, batch_size: int) -> Attempt:
        """One boundary trial; a trial that fails for any reason is a finding, never a crash."""
        try:
            trial = self._ensure_worker().trial(config, batch_size, self.timeout_s)
        except WorkerDied as exc:
            self.worker = None
            return Attempt(batch_size, exc.kind, str(exc))
        except RuntimeError as exc:  # a worker that could not start, or a handler that raised
            self.retire_worker()
            return Attempt(batch_size, Outcome.ERROR, str(exc)[-2000:])
        if not trial.healthy or trial.attempt.outcome == Outcome.ERROR:
            self.retire_worker()
        return trial.attempt


def _failed_row(config: Config, data: str, kind: Outcome, error: str) -> Row:
    return Row(config, data, Outcome.ERROR, error_kind=kind, error=error[-2000:],
               attempts=[Attempt(config.batch_size, kind, error)],
               energy_note=NO_TIMED_WINDOW)
