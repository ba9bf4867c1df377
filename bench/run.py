"""Run a grid of LeNet training cells and record speed and memory, surviving OOM.

    python -m bench.run --grid default
    python -m bench.run --grid smoke --set batch_size=64,512 --dry-run
    python -m bench.run --grid default --memory-cap 2GiB --out runs/capped
    python -m bench.run --resume runs/20261127-101500

Each cell runs in a spawned worker; the parent appends one fsync'd row per cell to
RUN_DIR/results.jsonl, so a killed run loses at most the cell in flight and `--resume` carries on.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

from bench import env as run_env
from bench import store
from bench.boundary import Boundary, find_max_batch
from bench.cell import Settings
from bench.doctor import CONTEXT_ALLOWANCE_BYTES, report
from bench.grid import Config, GridError, get_grid, grid_names, parse_set
from bench.nvml import NvmlReader, NvmlUnavailable
from bench.predict import memory_model
from bench.row import Row
from bench.units import format_bytes, parse_bytes
from bench.worker import Worker, WorkerDied, WorkerSpec
from lenet.cli import (
    OneLineParser,
    UsageError,
    fail,
    positive_float,
    positive_int,
    resolve_device,
)
from lenet.data import DataError, fashion_mnist_root

PROG = "python -m bench.run"


def _parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--grid", default="default", help=f"one of: {', '.join(grid_names())}")
    p.add_argument("--set", action="append", default=[], metavar="AXIS=V1,V2",
                   help="override an axis (batch_size, dtype, channels_last, placement, "
                        "pin_memory, num_workers)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda:N")
    p.add_argument("--out", type=Path, help="run directory (default runs/<timestamp>)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="finish an interrupted run")
    p.add_argument("--memory-cap", type=_size, metavar="SIZE",
                   help="emulate a smaller card, e.g. 2GiB: real OOMs past it")
    p.add_argument("--find-max-batch", action="store_true", default=None,
                   help="search the OOM boundary per dtype and layout (on in default and full)")
    p.add_argument("--no-find-max-batch", dest="find_max_batch", action="store_false")
    p.add_argument("--boundary-budget", type=positive_float, metavar="SECONDS",
                   help="time for all boundary searches together (default: the grid's)")
    p.add_argument("--data", choices=("auto", "real", "synthetic"), default="auto",
                   help="real Fashion-MNIST, synthetic, or real where installed (auto)")
    p.add_argument("--data-root", help="a folder holding Fashion-MNIST's IDX files")
    p.add_argument("--repeats", type=positive_int, help="timed repeats per cell (at least 5)")
    p.add_argument("--cell-timeout", type=positive_float, default=900, metavar="SECONDS",
                   help="stop a cell (and its worker) that runs longer than this (default 900)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and stop")
    p.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    return p


def _size(text: str) -> int:
    import argparse

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _resolve_data(choice: str, data_root: str | None) -> tuple[str, str | None]:
    """(source, notice): real data when asked or found, else synthetic, saying so."""
    if choice == "synthetic":
        return "synthetic", None
    try:
        fashion_mnist_root(data_root)
    except DataError as exc:
        if choice == "real" or data_root is not None:
            raise
        return "synthetic", f"using synthetic data ({exc})"
    return "fashion-mnist", None


def _capacity_bytes(device: torch.device, cap: int | None) -> tuple[int | None, str]:
    """What a cell may fill: the cap, the GPU's free memory, or the host's available memory."""
    if cap is not None:
        return cap, f"the {format_bytes(cap)} cap"
    if device.type == "cuda":
        try:
            with NvmlReader(device.index or 0) as reader:
                return reader.memory().free_bytes, "the GPU's free memory"
        except NvmlUnavailable:
            return None, "an unknown GPU capacity"
    try:
        import os

        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None, "an unknown host capacity"
    return available, "the host's available memory"


def _device_type(config: Config) -> str:
    return torch.device(config.device).type


def plan_rows(cells: list[Config], capacity: int | None) -> list[dict]:
    rows = []
    for config in cells:
        predicted = memory_model(config.dtype, config.channels_last, config.placement,
                                 device_type=_device_type(config)).peak_bytes(config.batch_size)
        rows.append({**config.as_dict(), "key": config.key(), "predicted_peak_bytes": predicted,
                     "fits": None if capacity is None else predicted <= capacity})
    return rows


def plan_boundaries(cells: list[Config], capacity: int | None) -> list[dict]:
    """The predicted OOM boundary per dtype and layout, on device-resident data."""
    return [{"key": _boundary_key(c), "predicted_max_batch": None if capacity is None else
             memory_model(c.dtype, c.channels_last, "device", device_type=_device_type(c))
             .max_batch(capacity)}
            for c in _boundary_configs(cells)]


def _print_plan(plan: dict, as_json: bool) -> None:
    if as_json:
        import json

        print(json.dumps(plan, indent=1))
        return
    print(f"{len(plan['cells'])} cells on {plan['device']}; 'fits' is the predicted allocator "
          f"peak against {plan['capacity']}")
    for row in plan["cells"]:
        verdict = {True: "fits", False: "DOES NOT FIT", None: "?"}[row["fits"]]
        print(f"  {row['key']:<40} predicted {format_bytes(row['predicted_peak_bytes']):>10}"
              f"  {verdict}")
    print(f"predicted OOM boundary (largest batch) against {plan['capacity']}:")
    for b in plan["boundaries"]:
        print(f"  {b['key']:<18} {b['predicted_max_batch'] or '?':>10}")


class Runner:
    """Feeds cells to a worker, replacing it when it dies or holds on to memory."""

    def __init__(self, spec: WorkerSpec, cuda_index: int | None, timeout_s: float | None = None):
        self.spec, self.cuda_index, self.timeout_s = spec, cuda_index, timeout_s
        self.worker: Worker | None = None
        self.nvml_before: dict = {}

    def _nvml_snapshot(self) -> dict:
        """Device-wide memory before the worker's CUDA context exists: the baseline."""
        if self.cuda_index is None:
            return {"nvml_note": "no GPU"}
        try:
            with NvmlReader(self.cuda_index) as reader:
                info = reader.memory()
        except NvmlUnavailable as exc:
            return {"nvml_note": str(exc)}
        return {"nvml_total_bytes": info.total_bytes,
                "nvml_driver_reserved_bytes": info.reserved_bytes,
                "nvml_baseline_used_bytes": info.used_bytes}

    def _ensure_worker(self) -> Worker:
        if self.worker is None:
            self.nvml_before = self._nvml_snapshot()
            self.worker = Worker(self.spec)
        return self.worker

    def retire_worker(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    def cell(self, config: Config, predicted: int) -> Row:
        try:
            row, healthy = self._ensure_worker().cell(config, self.timeout_s)
        except WorkerDied as exc:
            self.worker = None
            row, healthy = _failed_row(config, self.spec.data, exc.kind, str(exc)), True
        except RuntimeError as exc:
            self.retire_worker()
            row, healthy = _failed_row(config, self.spec.data, "error", str(exc)), True
        for name, value in self.nvml_before.items():
            if getattr(row, name) is None:
                setattr(row, name, value)
        row.predicted_peak_bytes = predicted
        row.memory_cap_bytes = self.spec.memory_cap_bytes
        # memory that did not come back, or a CUDA error that may be sticky: start afresh
        if not healthy or (row.status == "error" and config.device.startswith("cuda")):
            self.retire_worker()
        return row

    def trial(self, config: Config, batch_size: int) -> dict:
        """One boundary trial; a trial that fails for any reason is a finding, never a crash."""
        try:
            result = self._ensure_worker().trial(config, batch_size, self.timeout_s)
        except WorkerDied as exc:
            self.worker = None
            return {"batch_size": batch_size, "outcome": exc.kind, "error": str(exc)}
        except RuntimeError as exc:  # a worker that could not start, or a handler that raised
            self.retire_worker()
            return {"batch_size": batch_size, "outcome": "error", "error": str(exc)[-2000:]}
        if not result["healthy"] or result["attempt"]["outcome"] == "error":
            self.retire_worker()
        return result["attempt"]


def _failed_row(config: Config, data: str, kind: str, error: str) -> Row:
    return Row.for_config(config, data, "error", error_kind=kind, error=error[-2000:],
                          attempts=[{"batch_size": config.batch_size, "outcome": kind,
                                     "error": error}])


def _boundary_configs(cells: list[Config]) -> list[Config]:
    """One search per dtype and layout, on device-resident data (the loader is not the limit)."""
    seen = {}
    for c in cells:
        seen.setdefault((c.dtype, c.channels_last), Config(
            batch_size=1, dtype=c.dtype, channels_last=c.channels_last, placement="device",
            device=c.device))
    return list(seen.values())


def _boundary_key(config: Config) -> str:
    return f"{config.dtype}-{config.layout}"


def _summary(rows: list[dict], boundaries: list[dict]) -> list[str]:
    lines = []
    done = [r for r in rows if r.get("examples_per_s")]
    done.sort(key=lambda r: r["examples_per_s"], reverse=True)
    if done:
        lines.append("fastest cells:")
        for r in done[:5]:
            peak = r.get("peak_allocated_bytes") or r.get("tracked_peak_bytes")
            lines.append(f"  {r['key']:<40} {r['examples_per_s']:>12,.0f} examples/s  "
                         f"step {r['step_ms_median']:.2f} ms  peak {format_bytes(peak)}"
                         f"{'  (noisy)' if r.get('noisy') else ''}")
    failed = [r for r in rows if r["status"] != "ok"]
    for r in failed:
        lines.append(f"  {r['key']}: {r['status']}"
                     f"{' at batch ' + str(r['batch_size']) if r.get('batch_size') else ''}"
                     f"{' - ' + r['error'][:160] if r.get('error') else ''}")
    if boundaries:
        lines.append("OOM boundary (largest batch that trained, why it stopped):")
        for b in boundaries:
            lines.append(f"  {b['key']:<18} {b['max_ok_batch'] or 'none':>10}  {b['stop_reason']}"
                         f"  (predicted {b['predicted_max_batch'] or '?'})")
    return lines


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (UsageError, GridError, DataError, store.RunDirError) as exc:
        fail(PROG, str(exc))


def _plan_device(args) -> tuple[torch.device, str | None]:
    """The device, and a notice when a dry run plans for a GPU that is not here."""
    wants_cuda = args.device.startswith("cuda")
    if not (args.dry_run and wants_cuda and not torch.cuda.is_available()):
        return resolve_device(args.device), None
    if args.memory_cap is None:
        raise UsageError(f"--dry-run --device {args.device} plans for a GPU that is not here: "
                         f"give its memory with --memory-cap, e.g. --memory-cap 80GiB")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"unknown device {args.device!r}; use auto, cpu or cuda:N") from None
    return torch.device("cuda", device.index or 0), (
        f"planning for a GPU that is not here, with {format_bytes(args.memory_cap)} for the "
        f"allocator (--memory-cap); a real card also needs about "
        f"{format_bytes(CONTEXT_ALLOWANCE_BYTES)} for the CUDA context")


def _new_plan(args) -> tuple[dict, list[Config]]:
    device, device_notice = _plan_device(args)
    grid = get_grid(args.grid, device.type == "cuda", parse_set(args.set))
    if args.repeats is not None and args.repeats < 5:
        raise UsageError(f"--repeats {args.repeats}: at least 5 are needed for a median and IQR")
    cells = grid.cells(str(device))
    settings = Settings(repeats=args.repeats or grid.repeats, min_repeat_s=grid.min_repeat_s,
                        warmup_steps=grid.warmup_steps)
    data, notice = _resolve_data(args.data, args.data_root)
    plan = {
        "grid": grid.name, "grid_description": grid.description, "overrides": grid.overrides,
        "device": str(device), "device_notice": device_notice, "data": data,
        "data_notice": notice, "data_root": args.data_root,
        "memory_cap_bytes": args.memory_cap, "cell_timeout_s": args.cell_timeout,
        "find_max_batch": grid.find_max_batch if args.find_max_batch is None
        else args.find_max_batch,
        "boundary_limit": grid.boundary_limit,
        "boundary_budget_s": args.boundary_budget or grid.boundary_budget_s,
        "settings": asdict(settings), "cells": [c.as_dict() for c in cells],
    }
    return plan, cells


def _run(args) -> int:
    if args.resume is not None:
        if args.out is not None:
            raise UsageError("--resume continues a run where it is; drop --out")
        plan = store.open_existing(args.resume)
        run_dir = args.resume
        cells = [Config(**c) for c in plan["cells"]]
        resolve_device(plan["device"])  # the same device must still be there
    else:
        plan, cells = _new_plan(args)
        run_dir = args.out or store.default_run_dir()
    device = torch.device(plan["device"])
    # notices go to standard error: under --json, standard output is the JSON alone
    if device.type == "cpu" and args.resume is None:
        why = "no GPU" if not torch.cuda.is_available() else "--device cpu"
        print(f"{why}: grid '{plan['grid']}' runs CPU-sized settings "
              f"({plan['grid_description']})", file=sys.stderr)
    for notice in (plan.get("device_notice"), plan.get("data_notice")):
        if notice:
            print(notice, file=sys.stderr)
    capacity, capacity_words = _capacity_bytes(device, plan["memory_cap_bytes"])
    planned = plan_rows(cells, capacity)
    if args.dry_run:
        _print_plan({"device": str(device), "capacity_bytes": capacity,
                     "capacity": capacity_words, "cells": planned,
                     "boundaries": plan_boundaries(cells, capacity)}, args.json)
        return 0
    if device.type == "cuda":
        ok, lines = report(device, min(p["predicted_peak_bytes"] for p in planned))
        if not ok:
            raise UsageError(lines[-1].removeprefix("smallest cell: "))
    if args.resume is None:
        store.create(run_dir, plan, run_env.collect(device))
    results, boundaries_path = run_dir / store.RESULTS, run_dir / store.BOUNDARIES
    if store.cut_torn_tail(results):
        print(f"cut a torn last line from {results} (the cell in flight when it was killed)")
    store.cut_torn_tail(boundaries_path)
    done = {r["key"] for r in store.read_rows(results)[0]}
    todo = [(c, p) for c, p in zip(cells, planned) if c.key() not in done]
    if done:
        print(f"resuming {run_dir}: {len(done)} cells done, {len(todo)} to go")
    spec = WorkerSpec(plan["device"], plan["data"], plan["data_root"],
                      Settings(**plan["settings"]), plan["memory_cap_bytes"])
    runner = Runner(spec, device.index or 0 if device.type == "cuda" else None,
                    plan.get("cell_timeout_s"))
    start = time.monotonic()
    try:
        with tqdm(todo, desc="cells", unit="cell", file=sys.stderr) as bar:
            for config, planned_row in bar:
                bar.set_postfix_str(config.key())
                row = runner.cell(config, planned_row["predicted_peak_bytes"])
                store.append_row(results, row.as_dict())
        if plan["find_max_batch"]:
            _search_boundaries(runner, cells, plan, capacity, boundaries_path)
    except KeyboardInterrupt:
        print(f"\ninterrupted: every finished cell is saved in {results}; "
              f"carry on with: {PROG} --resume {run_dir}", file=sys.stderr)
        return 130
    finally:
        runner.retire_worker()
    rows, warnings = store.read_rows(results)
    boundary_rows, _ = store.read_rows(boundaries_path)
    print("\n".join(warnings + _summary(rows, boundary_rows)))
    print(f"{len(todo)} cells in {time.monotonic() - start:.0f} s; results: {results}")
    if not args.no_report:
        _write_report(run_dir)
    return 0


def _search_boundaries(runner: Runner, cells: list[Config], plan: dict, capacity: int | None,
                       path: Path) -> None:
    done = {b["key"] for b in store.read_rows(path)[0]}
    configs = [c for c in _boundary_configs(cells) if _boundary_key(c) not in done]
    if not configs:
        return
    budget_s = plan["boundary_budget_s"] / len(configs)
    start_batch = min(c.batch_size for c in cells)
    for config in tqdm(configs, desc="OOM boundary", unit="search", file=sys.stderr):
        model = memory_model(config.dtype, config.channels_last, "device",
                             device_type=_device_type(config))
        boundary = Boundary(_boundary_key(config), config.dtype, config.channels_last, "device",
                            predicted_max_batch=model.max_batch(capacity) if capacity else None)
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
