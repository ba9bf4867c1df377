"""The report's PNGs. Each function takes a Run (or its cells), writes one file, returns its name,
or returns None when the run has nothing to draw for it."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted
# GPU and host names and error texts reach titles and labels: '$' must stay a dollar sign
matplotlib.rcParams["text.parse_math"] = False
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullLocator  # noqa: E402

from bench.planning.grid import added_axes  # noqa: E402
from bench.planning.peaks import arithmetic, card_peaks  # noqa: E402
from reports.frame import (  # noqa: E402
    Run,
    fastest,
    most_efficient,
    notebook_cell,
    pareto,
    parts_of,
    timed,
)

MiB = 2**20
DPI = 110


def _save(fig, folder: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(folder / name, dpi=DPI)
    plt.close(fig)
    return name


def _log2_batches(ax, batches) -> None:
    """A log2 batch axis with a labelled tick at every other power of two in range."""
    ax.set_xscale("log", base=2)
    low, high = int(min(batches)).bit_length() - 1, int(max(batches) - 1).bit_length()
    step = 1 if high - low <= 8 else 2
    ticks = [2**k for k in range(low, high + 1, step)]
    ax.set_xticks(ticks, [f"{b:,}" for b in ticks], rotation=45, ha="right")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("batch size")


def _added_words(settings: dict) -> list[str]:
    """The axes past the first six that vary in a run, as a legend says them: a count of models
    in words (its total speed is plotted), the others by name where a bare value would not say
    what it is."""
    words = []
    for name, value in settings.items():
        if name == "replicas":
            words.append(f"{value} models" if value > 1 else "1 model")
        elif name == "replica_method":
            if settings.get("replicas", 2) > 1:
                words.append(f"by {value}")
        elif name in ("precision", "optimizer"):
            words.append(f"{name} {value}")
        else:
            words.append(str(value))
    return words


def _legend_below(ax, ncol: int = 2) -> None:
    ax.legend(fontsize=7, ncol=ncol, loc="upper center", bbox_to_anchor=(0.5, -0.22),
              frameon=False)


def _predicted_line(cells: pd.DataFrame, up_to: float) -> tuple[list, list] | None:
    """The prediction is a line in batch size: extend it from the cells to `up_to`. A row's
    prediction is for the batch it asked for, which a backed-off cell did not get."""
    points = (cells[["batch_size_requested", "predicted_peak_bytes"]].dropna()
              .drop_duplicates("batch_size_requested").sort_values("batch_size_requested"))
    if len(points) < 2:
        return None
    (b0, p0), (b1, p1) = points.iloc[0], points.iloc[-1]
    per_sample = (p1 - p0) / (b1 - b0)
    batches = [2**k for k in range(int(b0).bit_length() - 1, int(up_to).bit_length() + 1)]
    return batches, [(p0 + per_sample * (b - b0)) / MiB for b in batches]


def throughput(run: Run, folder: Path) -> str | None:
    cells = timed(run.cells)
    if cells.empty:
        return None
    fig, ax = plt.subplots(figsize=(8, 6))
    added = [name for name in added_axes() if cells[name].nunique() > 1]
    series = ["loader", "dtype", "layout", *added]
    groups = cells.groupby(series)
    if groups.ngroups > 10:  # past the default cycle's ten colours, two lines would share one
        ax.set_prop_cycle(color=plt.cm.tab20.colors)
    for values, group in groups:
        group = group.sort_values("batch_size")
        style = "-" if values[0] == "device-resident" else "--"
        settings = dict(zip(added, values[3:]))
        ax.errorbar(group["batch_size"], group["examples_per_s"], yerr=group["examples_per_s_iqr"]
                    / 2, fmt=style + "o", markersize=4, capsize=2,
                    label=", ".join([*map(str, (*values[1:3], values[0])),
                                     *_added_words(settings)]))
    _log2_batches(ax, cells["batch_size"])
    several = ", all of a cell's models" if "replicas" in added else ""
    ax.set_ylabel(f"examples/s{several} (median; bars: IQR)")
    ax.set_title(f"Training throughput on {_device_words(run)}")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    _legend_below(ax)
    return _save(fig, folder, "throughput.png")


def memory(run: Run, folder: Path) -> str | None:
    """Peak memory of float32 NCHW cells against batch size, with capacity and the boundary."""
    cells = run.cells[run.cells["trained"] & (run.cells["dtype"] == "float32")
                      & ~run.cells["channels_last"].astype(bool)
                      & (run.cells["mode"] == "eager")]  # the mode the prediction models
    if cells.empty:
        return None
    # On a GPU the device-resident cells reach furthest; on the CPU the host cells are the ones
    # whose tracked tensors and prediction count the same things (no resident data set).
    placement = "device" if run.on_gpu else "host"
    if not (cells["placement"] == placement).any():
        placement = cells["placement"].iloc[0]
    cells = cells[cells["placement"] == placement].sort_values("batch_size")
    fig, ax = plt.subplots(figsize=(8, 6))
    boundary = _boundary(run)
    series = [("peak_allocated_bytes", "allocator: allocated"),
              ("peak_reserved_bytes", "allocator: reserved"),
              ("nvml_peak_used_bytes", "NVML: device used"),
              ("tracked_peak_bytes", "tensors tracked in one step (CPU)"),
              ("predicted_peak_bytes", "predicted allocator peak" if run.on_gpu
               else "predicted tensors in one step")]
    for column, label in series[:-1]:
        values = cells[column]
        if values.notna().any():
            ax.plot(cells["batch_size"], values / MiB, "-o", markersize=4, label=label)
    predicted = _predicted_line(cells, max(boundary or 0, cells["batch_size"].max()) * 2)
    if predicted:
        ax.plot(*predicted, ":", color="gray", label=series[-1][1])
    if run.capacity_bytes:
        words = "memory cap" if run.memory_cap_bytes else "card capacity"
        ax.axhline(run.capacity_bytes / MiB, color="red", linewidth=1, label=words)
    if boundary:
        ax.axvline(boundary, color="black", linestyle="--", linewidth=1,
                   label=f"largest batch that trained: {boundary:,}")
    _log2_batches(ax, predicted[0] if predicted else cells["batch_size"])
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_ylabel("MiB (log scale)")
    ax.set_title(f"Peak memory, float32 NCHW, {placement} data")
    ax.grid(True, alpha=0.3)
    _legend_below(ax)
    return _save(fig, folder, "memory.png")


def _boundary(run: Run) -> int | None:
    b = run.boundaries
    if b.empty:
        return None
    match = b[(b["dtype"] == "float32") & ~b["channels_last"].astype(bool)]
    value = match["max_ok_batch"].dropna()
    return int(value.iloc[0]) if not value.empty else None


def memory_parts(run: Run, folder: Path) -> str | None:
    """Where one cell's memory went, as a stacked bar: the notebook's cell where there is one."""
    cell = notebook_cell(run.cells)
    if cell is None:
        trained = run.cells[run.cells["trained"]]
        if trained.empty:
            return None
        cell = trained.iloc[0]
    parts = parts_of(cell)
    if not parts:
        return None
    fig, ax = plt.subplots(figsize=(5, 4.8))
    bottom = 0.0
    for label, value in parts:
        ax.bar([cell["key"]], [value / MiB], bottom=bottom, label=f"{label}: {value / MiB:,.0f}")
        bottom += value / MiB
    ax.set_ylabel("MiB")
    ax.set_title("Memory parts of one cell", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.08))
    return _save(fig, folder, "memory_parts.png")


def tradeoff(run: Run, folder: Path) -> str | None:
    cells = timed(run.cells).dropna(subset=["footprint_bytes"])
    if cells.empty:
        return None
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for dtype, group in cells.groupby("dtype"):
        ax.scatter(group["footprint_bytes"] / MiB, group["examples_per_s"], s=18, label=dtype)
    front = pareto(cells)
    ax.plot(front["footprint_bytes"] / MiB, front["examples_per_s"], "k-", linewidth=1,
            label="best trade-offs")
    for _, row in front.iterrows():
        ax.annotate(row["key"], (row["footprint_bytes"] / MiB, row["examples_per_s"]),
                    fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("memory the cell needed, MiB (log scale)")
    ax.set_ylabel("examples/s")
    ax.set_title("Speed against memory")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.grid(True, alpha=0.3)
    _legend_below(ax, ncol=4)
    return _save(fig, folder, "tradeoff.png")


def energy(run: Run, folder: Path) -> str | None:
    """Speed against the energy each example cost, one colour per mode: the fastest and the most
    efficient cells named."""
    cells = timed(run.cells).dropna(subset=["energy_j_per_1000_examples"])
    if cells.empty:
        return None
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for mode, group in cells.groupby("mode", sort=False):
        ax.scatter(group["energy_j_per_1000_examples"], group["examples_per_s"], s=18,
                   label=mode)
    for title, cell in (("fastest", fastest(cells)), ("least energy", most_efficient(cells))):
        ax.annotate(f"{title}: {cell['key']}", (cell["energy_j_per_1000_examples"],
                                                  cell["examples_per_s"]),
                    fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("joules per 1,000 examples (timed repeats only)")
    ax.set_ylabel("examples/s")
    ax.set_title(f"Speed against energy on {_device_words(run)}")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    _legend_below(ax, ncol=4)
    return _save(fig, folder, "energy.png")


def roofline(run: Run, folder: Path) -> str | None:
    """Achieved TFLOP/s against arithmetic intensity, log-log, one colour per mode, under the
    card's two roofs (its bandwidth and its peak for each dtype the run trained) where the card
    is known."""
    cells = timed(run.cells).dropna(subset=["tflop_per_s", "intensity_flop_per_byte"])
    if cells.empty:
        return None
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for (mode, dtype), group in cells.groupby(["mode", "dtype"], sort=False):
        ax.scatter(group["intensity_flop_per_byte"], group["tflop_per_s"], s=18,
                   label=f"{mode}, {dtype}")
    best = fastest(cells)
    ax.annotate(f"fastest: {best['key']}", (best["intensity_flop_per_byte"],
                                             best["tflop_per_s"]),
                fontsize=7, xytext=(4, 4), textcoords="offset points")
    low = cells["intensity_flop_per_byte"].min() / 2
    high = cells["intensity_flop_per_byte"].max() * 2
    named = cells["gpu_name"].dropna()
    card = card_peaks(str(named.iloc[0])) if not named.empty else None
    if card is not None:
        peaks = {arithmetic(str(dtype), str(precision)): card.tflops(str(dtype), str(precision))
                 for dtype, precision in cells[["dtype", "precision"]].drop_duplicates()
                 .itertuples(index=False)}
        high = max(high, *(4 * peak / card.memory_tb_per_s for peak in peaks.values()))
        for kind, peak in peaks.items():
            ridge = peak / card.memory_tb_per_s
            ax.plot([low, ridge, high], [low * card.memory_tb_per_s, peak, peak], "--",
                    linewidth=1, label=f"{card.name} roof, {kind}")
        title = f"Roofline on the {card.name}: model FLOPs over an eager step's bytes"
    else:
        title = (f"Model FLOPs against intensity on {_device_words(run)} (no peaks known for it: "
                 f"no roofs)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis, (start, end) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        # plain numbers (math text is off for names' sake); within two decades the minor
        # ticks are labelled too, or a narrow axis would have no label at all
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.4g}"))
        narrow = end / start < 100
        axis.set_minor_formatter(FuncFormatter(lambda v, _, n=narrow: f"{v:,.4g}" if n else ""))
    ax.set_xlabel("arithmetic intensity, FLOP per byte moved (eager step, unfused)")
    ax.set_ylabel("achieved TFLOP/s (model FLOPs)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    _legend_below(ax, ncol=3)
    return _save(fig, folder, "roofline.png")


def _device_words(run: Run) -> str:
    return run.cards or f"the CPU ({run.env.get('cpu', 'unknown')})"


# Each plot by the file it writes.
ALL = {"throughput.png": throughput, "memory.png": memory, "memory_parts.png": memory_parts,
       "tradeoff.png": tradeoff, "energy.png": energy, "roofline.png": roofline}
