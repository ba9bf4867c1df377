"""The history's page: one PNG a series (examples/s with its IQR band, peak memory and energy
over commits, busy points drawn apart and left out of the fit, each step marked with its commit
range) and an index.html that lists what got worse among the newest points first.
`python -m bench.history show` writes it."""

from __future__ import annotations

import hashlib
import statistics
from html import escape
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted
matplotlib.rcParams["text.parse_math"] = False  # card and host names keep their dollar signs
import matplotlib.pyplot as plt  # noqa: E402

from bench.basics.outcome import TRAINED  # noqa: E402
from bench.series import trends  # noqa: E402
from bench.series.database import History, HistoryError, shown  # noqa: E402
from bench.series.points import read  # noqa: E402
from lenet.cli import UsageError  # noqa: E402
from reports.html import CSS  # noqa: E402

MiB = 2**20
DPI = 110


def _short(point) -> str:
    return (point.run.commit_id or "?")[:7]


def _mark_steps(ax, changes, index) -> None:
    """A dashed line between the two points a step lies between, its size and commits above."""
    for change in changes:
        x = (index[id(change.last_before)] + index[id(change.first_after)]) / 2
        ax.axvline(x, color="tab:red", linestyle="--", linewidth=1)
        ax.annotate(f"{change.size:+.1%}\n{change.commits()}", (x, 1), xycoords=("data",
                    "axes fraction"), ha="center", va="bottom", fontsize=7, color="tab:red")


def _noisy_panel(ax, key, series, metric, index) -> None:
    quiet = trends.timed(series, metric)
    busy = [p for p in series if p.point.busy and getattr(p.point, metric.name)]
    xs = [index[id(p)] for p in quiet]
    ys = [getattr(p.point, metric.name) for p in quiet]
    if metric.iqr:
        half = [(getattr(p.point, metric.iqr) or 0) / 2 for p in quiet]
        ax.fill_between(xs, [y - h for y, h in zip(ys, half)], [y + h for y, h in zip(ys, half)],
                        color="tab:blue", alpha=0.2, linewidth=0, label="IQR of the repeats")
    ax.plot(xs, ys, "o-", color="tab:blue", markersize=4, label="timed on a quiet machine")
    if busy:
        ax.plot([index[id(p)] for p in busy], [getattr(p.point, metric.name) for p in busy],
                "x", color="grey", label="busy machine: not fitted")
    _mark_steps(ax, trends.steps(key, series, metric), index)
    ax.set_ylabel(metric.words)
    ax.legend(fontsize=7, loc="lower left")


def _memory_panel(ax, series, index) -> None:
    measured = [p for p in series if p.point.memory_bytes]
    ax.step([index[id(p)] for p in measured], [p.point.memory_bytes / MiB for p in measured],
            "o-", where="post", color="tab:purple", markersize=4)
    fields = sorted({p.point.memory_field for p in measured})
    ax.set_ylabel(f"peak memory, MiB\n({', '.join(fields)})", fontsize=8)


def series_png(key, series, folder: Path) -> str:
    """Draw one series; the file's name."""
    index = {id(p): i for i, p in enumerate(series)}
    panels = [("speed", trends.SPEED)]
    if any(p.point.memory_bytes for p in series):
        panels.append(("memory", None))
    if any(p.point.energy_j_per_1000_examples for p in series):
        panels.append(("energy", trends.ENERGY))
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.6 * len(panels) + 0.8), sharex=True,
                             squeeze=False)
    for ax, (kind, metric) in zip(axes[:, 0], panels):
        if kind == "memory":
            _memory_panel(ax, series, index)
        else:
            _noisy_panel(ax, key, series, metric, index)
        for p in series:
            if p.point.status not in TRAINED:
                ax.axvline(index[id(p)], color="black", alpha=0.3, linewidth=4)
    bottom = axes[-1, 0]
    bottom.set_xticks(range(len(series)), [_short(p) for p in series], rotation=90, fontsize=7)
    bottom.set_xlabel("commit, oldest first (a dark band: the cell did not train)")
    fig.suptitle(trends.label(key), fontsize=9)
    name = f"series-{hashlib.sha256(repr(key).encode()).hexdigest()[:12]}.png"
    fig.tight_layout()
    fig.savefig(folder / name, dpi=DPI)
    plt.close(fig)
    return name


def write_history(selected: dict, out: Path, min_step: float = 0.0,
                  memory_fraction: float = 0.01) -> Path:
    """index.html and a PNG a series in `out`; the page's path."""
    out.mkdir(parents=True, exist_ok=True)
    news = [change for key, series in selected.items()
            for change in trends.regressions(key, series, min_step, memory_fraction, 0)]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>history: "
             f"{len(selected)} series</title><style>{CSS}</style></head><body>",
             f"<h1>History of {len(selected)} series</h1>",
             "<p>A series is one cell of one model on one machine class and card, its points in "
             "commit order. Speed and energy steps are found on the points timed on a quiet "
             "machine; busy points are drawn apart (grey crosses) and left out. A dashed red "
             "line marks a step, with its size and the commits it lies between.</p>"]
    if news:
        parts.append("<h2>Got worse among the newest points</h2><ul>" + "".join(
            f"<li>{escape(change.line())}</li>" for change in news) + "</ul>")
    else:
        parts.append("<p>Nothing got worse among the newest points.</p>")
    for key, series in selected.items():
        name = series_png(key, series, out)
        newest = series[-1].point
        speed = f"{newest.examples_per_s:,.0f} examples/s" if newest.examples_per_s else \
            escape(newest.status)
        parts.append(f"<h2>{escape(trends.label(key))}</h2><p>{len(series)} points; newest "
                     f"{speed} at {escape(_short(series[-1]))}</p>"
                     f"<img src='{name}' alt='{escape(trends.label(key))} over commits'>")
    parts.append("</body></html>")
    page = out / "index.html"
    page.write_text("\n".join(parts))
    return page


SPARK = "▁▂▃▄▅▆▇█"
RECENT = 12  # the points a run's page draws of each cell's trend


def sparkline(values: list[float]) -> str:
    """The values as a line of block characters, lowest to highest."""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(SPARK[round((v - low) / span * (len(SPARK) - 1))] for v in values)


def trend_section(run_dir: Path, db: str) -> str:
    """The run's page's section on each cell's recent trend in the store at `db`: its recent
    speeds (quiet points), this run against their median, and what got worse among the newest
    points. A store that cannot be read is a line saying so: the page is written regardless."""
    try:
        recorded, run_points = read(run_dir)
        with History(db) as history:
            stored = history.series()
    except (HistoryError, UsageError) as exc:
        return f"<h2>Recent trend</h2><p class='warn'>{escape(str(exc))}</p>"
    rows = []
    for point in run_points:
        key = (recorded.machine, recorded.card, recorded.model, point.cell)
        series = stored.get(key, [])
        recent = trends.timed(series, trends.SPEED)[-RECENT:]
        speeds = [p.point.examples_per_s for p in recent]
        ours = [p for p in recent if p.run.uid == recorded.uid]
        others = [s for p, s in zip(recent, speeds) if p.run.uid != recorded.uid]
        against = f"{ours[0].point.examples_per_s / statistics.median(others) - 1:+.1%}" \
            if ours and others else ""
        worse = trends.regressions(key, series, 0.0, 0.01, 0)
        rows.append(f"<tr><td>{escape(point.cell)}</td><td class='spark'>"
                    f"{sparkline(speeds) if speeds else ''}</td><td>{len(series)}</td>"
                    f"<td>{against}</td><td>{'; '.join(escape(c.words()) for c in worse)}</td>"
                    f"</tr>")
    head = "".join(f"<th>{words}</th>" for words in (
        "cell", f"examples/s, last {RECENT}", "points", "this run against the median",
        "got worse"))
    return ("<h2>Recent trend</h2><p>Each cell's speed over its last runs on this machine class "
            f"and card (quiet points, oldest first) in the history store "
            f"{escape(shown(db))}, this run against their median, and what got worse among the "
            f"newest points (<code>python -m bench.history show</code> draws them).</p>"
            f"<table><tr>{head}</tr>{''.join(rows)}</table>")
