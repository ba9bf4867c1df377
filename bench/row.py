"""One result row per cell: the same keys in every row, units in the names, JSON on disk."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

STATUSES = ("ok", "oom_backed_off", "oom", "error")
TRAINED = ("ok", "oom_backed_off")  # the statuses of a cell that has figures


@dataclass
class Row:
    key: str
    # the cell as asked for, and the batch it ran at
    batch_size_requested: int
    batch_size: int | None
    dtype: str
    channels_last: bool
    placement: str
    pin_memory: bool
    num_workers: int
    device: str
    data_source: str  # fashion-mnist or synthetic
    status: str  # one of STATUSES
    error_kind: str | None = None  # oom, kernel_limit, error, worker_died, timeout
    error: str | None = None
    attempts: list = field(default_factory=list)  # [{batch_size, outcome, error}]
    # speed: the median over repeats, with the spread
    examples_per_s: float | None = None
    examples_per_s_iqr: float | None = None
    noisy: bool | None = None  # IQR over 5% of the median
    step_ms_median: float | None = None
    repeats: int | None = None
    steps_per_repeat: int | None = None
    repeat_s: list = field(default_factory=list)
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
    memory_cap_bytes: int | None = None
    # did it learn: a NaN or a loss that never moves is a finding
    loss_first: float | None = None
    loss_last: float | None = None
    started_at: str | None = None
    wall_s: float | None = None

    @classmethod
    def for_config(cls, config, data_source: str, status: str, **fields) -> Row:
        """A row for `config` (a bench.grid.Config) with its settings copied in."""
        return cls(key=config.key(), batch_size_requested=config.batch_size, dtype=config.dtype,
                   channels_last=config.channels_last, placement=config.placement,
                   pin_memory=config.pin_memory, num_workers=config.num_workers,
                   device=config.device, data_source=data_source, status=status,
                   batch_size=fields.pop("batch_size", None), **fields)

    def as_dict(self) -> dict:
        return asdict(self)


ROW_KEYS = tuple(f.name for f in fields(Row))
