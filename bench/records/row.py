"""One result row per cell: the cell's settings, its outcome and its figures, units in the names.

In Python a row holds its Config, its Attempts and its Contention whole; on disk (JSON lines) it
is flat, so pandas and jq read it as one record: `as_dict` flattens, `read_row` reads back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from bench.basics.outcome import Attempt, Outcome
from bench.basics.schema import SCHEMA_VERSION, field_defaults, upgraded
from bench.instruments.contention import Contention
from bench.planning.grid import DEFAULTS, Config


@dataclass
class Row:
    config: Config  # the cell as asked for
    data_source: str  # fashion-mnist or synthetic
    status: Outcome  # OK, OOM_BACKED_OFF, OOM or ERROR
    batch_size: int | None = None  # the batch it trained at
    error_kind: Outcome | None = None  # the last attempt's outcome where it failed
    error: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    # speed: the median over repeats, with the spread
    examples_per_s: float | None = None
    examples_per_s_iqr: float | None = None
    noisy: bool | None = None  # IQR over 5% of the median
    step_ms_median: float | None = None
    repeats: int | None = None
    steps_per_repeat: int | None = None
    repeat_s: list[float] = field(default_factory=list)
    setup_s: float | None = None  # building the step and warming up: compile or capture included
    sizing_s: float | None = None  # the blocks of steps that sized the repeats
    # compiled modes: whether torch.compile's on-disk caches served the compile: warm, cold or
    # partly warm (bench.execution.cell.compile_cache_words); setup_s depends on it many times over
    compile_cache: str | None = None
    # compiled ahead, side by side before any cell was timed (bench.execution.ahead): that
    # compile's seconds (building the step and its warm-up steps: what a first run pays) and its
    # cache's words, or why it failed; None where the cell compiled in its own setup
    compile_ahead_s: float | None = None
    compile_ahead_cache: str | None = None
    compile_ahead_error: str | None = None
    # starting the worker this cell needed (interpreter, imports, data, a first step), and the
    # data's share of it; None where a worker was already running
    worker_start_s: float | None = None
    data_load_s: float | None = None
    # what else the machine did during the timed repeats
    contention: Contention | None = None
    # memory: allocator, NVML device-wide and per process, the worker's resident set, prediction
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    nvml_total_bytes: int | None = None
    nvml_driver_reserved_bytes: int | None = None
    nvml_baseline_used_bytes: int | None = None  # before the worker's CUDA context existed
    nvml_peak_used_bytes: int | None = None
    nvml_process_used_bytes: int | None = None
    nvml_note: str | None = None  # why an NVML figure is missing
    cpu_peak_rss_bytes: int | None = None  # the worker's peak resident set: libraries included
    cpu_baseline_rss_bytes: int | None = None  # its resident set as the measured attempt began
    tracked_peak_bytes: int | None = None  # CPU: live tensor bytes over one step, op by op
    predicted_peak_bytes: int | None = None
    # FLOPs of one example's forward and backward (bench.planning.flops): with examples_per_s, the
    # arithmetic rate the cell achieved; None where the model could not be counted
    flops_per_example: int | None = None
    # an eager step's memory traffic at the batch it trained at (bench.planning.flops.StepTraffic:
    # every operator's inputs and outputs, unfused) and its operators, about its kernels
    step_traffic_bytes: int | None = None
    step_operators: int | None = None
    # one near-empty operator's time on the device (bench.instruments.timing.launch_s): times
    # step_operators, the least an eager step can take however small its batch
    launch_us: float | None = None
    # the architecture's hash (bench.planning.models.fingerprint)
    model_fingerprint: str | None = None
    prediction_note: str | None = None  # where the memory model does not hold for this cell
    memory_cap_bytes: int | None = None
    # energy of the timed repeats (bench.instruments.energy): a figure, or None and the note that
    # says why
    energy_j_per_1000_examples: float | None = None
    mean_power_w: float | None = None
    energy_window_s: float | None = None
    energy_method: str | None = None
    energy_note: str | None = None
    # did it learn: a NaN or a loss that never moves is a finding
    loss_first: float | None = None
    loss_last: float | None = None
    started_at: str | None = None
    wall_s: float | None = None
    # where it ran (bench.planning.devices): the host, and the card in that host's numbering
    host: str | None = None
    gpu_index: int | None = None
    gpu_name: str | None = None
    gpu_uuid: str | None = None
    worker: str | None = None  # which of the run's workers: GPU 2, cpu cores 0-7
    slurm_job_id: str | None = None  # the array task that ran it, under --executor slurm

    def as_dict(self) -> dict:
        """The row as stored: flat, with its key and schema version first."""
        stored = asdict(self)
        settings = _settings_as_stored(stored.pop("config"))
        stored.pop("contention")
        return {"schema_version": SCHEMA_VERSION, "key": self.config.key(), **settings,
                **stored, **asdict(self.contention or Contention())}


def _settings_as_stored(settings: dict) -> dict:
    """The cell's batch is stored as the batch it asked for, beside the one it trained at."""
    return {("batch_size_requested" if name == "batch_size" else name): value
            for name, value in settings.items()}


_CONTENTION_DEFAULTS = {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
                        for f in fields(Contention)}
# every figure's key, None where the field has no default (a row always has its status)
_FIGURE_DEFAULTS = {**dict.fromkeys(f.name for f in fields(Row)
                                    if f.name not in ("config", "contention")),
                    **field_defaults(Row, leave_out=("config", "contention"))}
# What a stored row lacks is read as this (the settings an older row predates at their default).
ROW_DEFAULTS = {**_settings_as_stored(DEFAULTS), **_FIGURE_DEFAULTS, **_CONTENTION_DEFAULTS}
ROW_KEYS = ("schema_version", "key", *_settings_as_stored({f.name: None for f in fields(Config)}),
            *_FIGURE_DEFAULTS, *_CONTENTION_DEFAULTS)


def read_row(raw: dict, where: str) -> dict:
    """A stored row at this schema, every key present; NewerSchemaError for a newer row."""
    return upgraded(raw, ROW_DEFAULTS, where)


def config_of(row: dict) -> Config:
    """The cell a stored row measured."""
    return Config(**{f.name: row["batch_size_requested" if f.name == "batch_size" else f.name]
                     for f in fields(Config)})


# a loss that moved less than this over the timed steps did not move: the weights did not change
STILL_LOSS = 1e-6


def not_learning(first, last) -> str | None:
    """Why a cell's losses say it did not train (not a number, or never moving), or None where
    they moved or were not recorded. Such a cell's speed is not a training speed."""
    if not isinstance(first, (int, float)) or not isinstance(last, (int, float)):
        return None
    if not math.isfinite(first):
        return f"the loss was {first} from the first step"
    if not math.isfinite(last):
        return f"the loss became {last} (diverged)"
    if abs(last - first) < STILL_LOSS:
        return f"the loss never moved from {first:.4f}"
    return None
