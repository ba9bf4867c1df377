"""Plain words for the numbers: what limits the host path, whether half precision or
channels_last pays, where the memory went, and what looks wrong."""

from __future__ import annotations

import pandas as pd

from bench.basics.units import format_bytes
from bench.instruments.stats import NOISY_IQR_FRACTION
from bench.planning.grid import AXES
from lenet.modes import MODES
from reports.frame import Run, busy, notebook_cell, parts_of, timed, vouched

# The settings that make a cell; cells alike in all but one are compared on that one.
SETTINGS = list(AXES)


def trust_findings(cells: pd.DataFrame) -> list[str]:
    """Which figures the page cannot vouch for: cells timed while the machine was busy (their
    speed is that moment's), apart from cells noisy on a quiet machine (noisy by nature)."""
    lines = []
    suspect = busy(timed(cells))
    named = "; ".join(f"{row['key']} ({', '.join(row['busy_reasons'])})"
                      for _, row in suspect.iterrows())
    if not suspect.empty and len(suspect) == len(timed(cells)):
        shares = suspect["cpu_other_fraction"]
        if shares.notna().all() and all(len(r) == 1 and r[0].startswith("other processes used")
                                        for r in suspect["busy_reasons"]):
            # one reason throughout: say it once, with its range, and name the cells
            low, high = f"{shares.min():.0%}", f"{shares.max():.0%}"
            named = (f"other processes used {low if low == high else f'{low} to {high}'} of the "
                     f"CPUs; {', '.join(suspect['key'])}")
        lines.append(f"Every timed cell was measured while the machine was busy, so no figure "
                     f"here is vouched for ({named}). Run again on a quiet machine.")
    elif not suspect.empty:
        lines.append(f"Measured while the machine was busy, so not vouched for and left out of "
                     f"the answers above: {len(suspect)} of {len(timed(cells))} timed cells: "
                     f"{named}. Run them again on a quiet machine.")
    quiet = vouched(cells)
    noisy = quiet[quiet["noisy"].fillna(False).astype(bool)]
    if not noisy.empty:
        lines.append(f"Noisy by nature (IQR over {NOISY_IQR_FRACTION:.0%} of the median on a "
                     f"machine seen quiet): {', '.join(noisy['key'])}; treat their differences "
                     f"with care.")
    return lines


def _median_ratio(cells: pd.DataFrame, column: str, value, baseline) -> float | None:
    """The median, over cells alike in every other setting, of examples/s at `value` divided by
    examples/s at `baseline`; from cells the page can vouch for."""
    keys = [name for name in SETTINGS if name != column]
    trained = vouched(cells)
    a = trained[trained[column] == value].set_index(keys)["examples_per_s"]
    b = trained[trained[column] == baseline].set_index(keys)["examples_per_s"]
    both = a.index.intersection(b.index)
    return None if both.empty else float((a[both] / b[both]).median())


def mode_findings(cells: pd.DataFrame) -> list[str]:
    """Each mode against eager on cells alike in every other setting: the median ratio, every
    pair's two figures, and what setting the mode up cost."""
    lines = []
    keys = [name for name in SETTINGS if name != "mode"]
    trained = vouched(cells)
    eager = trained[trained["mode"] == "eager"].set_index(keys)
    for mode in MODES[1:]:
        other = trained[trained["mode"] == mode].set_index(keys)
        both = other.index.intersection(eager.index)
        if both.empty:
            continue
        ratios = other.loc[both, "examples_per_s"] / eager.loc[both, "examples_per_s"]
        ratio = float(ratios.median())
        verdict = "faster" if ratio > 1.05 else "slower" if ratio < 0.95 else "no faster"
        pairs = "; ".join(
            f"{other.loc[i, 'key']}: {other.loc[i, 'examples_per_s']:,.0f} against "
            f"{eager.loc[i, 'examples_per_s']:,.0f} ({r:.2f}x)" for i, r in ratios.items())
        # a cell compiled ahead set up from a warm cache: its cold compile is what a first run
        # pays, and what the line gives
        setup = other.loc[both, "compile_ahead_s"].fillna(other.loc[both, "setup_s"]).dropna()
        eager_setup = eager.loc[both, "setup_s"].dropna()
        # rows without setup times (an older version's) leave the clause out, never "nan s"
        cost = "" if setup.empty or eager_setup.empty else (
            f", after a median {setup.median():,.1f} s of setup a cell (eager: "
            f"{eager_setup.median():,.2f} s)")
        lines.append(f"{mode} runs at {ratio:.2f}x eager's speed (median over {len(both)} "
                     f"matching cells): {verdict}{cost}. Examples/s, {mode} against eager: "
                     f"{pairs}.")
    return lines


def speed_findings(cells: pd.DataFrame) -> list[str]:
    lines = mode_findings(cells)
    for dtype in ("bfloat16", "float16"):
        ratio = _median_ratio(cells, "dtype", dtype, "float32")
        if ratio is not None:
            verdict = "faster" if ratio > 1.05 else "slower" if ratio < 0.95 else "no faster"
            lines.append(f"{dtype} autocast runs at {ratio:.2f}x float32's speed (median over "
                         f"matching cells): {verdict} for this small net.")
    ratio = _median_ratio(cells, "channels_last", True, False)
    if ratio is not None:
        verdict = "a gain" if ratio > 1.05 else "a loss" if ratio < 0.95 else "no gain"
        lines.append(f"channels_last runs at {ratio:.2f}x NCHW's speed: {verdict}.")
    trained = vouched(cells)
    host = trained[trained["placement"] == "host"]
    device = trained[trained["placement"] == "device"]
    if not host.empty and not device.empty:
        best_host = host.loc[host["examples_per_s"].idxmax()]
        same = device[(device["batch_size"] == best_host["batch_size"])
                      & (device["dtype"] == best_host["dtype"])
                      & (device["channels_last"] == best_host["channels_last"])
                      & (device["mode"] == best_host["mode"])]
        if not same.empty:
            ceiling = same["examples_per_s"].max()
            share = best_host["examples_per_s"] / ceiling
            where = (f"{best_host['examples_per_s']:,.0f} examples/s ({best_host['loader']}, "
                     f"batch {best_host['batch_size']:,}) against {ceiling:,.0f} on "
                     f"device-resident data")
            if share < 0.95:
                lines.append(f"The loader caps the host path at {where}: {share:.0%} of what "
                             f"the step alone can do.")
            else:
                lines.append(f"The loader costs nothing measurable here: {where}.")
    return lines


def memory_story(run: Run) -> list[str]:
    cell = notebook_cell(run.cells)
    if cell is None:
        return []
    parts = dict(parts_of(cell))
    if "allocated (live tensors)" in parts:
        line = (f"At the notebook's settings ({cell['key']}) the allocator held "
                f"{format_bytes(cell['peak_allocated_bytes'])} of live tensors at its peak and "
                f"reserved {format_bytes(cell['peak_reserved_bytes'])}")
        if pd.notna(cell.get("nvml_peak_used_bytes")):
            line += (f"; NVML saw {format_bytes(cell['nvml_peak_used_bytes'])} used on the card"
                     f" ({format_bytes(cell['nvml_baseline_used_bytes'])} of it before the "
                     f"worker started, {format_bytes(cell['context_bytes'])} for the CUDA "
                     f"context and libraries) and the driver reserves "
                     f"{format_bytes(cell['nvml_driver_reserved_bytes'])} more")
        else:
            line += "; NVML was not read on this machine"
        return [line + "."]
    if pd.notna(cell.get("tracked_peak_bytes")):
        return [f"At the notebook's settings ({cell['key']}) one training step peaks at "
                f"{format_bytes(cell['tracked_peak_bytes'])} of live tensors; the worker's "
                f"resident set peaked at {format_bytes(cell['cpu_peak_rss_bytes'])}, most of it "
                f"torch's libraries and the data set (a CPU run: no GPU memory was measured)."]
    return []


def warnings_about(cells: pd.DataFrame) -> list[str]:
    return [f"{row['key']}: {row['not_learning']}: its speed is not a training speed, and it "
            f"is left out of the answers." for _, row in cells.iterrows()
            if row["trained"] and row["not_learning"] is not None]
