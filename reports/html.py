"""The report page: one self-contained HTML file beside its PNGs. Opens from disk, no network;
every text that came from a result is escaped."""

from __future__ import annotations

from html import escape

import pandas as pd

from bench.basics.oom_message import cuda_oom_figures
from bench.basics.units import format_bytes
from bench.planning.allocator import CONTEXT_ALLOWANCE_BYTES
from bench.planning.grid import LENET, get_grid, grid_names
from bench.planning.peaks import arithmetic, card_peaks
from bench.planning.plan_file import ModelInfo, Plan
from bench.records.phases import AHEAD, SEARCHES, phases
from reports import findings
from reports.frame import (
    Run,
    fastest,
    flag,
    largest_batch_per_dtype,
    most_efficient,
    not_training,
    notebook_cell,
    one_model,
    several_models,
    timed,
    vouched,
)

SMALL_CARD_BYTES = 8 * 2**30  # "a smaller card" where no cap says otherwise

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.8em; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
tr.oom_backed_off { background: #fff4d6; } tr.oom, tr.error { background: #fde0e0; }
tr.fail { background: #fde0e0; } td.noisy { color: #a05a00; }
.facts td { text-align: left; } .warn { color: #a00000; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
"""


def _missing(value) -> bool:
    return value is None or (pd.api.types.is_scalar(value) and pd.isna(value))


def _e(value) -> str:
    return "not measured" if _missing(value) else escape(str(value))


def _speed(value) -> str:
    return "not measured" if _missing(value) else f"{value:,.0f}"


def _fixed(digits: int):
    """A formatter for a number with `digits` decimals, 'not measured' where it is missing."""
    return lambda value: _e(None if _missing(value) else f"{value:.{digits}f}")


def _bytes(value) -> str:
    return "not measured" if _missing(value) else escape(format_bytes(value))


def header(run: Run, spent: dict[str, float]) -> str:
    """The run's facts; `spent`: its phases' seconds (bench.records.phases)."""
    env, plan = run.env, run.plan
    data = (plan.data if plan else None) or ", ".join(
        sorted(set(run.cells.get("data_source", []))))
    facts = [
        ("model", model_words(run.model)),
        ("device", device_words(run)),
        ("driver", env.get("driver_version")), ("CUDA", env.get("cuda_version")),
        ("torch", env.get("torch_version")), ("torchvision", env.get("torchvision_version")),
        ("data", f"{data}{' (synthetic: speed and memory only, not accuracy)' if data == 'synthetic' else ''}"),  # noqa: E501
        ("grid", _grid_words(plan)),
        ("memory cap", _bytes(run.memory_cap_bytes) if run.memory_cap_bytes else "none"),
        ("when", env.get("created_at")),
        ("how long", _how_long(run, spent)),
        ("commit", env.get("commit")), ("host", env.get("host")),
    ]
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    return f"<table class='facts'>{rows}</table>"


def _how_long(run: Run, spent: dict[str, float]) -> str | None:
    """The seconds the rows and searches recorded: measuring cells (their whole wall time),
    compiling ahead and searching boundaries (their phases); None where none did."""
    cells = pd.to_numeric(run.cells["wall_s"], errors="coerce").sum() \
        if "wall_s" in run.cells else 0.0
    parts = [(cells, "measuring cells"),
             (spent.get(AHEAD), "compiling ahead (summed over processes side by side)"),
             (spent.get(SEARCHES), "searching boundaries")]
    return "; ".join(f"{seconds:,.0f} s {what}" for seconds, what in parts if seconds) or None


def device_words(run: Run) -> str:
    """The cards the rows say they ran on, else the run's CPU."""
    return run.cards or f"CPU: {run.env.get('cpu', 'unknown')}"


def where_table(cells: pd.DataFrame) -> str | None:
    """Which host, card and worker ran how many cells, and how fast: for a run spread over
    several (--devices, --executor slurm); None for a run on one."""
    columns = ["host", "gpu_name", "worker"]
    if any(c not in cells for c in columns):
        return None
    placed = cells.assign(**{c: cells[c].fillna("") for c in columns})
    groups = placed.groupby(columns, sort=True)
    if groups.ngroups < 2:
        return None
    rows = "".join(
        f"<tr><td>{_e(host)}</td><td>{_e(gpu or 'CPU')}</td><td>{_e(worker)}</td>"
        f"<td>{len(group)}</td><td>{_speed(group['examples_per_s'].median())}</td></tr>"
        for (host, gpu, worker), group in groups)
    return ("<table><tr><th>host</th><th>device</th><th>worker</th><th>cells</th>"
            f"<th>median examples/s</th></tr>{rows}</table>")


def model_words(model: ModelInfo) -> str:
    """The model, its parameter count and the input it trained on."""
    counted = ("parameters not recorded" if model.parameters is None
               else f"{model.parameters:,} parameters")
    shape = "x".join(str(d) for d in model.input_shape)
    return f"{model.name}: {counted}, input {shape}, {model.num_classes} classes"


def _grid_words(plan: Plan | None) -> str:
    """The grid as it ran: its description, and what --set changed of it."""
    if plan is None:
        return "not recorded (no readable plan.json)"
    words = f"{plan.grid}: {plan.grid_description}"
    overrides = plan.overrides
    if overrides:
        changed = " ".join(f"--set {axis}={','.join(str(v) for v in values)}"
                           for axis, values in overrides.items())
        words += f"; as run, with {changed}"
    return words


def _busy_words(cell: pd.Series) -> str:
    return "; ".join(escape(str(r)) for r in cell["busy_reasons"] or [])


def answers(run: Run) -> list[str]:
    """The page's answers, built from the cells it can vouch for; where it has none, from the
    others, saying so."""
    cells = run.cells
    lines = []
    trusted = vouched(cells)
    caveat = ""
    if trusted.empty:
        trusted = timed(cells)
        caveat = (" <span class='warn'>(every timed cell was measured while the machine was "
                  "busy: no figure here is vouched for)</span>")
    best = fastest(one_model(trusted))
    left_out = _left_out(cells)
    if best is None:
        return ["No cell trained: see the table for each cell's error.", *left_out]
    lines.append(f"Fastest: <b>{escape(best['key'])}</b> ({_mode_words(best)}) at "
                 f"{_speed(best['examples_per_s'])} examples/s{_each(best)}, needing "
                 f"{_bytes(best['footprint_bytes'])}. {_arithmetic_words(best)}{caveat}")
    lines += _several_models_answer(trusted, best)
    lines.append(_energy_answer(trusted, cells, best))
    lines += left_out
    overall = fastest(one_model(cells))
    if overall["key"] != best["key"]:
        lines.append(f"<span class='warn'>{escape(overall['key'])} measured faster "
                     f"({_speed(overall['examples_per_s'])} examples/s), but while the machine "
                     f"was busy ({_busy_words(overall)}): not counted.</span>")
    small = run.memory_cap_bytes or SMALL_CARD_BYTES
    fits = fastest(one_model(trusted), small)
    if fits is not None and fits["key"] != best["key"]:
        lines.append(f"Fastest within {_bytes(small)}: <b>{escape(fits['key'])}</b> at "
                     f"{_speed(fits['examples_per_s'])} examples/s.")
    elif fits is not None:
        lines.append(f"It fits a card of {_bytes(small)} as well.")
    if run.model.name == LENET:  # the notebook's settings are LeNet's
        lines.append(_notebook_answer(cells, best))
    for dtype, (batch, reason) in largest_batch_per_dtype(run).items():
        batch_words = "none" if pd.isna(batch) else f"{int(batch):,}"
        lines.append(f"Largest batch at {escape(str(dtype))}: {batch_words} "
                     f"({escape(str(reason))}).")
    return lines


def _each(cell: pd.Series) -> str:
    """A cell of several models: how many, and each one's speed."""
    count = int(cell["replicas"])
    return "" if count == 1 else \
        f" in all ({count} models at once, {_speed(cell['examples_per_s_per_model'])} each)"


def _several_models_answer(trusted: pd.DataFrame, best: pd.Series) -> list[str]:
    """The best total of several models trained at once, against the fastest single one."""
    several = several_models(trusted)
    if several.empty or int(best["replicas"]) > 1:
        return []
    top = several.loc[several["examples_per_s"].idxmax()]
    count = int(top["replicas"])
    return [f"Several models at once: <b>{escape(top['key'])}</b> ({_mode_words(top)}, "
            f"{escape(str(top['replica_method']))}) trained {count} at "
            f"{_speed(top['examples_per_s'])} examples/s in all, "
            f"{_speed(top['examples_per_s_per_model'])} each: "
            f"{top['examples_per_s'] / best['examples_per_s']:.2f}x the fastest single model, "
            f"needing {_bytes(top['footprint_bytes'])} ({_bytes(top['footprint_bytes'] / count)} "
            f"a model). {_arithmetic_words(top)}"]


def _arithmetic_words(cell: pd.Series) -> str:
    """The cell's arithmetic rate, and its share of the card's peak where the card is known."""
    if _missing(cell.get("tflop_per_s")):
        return "Its arithmetic rate is not known (the model's FLOPs were not counted)."
    tflops = cell["tflop_per_s"]
    words = f"{_sig3(tflops)} TFLOP/s" if tflops >= 1 else f"{_sig3(tflops * 1000)} GFLOP/s"
    rate = (f"It ran {words} of model arithmetic ({cell['flops_per_example'] / 1e6:,.3g} MFLOP "
            f"an example, forward and backward)")
    card = card_peaks(None if _missing(cell.get("gpu_name")) else str(cell["gpu_name"]))
    if card is None:
        where = "a CPU" if _missing(cell.get("gpu_name")) else escape(str(cell["gpu_name"]))
        return " ".join(filter(None, (
            f"{rate}; no peak is known for {where}, so no share of it is given.",
            launch_words(cell))))
    kind = arithmetic(str(cell["dtype"]), str(cell["precision"]))
    # torch's default precision runs float32 convolutions as TF32 on the tensor cores
    tf32 = ("; its convolutions may run as TF32"
            if kind == "float32" and cell["precision"] == "default" else "")
    return (f"{rate}: <b>{cell['peak_share']:.1%}</b> of the {escape(card.name)}'s dense "
            f"{escape(kind)} peak ({cell['peak_tflop_per_s']:,.1f} TFLOP/s{tf32}). "
            f"{bound_words(cell)}")


# a cell under this share of its roof is held back by neither roof
_FAR_BELOW = 0.10
# a step whose operators take this share of it just to launch is bound by launching them
_LAUNCH_BOUND = 0.5


def bound_words(cell: pd.Series) -> str:
    """What holds a cell back, read off the roofline: the card's bandwidth where its intensity
    lies left of the ridge, its arithmetic right of it, and neither where the cell reached
    under a tenth of its roof; then, where the launch time was measured, how much of the step
    launching its operators takes."""
    launch = launch_words(cell)
    intensity, roof = cell.get("intensity_flop_per_byte"), cell.get("roof_tflop_per_s")
    if _missing(intensity) or _missing(roof):
        return launch
    share = cell["tflop_per_s"] / roof
    traffic = ("an eager step's traffic, unfused" if cell["mode"] == "eager"
               else "an eager step's traffic: its compiled or captured step moves less")
    at = (f"at {intensity:,.1f} FLOP/byte ({traffic}) its roof is {roof:,.1f} TFLOP/s, and it "
          f"reached {share:.0%} of it")
    if share < _FAR_BELOW:
        overhead = launch or "the likely limit is overhead, such as kernel launches and the host."
        return (f"Held back by neither the card's bandwidth nor its arithmetic: {at}. "
                f"{overhead}")
    limit = ("memory bandwidth" if intensity < cell["ridge_flop_per_byte"]
             else "compute")
    return " ".join(filter(None, (f"Bound by {limit}: {at}.", launch)))


def launch_words(cell: pd.Series) -> str:
    """How much of the step launching its operators takes, one after another, from the launch
    time measured on the cell's device; empty where it was not measured."""
    floor, step = cell.get("launch_floor_ms"), cell.get("step_ms_median")
    if _missing(floor) or _missing(step):
        return ""
    share = floor / step
    launches = (f"{int(cell['step_operators']):,} operators take at least {floor:,.2f} ms to "
                f"launch ({cell['launch_us']:.1f} µs each, measured on this device)")
    if cell["mode"] != "eager":
        return (f"Its eager step's {launches}: {share:.0%} of this step's {step:,.2f} ms; mode "
                f"{escape(str(cell['mode']))} launches fewer.")
    if share >= _LAUNCH_BOUND:
        return (f"Bound by launching kernels: its {launches}, {share:.0%} of its {step:,.2f} ms "
                f"step; a CUDA graph or torch.compile launches fewer.")
    return (f"Launching is {share:.0%} of its {step:,.2f} ms step (its {launches}); the rest is "
            f"the work itself and other overhead.")


def _sig3(value) -> str:
    return "not measured" if _missing(value) else f"{value:,.3g}"


def _left_out(cells: pd.DataFrame) -> list[str]:
    """The line naming cells that ran fast but did not train, and why: never an answer."""
    stalled = not_training(cells)
    if stalled.empty:
        return []
    reasons = "; ".join(escape(f"{key}: {why}")
                        for key, why in zip(stalled["key"], stalled["not_learning"]))
    return [f"<span class='warn'>Left out of the answers, as they did not train: {reasons}."
            f"</span>"]


def _notebook_answer(cells: pd.DataFrame, best: pd.Series) -> str:
    nb = notebook_cell(cells)
    if nb is None:
        return ("The run has no cell with the notebook's settings (b256, float32, host loader, "
                "no pinning, eager) to compare with.")
    line = (f"The notebook's settings ({escape(nb['key'])}) reach "
            f"{_speed(nb['examples_per_s'])} examples/s: the fastest cell is "
            f"<b>{best['examples_per_s'] / nb['examples_per_s']:.1f}x</b> faster.")
    if flag(nb["busy"]):
        line += (f" <span class='warn'>The notebook's cell was measured while the machine "
                 f"was busy ({_busy_words(nb)}): the ratio is not vouched for.</span>")
    return line


def _mode_words(cell: pd.Series) -> str:
    """The mode, with what it cost before training began (MLPerf reports compile time, too)."""
    def cache(name: str) -> str:
        words = cell.get(name)
        return "" if _missing(words) else f" ({escape(str(words))} compile cache)"

    words = [f"mode {escape(str(cell['mode']))}"]
    setup = None if _missing(cell.get("setup_s")) else \
        f"{cell['setup_s']:,.1f} s to set up{cache('compile_cache')}"
    if not _missing(cell.get("compile_ahead_s")):
        # the cold compile first: what a user's first run of this cell pays
        ahead = f"compiled ahead in {cell['compile_ahead_s']:,.1f} s{cache('compile_ahead_cache')}"
        words.append(ahead if setup is None else f"{ahead}, then {setup}")
    elif setup is not None:
        words.append(setup)
    if not _missing(cell.get("compile_ahead_error")):
        words.append(f"compiling ahead failed: {escape(str(cell['compile_ahead_error']))}")
    return ", ".join(words)


def _energy_answer(trusted: pd.DataFrame, cells: pd.DataFrame, best: pd.Series) -> str:
    efficient = most_efficient(trusted)
    if efficient is None:
        notes = cells["energy_note"].dropna()
        why = escape(str(notes.iloc[0])) if not notes.empty else "not measured"
        return f"Energy: no cell has a figure ({why})."
    power = ("" if _missing(efficient["mean_power_w"])
             else f"{efficient['mean_power_w']:,.0f} W, ")
    method = ("" if _missing(efficient["energy_method"])
              else f"; {escape(str(efficient['energy_method']))}")
    line = (f"Least energy: <b>{escape(efficient['key'])}</b> ({_mode_words(efficient)}) at "
            f"{efficient['energy_j_per_1000_examples']:,.3g} J per 1,000 examples "
            f"({power}{_speed(efficient['examples_per_s'])} examples/s{method})")
    if efficient["key"] == best["key"]:
        return line + ": the fastest cell is also the most frugal."
    if _missing(best.get("energy_j_per_1000_examples")):
        return line + "; the fastest cell has no energy figure."
    return line + (f"; the fastest cell uses {best['energy_j_per_1000_examples']:,.3g} J per "
                   f"1,000 examples.")


def _predicted(value, note) -> str:
    return "not modelled" if not _missing(note) else _bytes(value)


TABLE_COLUMNS = [
    ("key", "cell", _e),
    ("status", "status", _e),
    ("batch_size", "batch", _e),
    ("examples_per_s", "examples/s", _speed),
    ("examples_per_s_iqr", "IQR", _speed),
    ("step_ms_median", "step ms", _fixed(2)),
    ("setup_s", "setup s", _fixed(1)),
    ("tflop_per_s", "TFLOP/s", lambda v: _sig3(v)),
    ("peak_share", "of the card's peak", lambda v: "" if _missing(v) else f"{v:.1%}"),
    ("energy_j_per_1000_examples", "J per 1k examples", _fixed(3)),
    ("mean_power_w", "mean W", _fixed(0)),
    ("peak_allocated_bytes", "allocated", _bytes),
    ("peak_reserved_bytes", "reserved", _bytes),
    ("nvml_peak_used_bytes", "NVML used", _bytes),
    ("tracked_peak_bytes", "tensors (CPU)", _bytes),
    ("cpu_peak_rss_bytes", "worker RSS", _bytes),
    ("predicted_peak_bytes", "predicted (batch asked)", _bytes),
    ("loss_last", "last loss", _fixed(3)),
    ("busy", "machine while timed", None),
    ("error", "error", lambda v: "" if _missing(v) else escape(str(v))),
]


# shown where some cell trained several models at once
_PER_MODEL_COLUMN = ("examples_per_s_per_model", "examples/s a model", _speed)
# shown where some cell's graphs were compiled ahead: its cold compile, beside its warm setup
_AHEAD_COLUMN = ("compile_ahead_s", "compiled ahead s", _fixed(1))


def cells_table(cells: pd.DataFrame) -> str:
    columns = list(TABLE_COLUMNS)
    if (cells["replicas"] > 1).any():
        columns.insert(columns.index(("examples_per_s_iqr", "IQR", _speed)) + 1,
                       _PER_MODEL_COLUMN)
    if cells["compile_ahead_s"].notna().any():
        columns.insert([name for name, _, _ in columns].index("setup_s"), _AHEAD_COLUMN)
    head = "".join(f"<th>{escape(title)}</th>" for _, title, _ in columns)
    body = []
    for _, row in cells.iterrows():
        tds = []
        for column, _, show in columns:
            if column == "busy":
                tds.append(f"<td>{_machine_words(row)}</td>")
                continue
            if column == "predicted_peak_bytes":
                note = row.get("prediction_note")
                title = "" if _missing(note) else f" title='{escape(str(note))}'"
                tds.append(f"<td{title}>{_predicted(row.get(column), note)}</td>")
                continue
            value = row.get(column)
            noisy = column == "examples_per_s" and flag(row.get("noisy"))
            suspect = column == "examples_per_s" and flag(row.get("busy"))
            tds.append(f"<td{' class=noisy title=noisy' if noisy else ''}>{show(value)}"
                       f"{' (noisy)' if noisy else ''}{' (busy)' if suspect else ''}</td>")
        body.append(f"<tr class='{escape(str(row['status']))}'>{''.join(tds)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _machine_words(row: pd.Series) -> str:
    """Whether the machine was quiet while the cell was timed, and the figures that say so."""
    if _missing(row.get("busy")):
        return "not measured"
    parts = []
    if not _missing(row.get("cpu_other_fraction")):
        parts.append(f"others {row['cpu_other_fraction']:.0%} CPU")
    if not _missing(row.get("cpu_steal_fraction")) and row["cpu_steal_fraction"] > 0:
        parts.append(f"steal {row['cpu_steal_fraction']:.0%}")
    if not _missing(row.get("gpu_sm_clock_min_mhz")) and \
            not _missing(row.get("gpu_sm_clock_max_mhz")):
        parts.append(f"SM {row['gpu_sm_clock_min_mhz']:,.0f}/{row['gpu_sm_clock_max_mhz']:,.0f} "
                     f"MHz")
    if not _missing(row.get("gpu_temperature_max_c")):
        parts.append(f"{row['gpu_temperature_max_c']:.0f} °C")
    verdict = "<span class='warn'>busy</span>" if flag(row["busy"]) else "quiet"
    return f"{verdict} ({escape(', '.join(parts))})" if parts else verdict


def _searches_under_a_cap_alone(run: Run) -> bool:
    """Whether the run's grid searches, but a CPU run of it searched none for want of a memory
    cap (bench.planning.plan.searches); not the smoke grid, which never searches."""
    plan = run.plan
    return (plan is not None and not run.on_gpu and plan.memory_cap_bytes is None
            and not plan.find_max_batch and plan.grid in grid_names()
            and get_grid(plan.grid, on_gpu=False).find_max_batch)


def boundaries_table(run: Run) -> str:
    if run.boundaries.empty:
        return ("<p>No boundary search in this run" + (
            ": on the CPU a search runs under <code>--memory-cap</code>, as on an emulated card; "
            "the host's own memory holds batches far past those a step finishes in seconds."
            if _searches_under_a_cap_alone(run) else ".") + "</p>")
    rows = "".join(
        f"<tr><td>{_e(b['key'])}</td><td>{_e(b.get('max_ok_batch'))}</td>"
        f"<td>{_e(b.get('first_failed_batch'))}</td><td>{_e(b.get('stop_reason'))}</td>"
        f"<td>{_e(b.get('predicted_max_batch'))}</td>"
        f"<td>{_off(b.get('max_ok_batch'), b.get('predicted_max_batch'))}</td>"
        f"<td>{len(b.get('trials') or [])}</td>"
        f"<td>{'' if b.get('failure') is None else escape(str(b.get('failure')))}</td></tr>"
        for _, b in run.boundaries.iterrows())
    pieces = "".join(f"<li>{escape(line)}</li>" for line in _in_pieces(run.boundaries))
    return (f"<p>{_prediction_words(run)}</p>"
            "<table><tr><th>dtype, layout</th><th>largest batch that trained</th>"
            "<th>smallest that failed</th><th>why it stopped</th><th>predicted largest</th>"
            "<th>trained against predicted</th>"
            f"<th>trials</th><th>failure</th></tr>{rows}</table>"
            + (f"<ul>{pieces}</ul>" if pieces else ""))


def _in_pieces(boundaries: pd.DataFrame) -> list[str]:
    """For each search that ended where the card had the room but not in one piece, what the
    allocator said, and what would have held it."""
    lines = []
    for _, b in boundaries.iterrows():
        figures = cuda_oom_figures(b.get("failure"))
        if figures is None or not figures.in_pieces:
            continue
        lines.append(
            f"{b['key']} at {b['first_failed_batch']:,}: the memory was there but not in one "
            f"piece. It asked for {format_bytes(figures.asked_bytes)} with "
            f"{format_bytes(figures.unallocated_bytes)} reserved but unallocated, in blocks "
            f"split for smaller tensors that cannot be handed back (the allocator's "
            f"fragmentation). "
            f"PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True maps memory into one range, so "
            f"such blocks can be joined: a larger batch may train under it.")
    return lines


def _off(found, predicted) -> str:
    """How far the largest batch that trained is from the predicted one, in percent."""
    if _missing(found) or _missing(predicted) or not predicted:
        return ""
    return f"{found / predicted - 1:+.0%}"


def _prediction_words(run: Run) -> str:
    """How the searches' predicted boundaries were made (bench.planning.predict.boundary_batch,
    as each boundary records it)."""
    if run.memory_cap_bytes:
        room = f"the {format_bytes(run.memory_cap_bytes)} cap"
    elif run.on_gpu:
        room = "the card's free memory"
    else:
        room = "the host's available memory"
    methods = set(run.boundaries.get("prediction", pd.Series(dtype=object)).dropna())
    if methods and run.on_gpu and not run.memory_cap_bytes:
        room += f" less {format_bytes(CONTEXT_ALLOWANCE_BYTES)} for the CUDA context"
    if "allocator" in methods:
        return ("Predicted: one trial's allocations replayed through PyTorch's caching "
                f"allocator, its fragmentation included, in {room}. Each search brackets the "
                "boundary from its prediction, then bisects.")
    if not methods:
        return (f"Predicted: where one step's live tensors meet {room} (a run from before the "
                f"allocator was replayed; on a GPU its fragmentation ends huge batches sooner).")
    settings = run.env.get("memory_settings") or {}
    changed = {k: v for k, v in settings.items() if k.endswith("ALLOC_CONF") and v.strip()}
    why = "".join(f": the allocator ran with <code>{escape(k)}={escape(v)}</code>, whose "
                  f"placement is not replayed" for k, v in changed.items() if run.on_gpu)
    return f"Predicted: where one step's live tensors meet {room}{why}."


def comparison_table(changes, only_base, only_new) -> str:
    rows = []
    for c in changes:
        cells = "".join(f"<td>{escape(text)}</td>" for text in c.display())
        rows.append(f"<tr class='{'fail' if c.failures else ''}'>{cells}"
                    f"<td>{'<br>'.join(escape(f) for f in c.failures)}</td></tr>")
    extra = "".join(f"<li>only in the base run: {escape(k)}</li>" for k in only_base)
    extra += "".join(f"<li>only in the new run: {escape(k)}</li>" for k in only_new)
    return ("<table><tr><th>cell</th><th>examples/s base</th><th>new</th><th>change</th>"
            "<th>peak base</th><th>new</th><th>change</th><th>regression</th></tr>"
            f"{''.join(rows)}</table><ul>{extra}</ul>")


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts, a missing figure as None (pandas holds it as NaN)."""
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def time_table(spent: dict[str, float]) -> str | None:
    """The seconds each phase of the run took, summed over its cells and searches."""
    if not spent:
        return None
    total = sum(spent.values())
    rows = "".join(f"<tr><td>{escape(name)}</td><td>{seconds:,.1f}</td>"
                   f"<td>{seconds / total:.0%}</td></tr>" for name, seconds in spent.items())
    return ("<p>Summed over the cells and the boundary searches (workers side by side overlap); "
            "<code>bench.run</code>'s summary adds its own start, the planning and this "
            "page.</p><table><tr><th>phase</th><th>seconds</th><th>share</th></tr>"
            f"{rows}</table>")


def page(run: Run, images: list[tuple[str, str]], missing: list[str],
         comparison: str | None = None, base_name: str | None = None,
         trend: str | None = None) -> str:
    device = device_words(run)
    device = "CPU" if device.startswith("CPU: ") else device
    name = "LeNet" if run.model.name == LENET else run.model.name
    spent = phases(_records(run.cells), _records(run.boundaries))  # the header's and the table's
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>{escape(name)} bench: {escape(device)}</title><style>{CSS}</style></head>"
             f"<body>", f"<h1>{escape(name)} training bench on {escape(device)}</h1>",
             header(run, spent)]
    for warning in run.warnings:
        parts.append(f"<p class='warn'>{escape(warning)}</p>")
    if run.plan and run.plan.data_notice:
        parts.append(f"<p class='warn'>{escape(run.plan.data_notice)}</p>")
    if comparison is not None:
        parts += [f"<h2>Against {escape(base_name or 'the base run')}: worst first</h2>",
                  comparison]
    if run.cells.empty:
        planned = len(run.plan.cells) if run.plan else 0
        parts += ["<h2>No cell has finished</h2>",
                  f"<p>This run holds no result yet ({planned} cells planned). Carry it on with "
                  f"<code>python -m bench.run --resume {escape(str(run.path))}</code>.</p>",
                  "</body></html>"]
        return "\n".join(parts)
    parts.append("<h2>The answer</h2><ul>" + "".join(f"<li>{line}</li>" for line in answers(run))
                 + "</ul>")
    words = (findings.trust_findings(run.cells) + findings.speed_findings(run.cells)
             + findings.memory_story(run) + findings.warnings_about(run.cells))
    if words:
        parts.append("<h2>What the numbers say</h2><ul>"
                     + "".join(f"<li>{escape(w)}</li>" for w in words) + "</ul>")
    if trend is not None:
        parts.append(trend)
    if images:
        parts.append("<h2>Plots</h2>")
        parts += [f"<p><img src='{escape(name)}' alt='{escape(alt)}'></p>"
                  for name, alt in images]
    parts += [f"<p>{escape(line)}</p>" for line in missing]
    placed = where_table(run.cells)
    if placed:
        parts += ["<h2>Where the cells ran</h2>",
                  "<p>Cells side by side on one machine share its memory bandwidth and, on the "
                  "CPU, its caches: compare speeds within a worker before across workers.</p>",
                  placed]
    times = time_table(spent)
    if times:
        parts += ["<h2>Where the time went</h2>", times]
    parts += ["<h2>Every cell</h2>", cells_table(run.cells),
              "<h2>OOM boundary</h2>", boundaries_table(run), "</body></html>"]
    return "\n".join(parts)
