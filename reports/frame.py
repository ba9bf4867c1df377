"""A run directory as pandas DataFrames, with the derived columns the page and plots need.

NVML and allocator columns stay NaN where they were not measured (a CPU run, a container that
hides processes): the page shows them as "not measured", never as 0.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd

from bench.basics.outcome import TRAINED
from bench.basics.schema import NewerSchemaError
from bench.planning.grid import Config
from bench.planning.peaks import card_peaks
from bench.planning.plan_file import ModelInfo, Plan
from bench.records import store
from bench.records.row import ROW_KEYS, config_of, not_learning
from lenet.cli import UsageError

# The notebook's settings: batch 256, float32, the host DataLoader, no pinning, eager PyTorch.
NOTEBOOK = {"batch_size_requested": 256, "dtype": "float32", "channels_last": False,
            "placement": "host", "pin_memory": False, "mode": "eager"}


class NotARun(UsageError):
    """The folder holds no results this version can report."""


@dataclass
class Run:
    path: Path
    env: dict
    plan: Plan | None  # None where plan.json is missing or unreadable: the page shows the rows
    cells: pd.DataFrame
    boundaries: pd.DataFrame
    warnings: list

    @property
    def on_gpu(self) -> bool:
        device = self.plan.device if self.plan else self.env.get("device", "cpu")
        return str(device).startswith("cuda")

    @property
    def model(self) -> ModelInfo:
        """The run's model; LeNet where the plan does not say, as before --model."""
        return self.plan.model if self.plan else ModelInfo()

    @property
    def cards(self) -> str | None:
        """The card models the rows say they ran on (under Slurm, not the submitting host's,
        whose env.json may name none), else the run's own; None on the CPU."""
        named = self.cells["gpu_name"].dropna().unique() if "gpu_name" in self.cells else []
        return ", ".join(sorted(named)) if len(named) else self.env.get("gpu_name")

    @property
    def memory_cap_bytes(self) -> int | None:
        return self.plan.memory_cap_bytes if self.plan else None

    @property
    def capacity_bytes(self) -> float | None:
        """The memory a cell could fill: the cap where one was set, else the card's total."""
        return self.memory_cap_bytes or self.env.get("gpu_total_bytes")


# Columns whose missing values must stay missing, not turn a whole column into floats or NaN
# into True: pandas' nullable types, for the whole-number and yes-or-no settings and figures.
_NULLABLE_TYPES = {"int": "Int64", "bool": "boolean"}
NULLABLE = {"batch_size": "Int64", "batch_size_requested": "Int64", "noisy": "boolean",
            "busy": "boolean",
            **{f.name: _NULLABLE_TYPES[f.type] for f in fields(Config)
               if f.type in _NULLABLE_TYPES and f.name != "batch_size"}}


def with_derived_columns(cells: pd.DataFrame) -> pd.DataFrame:
    """Every row field as a column with its type, memory parts and the figure each cell is
    ranked by."""
    cells = cells.copy()
    for name in ROW_KEYS:
        if name not in cells:
            cells[name] = None
    for name, dtype in NULLABLE.items():
        cells[name] = cells[name].astype(dtype)
    for name in ("peak_allocated_bytes", "peak_reserved_bytes", "nvml_peak_used_bytes",
                 "nvml_baseline_used_bytes", "nvml_driver_reserved_bytes",
                 "cpu_peak_rss_bytes", "cpu_baseline_rss_bytes", "tracked_peak_bytes",
                 "examples_per_s", "examples_per_s_iqr", "predicted_peak_bytes", "setup_s",
                 "compile_ahead_s",
                 "energy_j_per_1000_examples", "mean_power_w", "flops_per_example",
                 "step_traffic_bytes", "step_operators", "launch_us", "step_ms_median"):
        if name not in cells:
            cells[name] = float("nan")
        cells[name] = pd.to_numeric(cells[name], errors="coerce")
    cells["cache_slack_bytes"] = cells["peak_reserved_bytes"] - cells["peak_allocated_bytes"]
    # the arithmetic rate achieved: model FLOPs (bench.planning.flops) at the cell's speed, and its
    # share of the card's dense peak for the cell's dtype where the card is known
    # (bench.planning.peaks)
    cells["tflop_per_s"] = cells["examples_per_s"] * cells["flops_per_example"] / 1e12
    peaks = [card_peaks(name if isinstance(name, str) else None) for name in cells["gpu_name"]]
    cells["peak_tflop_per_s"] = pd.to_numeric(pd.Series(
        [p.tflops(dtype, precision) if p else None
         for p, dtype, precision in zip(peaks, cells["dtype"], cells["precision"])],
        index=cells.index, dtype=object), errors="coerce")
    cells["peak_share"] = cells["tflop_per_s"] / cells["peak_tflop_per_s"]
    # the roofline: FLOPs over the eager step's bytes, and the lower of the card's two roofs at
    # that intensity (its bandwidth times it, its peak)
    cells["intensity_flop_per_byte"] = (cells["flops_per_example"]
                                        * pd.to_numeric(cells["batch_size"], errors="coerce")
                                        * pd.to_numeric(cells["replicas"], errors="coerce")
                                        / cells["step_traffic_bytes"])
    # the least the eager step's operators take to launch, one after another
    # (bench.instruments.timing.launch_s), and the share of the step that is
    cells["launch_floor_ms"] = cells["step_operators"] * cells["launch_us"] / 1e3
    cells["launch_share"] = cells["launch_floor_ms"] / cells["step_ms_median"]
    # several models at once: each one's share of the speed and of the memory
    cells["examples_per_s_per_model"] = cells["examples_per_s"] / cells["replicas"]
    bandwidth_tb_per_s = pd.Series([p.memory_tb_per_s if p else float("nan") for p in peaks],
                                   index=cells.index, dtype=float)
    cells["roof_tflop_per_s"] = (bandwidth_tb_per_s * cells["intensity_flop_per_byte"]).clip(
        upper=cells["peak_tflop_per_s"])
    cells["ridge_flop_per_byte"] = cells["peak_tflop_per_s"] / bandwidth_tb_per_s
    # what NVML saw this worker add beyond the allocator: CUDA context, cuDNN/cuBLAS, kernels
    cells["context_bytes"] = (cells["nvml_peak_used_bytes"] - cells["nvml_baseline_used_bytes"]
                              - cells["peak_reserved_bytes"]).clip(lower=0)
    # the memory a cell needs: NVML's growth on a GPU, else the allocator's, else tracked tensors
    cells["footprint_bytes"] = (
        (cells["nvml_peak_used_bytes"] - cells["nvml_baseline_used_bytes"])
        .fillna(cells["peak_reserved_bytes"]).fillna(cells["tracked_peak_bytes"]))
    configs = [config_of(row) for row in cells.to_dict("records")]
    cells["layout"] = pd.Series([c.layout_words for c in configs], index=cells.index, dtype=object)
    cells["loader"] = pd.Series([c.loader_words for c in configs], index=cells.index, dtype=object)
    cells["trained"] = cells["status"].isin(TRAINED)
    cells["not_learning"] = pd.Series(
        [not_learning(r["loss_first"], r["loss_last"]) if t else None
         for r, t in zip(cells[["loss_first", "loss_last"]].to_dict("records"), cells["trained"])],
        index=cells.index, dtype=object)
    return cells


def flag(value) -> bool:
    """A nullable boolean cell as a plain bool: missing (pd.NA) is False. Iterating a boolean
    column gives numpy's bools, which `is True` would miss."""
    return bool(pd.notna(value) and value)


def load_run(path: Path) -> Run:
    path = Path(path)
    results = path / store.RESULTS
    if not results.is_file():
        raise NotARun(f"{path} holds no {store.RESULTS}; run python -m bench.run --out {path} "
                      f"first")
    try:
        rows, warnings = store.read_run(path)
        boundary_rows, boundary_warnings = store.read_run_boundaries(path)
        plan = store.plan_or_none(path)
    except (NewerSchemaError, store.RunDirError) as exc:
        raise NotARun(str(exc)) from None
    cells = pd.DataFrame(rows, columns=ROW_KEYS)
    return Run(path, store.read_env(path, strict=False), plan, with_derived_columns(cells),
               pd.DataFrame(boundary_rows), warnings + boundary_warnings)


def notebook_cell(cells: pd.DataFrame) -> pd.Series | None:
    """The cell with the notebook's settings (most workers first, as d2l uses 4)."""
    match = cells
    for name, value in NOTEBOOK.items():
        match = match[match[name] == value]
    match = match[match["trained"]]
    if match.empty:
        return None
    return match.sort_values("num_workers", ascending=False).iloc[0]


def timed(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells that trained and have a speed: what rankings and speed plots draw on. A cell
    whose loss is not a number or never moved did not train, however fast its steps."""
    return cells[cells["trained"] & cells["examples_per_s"].notna()
                 & cells["not_learning"].isna()]


def not_training(cells: pd.DataFrame) -> pd.DataFrame:
    """Cells that ran to the end with a speed but whose loss says they did not train."""
    return cells[cells["trained"] & cells["examples_per_s"].notna()
                 & cells["not_learning"].notna()]


def busy(cells: pd.DataFrame) -> pd.DataFrame:
    """Cells timed while the machine was busy: their speed is that moment's, not the settings'."""
    return cells[cells["busy"].fillna(False).astype(bool)]


def vouched(cells: pd.DataFrame) -> pd.DataFrame:
    """Timed cells whose machine was not seen busy (or whose rows predate the probes)."""
    trusted = timed(cells)
    return trusted[~trusted["busy"].fillna(False).astype(bool)]


def fastest(cells: pd.DataFrame, max_footprint_bytes: float | None = None) -> pd.Series | None:
    """The fastest of `cells` (callers pass vouched(cells) to rank only what they can vouch
    for)."""
    trained = timed(cells)
    if max_footprint_bytes is not None:
        trained = trained[trained["footprint_bytes"] <= max_footprint_bytes]
    return None if trained.empty else trained.loc[trained["examples_per_s"].idxmax()]


def one_model(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells that trained one model at a time, whose speed a single training gets; all of
    them where every cell trained several."""
    single = cells[cells["replicas"] == 1]
    return cells if single.empty else single


def several_models(cells: pd.DataFrame) -> pd.DataFrame:
    """The timed cells that trained several models at once (the replicas axis)."""
    trained = timed(cells)
    return trained[trained["replicas"] > 1]


def most_efficient(cells: pd.DataFrame) -> pd.Series | None:
    """The timed cell that used the least energy per example, among those with a figure."""
    measured = timed(cells).dropna(subset=["energy_j_per_1000_examples"])
    return None if measured.empty else \
        measured.loc[measured["energy_j_per_1000_examples"].idxmin()]


def largest_batch_per_dtype(run: Run) -> dict:
    """From the boundary search where it ran, else the largest batch that trained in the grid."""
    if not run.boundaries.empty:
        return {dtype: (group["max_ok_batch"].max(), "; ".join(sorted(set(group["stop_reason"]))))
                for dtype, group in run.boundaries.groupby("dtype", sort=False)}
    trained = run.cells[run.cells["trained"]]
    return {dtype: (group["batch_size"].max(), "the largest in the grid; no boundary search ran")
            for dtype, group in trained.groupby("dtype", sort=False)}


def parts_of(cell: pd.Series) -> list[tuple[str, float]]:
    """Where one cell's memory went, bottom first; NVML parts only where NVML was read. A CPU run
    has none: its resident set is not a sum of parts (the C allocator reuses what earlier steps
    freed)."""
    if pd.notna(cell.get("peak_allocated_bytes")):
        parts = [("allocated (live tensors)", cell["peak_allocated_bytes"]),
                 ("cache slack (reserved - allocated)", cell["cache_slack_bytes"])]
        if pd.notna(cell.get("nvml_peak_used_bytes")):
            parts += [("CUDA context and libraries", cell["context_bytes"]),
                      ("used before the worker started", cell["nvml_baseline_used_bytes"]),
                      ("driver reserve", cell["nvml_driver_reserved_bytes"])]
        return [(label, float(v)) for label, v in parts if pd.notna(v)]
    return []


def pareto(cells: pd.DataFrame) -> pd.DataFrame:
    """Cells no other cell beats on both speed and memory: the best trade-offs."""
    trained = timed(cells).dropna(subset=["footprint_bytes"]).sort_values(
        ["footprint_bytes", "examples_per_s"], ascending=[True, False])
    best, front = -1.0, []
    for index, row in trained.iterrows():
        if row["examples_per_s"] > best:
            best = row["examples_per_s"]
            front.append(index)
    return trained.loc[front]
