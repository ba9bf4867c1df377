"""The parent's side of the worker: feeds it cells and boundary trials, records what a dead or
stuck worker cost, and replaces a worker that died or kept memory."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.basics.outcome import Attempt, Outcome
from bench.execution.cell import AheadCompile, CellResult
from bench.execution.worker import Worker, WorkerDied, WorkerSpec
from bench.instruments.nvml import NvmlReader, NvmlUnavailable
from bench.instruments.oom import status_of
from bench.planning.flops import StepTraffic
from bench.planning.grid import Config


@dataclass(frozen=True)
class Baseline:
    """The card's memory before the worker's CUDA context existed, or why it is not known."""

    total_bytes: int | None = None
    driver_reserved_bytes: int | None = None
    used_bytes: int | None = None
    note: str | None = None


@dataclass(frozen=True)
class Stamps:
    """What the parent knows of a cell that its worker does not: the prediction, the cap, the
    model the worker built, what starting it cost, the card before it, and where it ran."""

    predicted_peak_bytes: int | None = None
    prediction_note: str | None = None
    flops_per_example: int | None = None
    traffic: StepTraffic | None = None  # the cell's dtype's; taken at the batch it trained at
    memory_cap_bytes: int | None = None
    model_fingerprint: str | None = None  # None where no worker built the model
    worker_start_s: float | None = None  # where this cell started its worker
    data_load_s: float | None = None
    baseline: Baseline = Baseline()
    ahead: AheadCompile | None = None  # the cell's graphs compiled ahead (bench.execution.ahead)
    # bench.planning.devices.where, and labels such as the job
    where: dict = field(default_factory=dict)


class Runner:
    """Feeds cells to a worker, replacing it when it dies or holds on to memory."""

    def __init__(self, spec: WorkerSpec, cuda_index: int | None, timeout_s: float | None = None,
                 where: dict | None = None):
        # cuda_index: the card in this process's numbering, for NVML; `where`: the row fields
        # that say where the cells ran (bench.planning.devices.where)
        self.spec, self.cuda_index, self.timeout_s = spec, cuda_index, timeout_s
        self.where = where or {}
        self.worker: Worker | None = None
        self.baseline = Baseline()
        self.model_fingerprint: str | None = None  # what the latest worker built

    def _nvml_snapshot(self) -> Baseline:
        """Device-wide memory before the worker's CUDA context exists: the baseline."""
        if self.cuda_index is None:
            return Baseline(note="no GPU")
        try:
            with NvmlReader(self.cuda_index) as reader:
                info = reader.memory()
        except NvmlUnavailable as exc:
            return Baseline(note=str(exc))
        return Baseline(info.total_bytes, info.reserved_bytes, info.used_bytes)

    def _ensure_worker(self) -> Worker:
        if self.worker is None:
            self.baseline = self._nvml_snapshot()
            # the cell's time limit covers the worker's start: a worker stopped while starting
            # holds the cell no longer than one that stops while training
            self.model_fingerprint = None
            self.worker = Worker(self.spec, start_timeout_s=self.timeout_s or 300)
            self.model_fingerprint = self.worker.model_fingerprint
        return self.worker

    def start_worker(self) -> None:
        """Start the worker now, where a search's trials should time steps, not its start; a
        worker that cannot start is left for the first trial to find and record."""
        self._ask(lambda worker: None)

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

    def cell(self, config: Config) -> tuple[CellResult, Stamps]:
        """Run a cell on the worker (started or replaced as needed): what it measured, and what
        this side knows of it. A worker that died or failed gives a result of one failed
        attempt, never an exception."""
        start_s = data_load_s = None
        started = self.worker is None  # this cell needs a worker: it carries the start
        answer, failure = self._ask(lambda worker: worker.cell(config, self.timeout_s))
        if failure is None:
            result, healthy = answer
            if started:
                start_s, data_load_s = self.worker.start_s, self.worker.data_load_s
        else:
            result, healthy = _failed(config, self.spec.data, *failure), True
        # memory that did not come back, or a CUDA error that may be sticky: start afresh
        failed = status_of(result.attempts) == Outcome.ERROR
        if not healthy or (failed and config.device.startswith("cuda")):
            self.retire_worker()
        return result, Stamps(memory_cap_bytes=self.spec.memory_cap_bytes,
                              model_fingerprint=self.model_fingerprint,
                              worker_start_s=start_s, data_load_s=data_load_s,
                              baseline=self.baseline, where=self.where)

    def trial(self, config: Config, batch_size: int) -> Attempt:
        """One boundary trial; a trial that fails for any reason is a finding, never a crash."""
        trial, failure = self._ask(lambda worker: worker.trial(config, batch_size,
                                                               self.timeout_s))
        if failure is not None:
            kind, why = failure
            return Attempt(batch_size, kind, why[-2000:])
        if not trial.healthy or trial.attempt.outcome == Outcome.ERROR:
            self.retire_worker()
        return trial.attempt

    def compile_ahead(self, config: Config) -> AheadCompile:
        """Compile a cell's graphs into the on-disk caches; a compile that fails or kills its
        worker is noted, never raised: the cell compiles on its own and records what happens."""
        compiled, failure = self._ask(lambda worker: worker.compile(config, self.timeout_s))
        if failure is not None:
            _, why = failure
            return AheadCompile(None, None, why.strip().splitlines()[-1] if why.strip() else why)
        return compiled

    def _ask(self, request):
        """`request(worker)`'s answer on the worker (started as needed), and None; or None and
        (the outcome, why) where the worker died or failed, the worker then dropped."""
        try:
            return request(self._ensure_worker()), None
        except WorkerDied as exc:
            self.worker = None
            return None, (exc.kind, str(exc))
        except RuntimeError as exc:  # a worker that could not start, or a handler that raised
            self.retire_worker()
            return None, (Outcome.ERROR, str(exc))


def _failed(config: Config, data: str, kind: Outcome, error: str) -> CellResult:
    return CellResult(config, data, [Attempt(config.batch_size, kind, error[-2000:])], None, None)
