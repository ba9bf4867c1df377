"""A run directory as pandas DataFrames, with the derived columns the page and plots need.

NVML and allocator columns stay NaN where they were not measured (a CPU run, a container that
hides processes): the page shows them as "not measured", never as 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench import store
from bench.row import ROW_KEYS, TRAINED

# The notebook's settings: batch 256, float32, the host DataLoader, no pinning.
NOTEBOOK = {"batch_size_requested": 256, "dtype": "float32", "channels_last": False,
            "placement": "host", "pin_memory": False}


class NotARun(Exception):
    """The folder holds no results to report."""


@dataclass
class Run:
    path: Path
    env: dict
    plan: dict
    cells: pd.DataFrame
    boundaries: pd.DataFrame
    warnings: list

    @property
    def on_gpu(self) -> bool:
        return str(self.plan.get("device", self.env.get("device", "cpu"))).startswith("cuda")

    @property
    def capacity_bytes(self) -> float | None:
        """The memory a cell could fill: the cap where one was set, else the card's total."""
        return self.plan.get("memory_cap_bytes") or self.env.get("gpu_total_bytes")


def _read_json(path: Path) -> dict:
    """A JSON object from the run directory, or {} where the file is missing, torn or not an
    object: the page then says "not measured" for what it would have held."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# Columns whose missing values must stay missing, not turn a whole column into floats or NaN
# into True: pandas' nullable types.
NULLABLE = {"batch_size": "Int64", "batch_size_requested": "Int64", "num_workers": "Int64",
            "channels_last": "boolean", "pin_memory": "boolean", "noisy": "boolean"}


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
                 "examples_per_s", "examples_per_s_iqr", "predicted_peak_bytes"):
        if name not in cells:
            cells[name] = float("nan")
        cells[name] = pd.to_numeric(cells[name], errors="coerce")
    cells["cache_slack_bytes"] = cells["peak_reserved_bytes"] - cells["peak_allocated_bytes"]
    # what NVML saw this worker add beyond the allocator: CUDA context, cuDNN/cuBLAS, kernels
    cells["context_bytes"] = (cells["nvml_peak_used_bytes"] - cells["nvml_baseline_used_bytes"]
                              - cells["peak_reserved_bytes"]).clip(lower=0)
    # the memory a cell needs: NVML's growth on a GPU, else the allocator's, else tracked tensors
    cells["footprint_bytes"] = (
        (cells["nvml_peak_used_bytes"] - cells["nvml_baseline_used_bytes"])
        .fillna(cells["peak_reserved_bytes"]).fillna(cells["tracked_peak_bytes"]))
    cells["layout"] = cells["channels_last"].map({True: "channels_last", False: "NCHW"})
    cells["loader"] = pd.Series([_loader_words(placement, workers, pinned) for placement, workers,
                                 pinned in zip(cells["placement"], cells["num_workers"],
                                               cells["pin_memory"])],
                                index=cells.index, dtype=object)
    cells["trained"] = cells["status"].isin(TRAINED)
    return cells


def flag(value) -> bool:
    """A nullable boolean cell as a plain bool: missing (pd.NA) is False. Iterating a boolean
    column gives numpy's bools, which `is True` would miss."""
    return bool(pd.notna(value) and value)


def _loader_words(placement, workers, pinned) -> str:
    if placement == "device":
        return "device-resident"
    return f"host, {workers} workers{', pinned' if flag(pinned) else ''}"


def load_run(path: Path) -> Run:
    path = Path(path)
    results = path / store.RESULTS
    if not results.is_file():
        raise NotARun(f"{path} holds no {store.RESULTS}; run python -m bench.run --out {path} "
                      f"first")
    rows, warnings = store.read_rows(results)
    boundary_rows, boundary_warnings = store.read_rows(path / store.BOUNDARIES,
                                                       store.BOUNDARY_FIELDS)
    cells = pd.DataFrame(rows)
    return Run(path, _read_json(path / store.ENV), _read_json(path / store.PLAN),
               with_derived_columns(cells), pd.DataFrame(boundary_rows),
               warnings + boundary_warnings)


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
    """The cells that trained and have a speed: what rankings and speed plots draw on."""
    return cells[cells["trained"] & cells["examples_per_s"].notna()]


def fastest(cells: pd.DataFrame, max_footprint_bytes: float | None = None) -> pd.Series | None:
    trained = timed(cells)
    if max_footprint_bytes is not None:
        trained = trained[trained["footprint_bytes"] <= max_footprint_bytes]
    return None if trained.empty else trained.loc[trained["examples_per_s"].idxmax()]


def largest_batch_per_dtype(run: Run) -> dict:
    """From the boundary search where it ran, else the largest batch that trained in the grid."""
    if not run.boundaries.empty:
        return {dtype: (group["max_ok_batch"].max(), "; ".join(sorted(set(group["stop_reason"]))))
                for dtype, group in run.boundaries.groupby("dtype", sort=False)}
    trained = run.cells[run.cells["trained"]]
    return {dtype: (group["batch_size"].max(), "largest in the grid (no boundary search)")
            for dtype, group in trained.groupby("dtype", sort=False)}


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
