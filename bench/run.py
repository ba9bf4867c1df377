"""Run a grid of LeNet training cells and record speed and memory, surviving OOM.

    python -m bench.run --grid default
    python -m bench.run --grid smoke --set batch_size=64,512 --dry-run
    python -m bench.run --grid default --memory-cap 2GiB --out runs/capped
    python -m bench.run --resume runs/20261127-101500

Each cell runs in a spawned worker; the parent appends one fsync'd row per cell to
RUN_DIR/results.jsonl, so a killed run loses at most the cell in flight and `--resume` carries on.
Exit status: 0 the run finished with figures; 1 it stopped before the end (a write failed) or no
cell produced a figure; 2 bad input; 128 + the signal's number when a signal stopped it (130 for
Ctrl-C, 143 for SIGTERM, 129 for SIGHUP), the rows kept and the resume command printed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from bench import env as run_env
from bench import plan as planning
from bench import store
from bench.boundary import Boundary, find_max_batch
from bench.doctor import report
from bench.grid import AXES, LENET, Config, GridError, grid_names
from bench.models import ModelError
from bench.outcome import Outcome
from bench.predict import model_for, unmodelled
from bench.runner import Runner
from bench.schema import NewerSchemaError
from bench.units import format_bytes, parse_bytes
from bench.worker import WorkerSpec
from lenet.cli import (
    OneLineParser,
    UsageError,
    fail,
    positive_float,
    positive_int,
    resolve_device,
)
from lenet.data import DataError

PROG = "python -m bench.run"
# What a new run uses where the command line is silent. --resume takes none of these: the run
# carries on with its own plan.
DEFAULTS = {"grid": "default", "device": "auto", "data": "auto", "cell_timeout": 900.0,
            "model": LENET}
PLAN_OPTIONS = ("grid", "set", "device", "data", "data_root", "memory_cap", "cell_timeout",
                "find_max_batch", "boundary_budget", "repeats", "model", "input_shape")
SMALLEST_CAP_BYTES = 2**20  # LeNet's weights and one small step
LARGEST_CAP_BYTES = 2**50  # a PiB: past any card or host


class Stopped(BaseException):
    """SIGTERM or SIGHUP (what schedulers and `timeout` send): stop as Ctrl-C stops."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop(signum, frame):
    raise Stopped(signum)


def _parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--grid", help=f"one of: {', '.join(grid_names())} (default: default)")
    p.add_argument("--set", action="append", default=[], metavar="AXIS=V1,V2",
                   help=f"override an axis ({', '.join(AXES)})")
    p.add_argument("--device", help="auto (the default), cpu or cuda:N")
    p.add_argument("--model", help="lenet (the default), torchvision:NAME (randomly "
                                   "initialised) or package.module:factory (your own)")
    p.add_argument("--input-shape", metavar="CxHxW",
                   help="one example's shape where not the model's own, e.g. 3x64x64")
    p.add_argument("--out", type=_directory, help="run directory (default runs/<timestamp>)")
    p.add_argument("--resume", type=_directory, metavar="RUN_DIR",
                   help="finish an interrupted run, with its own plan")
    p.add_argument("--memory-cap", type=_memory_cap, metavar="SIZE",
                   help="emulate a smaller card, e.g. 2GiB: real OOMs past it")
    p.add_argument("--find-max-batch", action="store_true", default=None,
                   help="search the OOM boundary per dtype and layout (on in default and full)")
    p.add_argument("--no-find-max-batch", dest="find_max_batch", action="store_false")
    p.add_argument("--boundary-budget", type=positive_float, metavar="SECONDS",
                   help="time for all boundary searches together (default: the grid's)")
    p.add_argument("--data", choices=("auto", "real", "synthetic"),
                   help="real Fashion-MNIST, synthetic, or real where installed (auto, the "
                        "default)")
    p.add_argument("--data-root", help="a folder holding Fashion-MNIST's IDX files")
    p.add_argument("--repeats", type=positive_int, help="timed repeats per cell (at least 5)")
    p.add_argument("--cell-timeout", type=positive_float, metavar="SECONDS",
                   help="stop a cell (and its worker) that runs longer than this (default 900)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and stop")
    p.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    return p


def _memory_cap(text: str) -> int:
    import argparse

    try:
        value = parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not SMALLEST_CAP_BYTES <= value <= LARGEST_CAP_BYTES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is {value:,} bytes; a cap must lie between 1 MiB and 1 PiB")
    return value


def _directory(text: str) -> Path:
    import argparse

    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; name a directory")
    return Path(text)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    try:
        return _run(args)
    except (UsageError, GridError, DataError, ModelError, store.RunDirError,
            NewerSchemaError) as exc:
        fail(PROG, str(exc))


def _open_plan(args) -> tuple[dict, list[Config], Path, bool]:
    """(plan, cells, run directory, resumed): a new plan, or the plan of the run to resume."""
    if args.resume is None:
        for name, value in DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
        plan, cells = planning.new_plan(args)
        return plan, cells, args.out or store.default_run_dir(), False
    given = [f"--{n.replace('_', '-')}" for n in PLAN_OPTIONS if getattr(args, n) not in (None, [])]
    if args.out is not None:
        given.append("--out")
    plan = store.open_existing(args.resume)
    if given:
        raise UsageError(f"--resume carries on {args.resume} with its own plan (grid "
                         f"'{plan['grid']}' on {plan['device']}); drop {', '.join(given)}, or "
                         f"start a new run")
    cells = planning.cells_of(plan, str(args.resume / store.PLAN))
    resolve_device(plan["device"])  # the same device must still be there
    return plan, cells, args.resume, True


def _announce(plan: dict, device: torch.device, resumed: bool) -> None:
    """Notices, on standard error: under --json, standard output is the JSON alone."""
    if device.type == "cpu" and not resumed:
        why = "no GPU" if not torch.cuda.is_available() else "--device cpu"
        print(f"{why}: grid '{plan['grid']}' runs CPU-sized settings "
              f"({plan['grid_description']})", file=sys.stderr)
    for notice in (plan["device_notice"], plan["data_notice"],
                   *planning.skipped_words(plan["skipped"])):
        if notice:
            print(notice, file=sys.stderr)


def _preflight(device: torch.device, cells: list[Config]) -> None:
    if device.type == "cuda":
        checkup = report(device, planning.smallest_need_bytes(cells))
        if not checkup.fits:
            raise UsageError(checkup.verdict)


def _todo(run_dir: Path, cells: list[Config], planned: list[dict]) -> list[tuple]:
    """The cells still to run; refuses rows of cells the plan does not hold (two runs mixed)."""
    results = run_dir / store.RESULTS
    if store.cut_torn_tail(results):
        print(f"cut a torn last line from {results} (the cell in flight when it was killed)")
    store.cut_torn_tail(run_dir / store.BOUNDARIES)
    rows, warnings = store.read_results(results)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    done = {r["key"] for r in rows}
    strangers = sorted(done - {c.key() for c in cells})
    if strangers:
        raise store.RunDirError(
            f"{results} holds {len(strangers)} rows of cells that {store.PLAN} does not plan "
            f"(such as {strangers[0]}): it mixes two runs; start a new run with another --out")
    todo = [(c, p) for c, p in zip(cells, planned) if c.key() not in done]
    if done:
        print(f"resuming {run_dir}: {len(done)} cells done, {len(todo)} to go")
    return todo


def _run(args) -> int:
    plan, cells, run_dir, resumed = _open_plan(args)
    device = torch.device(plan["device"])
    _announce(plan, device, resumed)
    capacity, capacity_words = planning.capacity_bytes(device, plan["memory_cap_bytes"])
    planned = planning.plan_rows(cells, capacity)
    if args.dry_run:
        planning.print_plan({"device": str(device), "capacity_bytes": capacity,
                             "capacity": capacity_words, "cells": planned,
                             "boundaries": planning.plan_boundaries(cells, capacity)}, args.json)
        return 0
    _preflight(device, cells)
    store.make_dir(run_dir)
    with store.locked(run_dir):
        if not resumed:
            store.create(run_dir, plan, run_env.collect(device))
        todo = _todo(run_dir, cells, planned)
        spec = WorkerSpec(plan["device"], plan["data"], plan["data_root"],
                          planning.settings_of(plan, str(run_dir / store.PLAN)),
                          plan["memory_cap_bytes"], plan["model"]["name"], plan["input_shape"])
        runner = Runner(spec, device.index or 0 if device.type == "cuda" else None,
                        plan["cell_timeout_s"])
        start = time.monotonic()
        stopped = _measure(runner, todo, cells, plan, capacity, run_dir)
        if stopped is not None:
            return stopped
        return _finish(run_dir, len(todo), time.monotonic() - start, args.no_report)


def _measure(runner: Runner, todo: list[tuple], cells: list[Config], plan: dict,
             capacity: int | None, run_dir: Path) -> int | None:
    """Run the cells, then the boundary searches. None when done, else the exit status of a run
    that was stopped, having said what is kept and how to carry on."""
    results = run_dir / store.RESULTS
    carry_on = f"carry on with: {PROG} --resume {run_dir}"
    try:
        with tqdm(todo, desc="cells", unit="cell", file=sys.stderr) as bar:
            for config, planned_row in bar:
                bar.set_postfix_str(config.key())
                row = runner.cell(config, planned_row["predicted_peak_bytes"],
                                  planned_row["prediction_note"])
                row.model_fingerprint = plan["model"]["fingerprint"]
                store.append_row(results, row.as_dict())
        if plan["find_max_batch"]:
            _search_boundaries(runner, cells, plan, capacity, run_dir / store.BOUNDARIES)
    except KeyboardInterrupt:
        runner.kill_worker()
        print(f"\ninterrupted: every finished cell is saved in {results}; {carry_on}",
              file=sys.stderr)
        return 128 + signal.SIGINT
    except Stopped as exc:
        runner.kill_worker()
        print(f"\nstopped by {signal.Signals(exc.signum).name}: every finished cell is saved in "
              f"{results}; {carry_on}", file=sys.stderr)
        return 128 + exc.signum
    except store.StoreWriteError as exc:
        runner.kill_worker()
        kept = len(store.read_results(results)[0])
        print(f"{exc}; the {kept} rows written before it are safe; make room (or fix the file), "
              f"then {carry_on}", file=sys.stderr)
        return 1
    finally:
        runner.retire_worker()
    return None


def _finish(run_dir: Path, ran: int, elapsed_s: float, no_report: bool) -> int:
    """The summary, the report, and the exit status: 1 where no cell produced a figure."""
    results = run_dir / store.RESULTS
    rows, warnings = store.read_results(results)
    boundary_rows, _ = store.read_boundaries(run_dir / store.BOUNDARIES)
    print("\n".join(warnings + _summary(rows, boundary_rows)))
    print(f"{ran} cells in {elapsed_s:.0f} s; results: {results}")
    if not no_report:
        _write_report(run_dir)
    if not any(r["examples_per_s"] for r in rows):
        print("no cell produced a figure: every cell failed (the errors are above and in "
              f"{results})", file=sys.stderr)
        return 1
    return 0


def _summary(rows: list[dict], boundaries: list[dict]) -> list[str]:
    lines = []
    done = [r for r in rows if r["examples_per_s"]]
    done.sort(key=lambda r: r["examples_per_s"], reverse=True)
    if done:
        lines.append("fastest cells:")
        for r in done[:5]:
            peak = r["peak_allocated_bytes"] or r["tracked_peak_bytes"]
            lines.append(f"  {r['key']:<40} {r['examples_per_s']:>12,.0f} examples/s  "
                         f"step {r['step_ms_median']:.2f} ms  peak {format_bytes(peak)}"
                         f"{'  (noisy)' if r['noisy'] else ''}"
                         f"{'  (busy: ' + '; '.join(r['busy_reasons']) + ')' if r['busy'] else ''}")
    failed = [r for r in rows if r["status"] != Outcome.OK]
    for r in failed:
        lines.append(f"  {r['key']}: {r['status']}"
                     f"{' at batch ' + str(r['batch_size']) if r['batch_size'] else ''}"
                     f"{' - ' + r['error'][:160] if r['error'] else ''}")
    if boundaries:
        lines.append("OOM boundary (largest batch that trained, why it stopped):")
        for b in boundaries:
            lines.append(f"  {b['key']:<18} {b['max_ok_batch'] or 'none':>10}  {b['stop_reason']}"
                         f"  (predicted {b['predicted_max_batch'] or '?'})")
    return lines


def _search_boundaries(runner: Runner, cells: list[Config], plan: dict, capacity: int | None,
                       path: Path) -> None:
    done = {b["key"] for b in store.read_boundaries(path)[0]}
    configs = [c for c in planning.boundary_configs(cells) if c.boundary_key() not in done]
    if not configs:
        return
    budget_s = plan["boundary_budget_s"] / len(configs)
    start_batch = min(c.batch_size for c in cells)
    for config in tqdm(configs, desc="OOM boundary", unit="search", file=sys.stderr):
        boundary = Boundary(config, predicted_max_batch=model_for(config).max_batch(capacity)
                            if capacity and not unmodelled(config) else None)
        find_max_batch(lambda batch, c=config: runner.trial(replace(c, batch_size=batch), batch),
                       boundary, start_batch, plan["boundary_limit"], budget_s)
        store.append_row(path, boundary.as_dict())


def _write_report(run_dir: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "reports", str(run_dir)])
    if result.returncode != 0:
        print(f"the report could not be written; the results are safe in {run_dir}; "
              f"retry with: python -m reports {run_dir}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
