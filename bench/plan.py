"""A run's plan: the cells a grid gives on a device, each with its predicted peak and whether it
fits, and the predicted OOM boundary per dtype and layout. `--dry-run` prints it; a run stores it
as plan.json and `--resume` reads it back."""

from __future__ import annotations

from dataclasses import asdict, replace

import torch

from bench.grid import COMPILED_MODES, LENET, Config, Grid, batch_sizes, get_grid, parse_set
from bench.models import ModelSpec, describe, parse_input_shape, resolve
from bench.nvml import NvmlReader, NvmlUnavailable
from bench.predict import CONTEXT_ALLOWANCE_BYTES, model_for, unmodelled
from bench.schema import SCHEMA_VERSION
from bench.settings import Settings
from bench.store import RunDirError
from bench.units import format_bytes
from lenet.cli import UsageError, resolve_device
from lenet.data import DataError, fashion_mnist_root


def resolve_data(choice: str, data_root: str | None,
                 model: ModelSpec | None = None) -> tuple[str, str | None]:
    """(source, notice): real data when asked or found, else synthetic, saying so. Fashion-MNIST
    is LeNet's: another model trains on synthetic data of its input shape."""
    if model is not None and not model.is_lenet:
        if choice == "real" or data_root is not None:
            raise UsageError(f"Fashion-MNIST is LeNet's data: {model.name} trains on synthetic "
                             f"data of its input shape ({model.shape_words}); drop --data real "
                             f"and --data-root")
        return "synthetic", (f"{model.name} trains on synthetic data of its input shape "
                             f"({model.shape_words}, {model.num_classes} classes)")
    if choice == "synthetic":
        return "synthetic", None
    try:
        fashion_mnist_root(data_root)
    except DataError as exc:
        if choice == "real" or data_root is not None:
            raise
        return "synthetic", f"using synthetic data ({exc})"
    return "fashion-mnist", None


def capacity_bytes(device: torch.device, cap: int | None) -> tuple[int | None, str]:
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


def plan_rows(cells: list[Config], capacity: int | None) -> list[dict]:
    rows = []
    for config in cells:
        note = unmodelled(config)
        model = None if note else model_for(config)
        # the row's predicted figure means what its measured one does: the allocator's peak on
        # a GPU; on the CPU one step's tracked tensors, which exclude the weights and the data
        # set that exist before the step. Whether the cell fits counts everything.
        if model is None:
            predicted = None
        elif config.device.startswith("cuda"):
            predicted = model.peak_bytes(config.batch_size)
        else:
            predicted = model.step_bytes(config.batch_size)
        rows.append({**config.as_dict(), "key": config.key(), "predicted_peak_bytes": predicted,
                     "prediction_note": note, "fits": None if capacity is None or note
                     else model.peak_bytes(config.batch_size) <= capacity})
    return rows


def smallest_need_bytes(cells: list[Config]) -> int:
    """What the smallest cell needs at least: its eager step's predicted peak (a compiled or
    captured step keeps that much or close to it), for the check that the device has room."""
    return min(model_for(c).peak_bytes(c.batch_size) for c in cells)


def plan_boundaries(cells: list[Config], capacity: int | None) -> list[dict]:
    """The predicted OOM boundary of each search, on device-resident data."""
    return [{"key": c.boundary_key(), "predicted_max_batch": None if capacity is None
             or unmodelled(c) else model_for(c).max_batch(capacity)}
            for c in boundary_configs(cells)]


def print_plan(plan: dict, as_json: bool) -> None:
    if as_json:
        import json

        print(json.dumps(plan, indent=1))
        return
    what = ("the allocator's peak" if plan["device"].startswith("cuda")
            else "one step's tensors, without the weights and data the fit also counts")
    print(f"{len(plan['cells'])} cells on {plan['device']}; predicted: {what}; 'fits' is the "
          f"predicted peak against {plan['capacity']}")
    width = max(len(row["key"]) for row in plan["cells"])
    for row in plan["cells"]:
        if row["prediction_note"]:
            print(f"  {row['key']:<{width}}  {row['prediction_note']}")
            continue
        verdict = {True: "fits", False: "DOES NOT FIT", None: "?"}[row["fits"]]
        print(f"  {row['key']:<{width}}  predicted {format_bytes(row['predicted_peak_bytes']):>10}"
              f"  {verdict}")
    print(f"predicted OOM boundary (largest batch) against {plan['capacity']}:")
    width = max((len(b["key"]) for b in plan["boundaries"]), default=0)
    for b in plan["boundaries"]:
        print(f"  {b['key']:<{width}}  {b['predicted_max_batch'] or '?':>10}")


def boundary_configs(cells: list[Config]) -> list[Config]:
    """One search per value of every axis but the batch and the loader (Config.for_boundary),
    none for the compiled modes: each of a search's trials would compile anew."""
    return list(dict.fromkeys(c.for_boundary() for c in cells if c.mode not in COMPILED_MODES))


def skipped_words(skipped: dict[str, str]) -> list[str]:
    """One line per reason a cell cannot run here, with how many and which cells."""
    by_reason: dict[str, list[str]] = {}
    for key, reason in skipped.items():
        by_reason.setdefault(reason, []).append(key)
    return [f"skipped {len(keys)} cell{'s' if len(keys) > 1 else ''}: {reason} "
            f"({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
            for reason, keys in by_reason.items()]


def plan_device(args) -> tuple[torch.device, str | None]:
    """The device, and a notice when a dry run plans for a GPU that is not here."""
    wants_cuda = args.device.startswith("cuda")
    if getattr(args, "executor", None) == "slurm" and wants_cuda:
        # the cells run on the card each array task is given, which it sees as cuda:0
        return torch.device("cuda", 0), ("the cells run on the GPU Slurm gives each array task "
                                          "(cuda:0 inside it)")
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


def placed_batch_sizes(grid: Grid, device: torch.device, capacity: int | None) -> tuple[list[int],
                                                                                      str]:
    """Batch sizes for a model that is not LeNet, placed by its memory model: as many as the
    grid names, the largest powers of two up to a ceiling. The ceiling is the predicted boundary
    of the model's hungriest cell on `device` (or under the cap), and not past the grid's largest;
    on the CPU, not past the grid's largest scaled down by how much more memory, and so work, an
    example takes than one of LeNet's (the CPU grids are sized for LeNet's minutes). Returns them
    and the words that say so."""
    named = batch_sizes(grid)
    cells = grid.cells(str(device))
    hungriest = max(cells, key=lambda c: model_for(c).peak_bytes(named[-1]))
    ceiling, why = named[-1], f"the grid's largest, {named[-1]:,}"
    if device.type == "cpu":
        lenet = replace(hungriest, model=LENET, input_shape="")
        ratio = model_for(hungriest).per_sample_bytes / model_for(lenet).per_sample_bytes
        if named[-1] / ratio < ceiling:
            ceiling = max(1, int(named[-1] / ratio))
            why = (f"{ceiling:,}: the grid's largest, {named[-1]:,}, over the {ratio:,.1f} "
                   f"times LeNet's memory an example needs")
    if capacity is not None:
        boundary = model_for(hungriest).max_batch(capacity)
        if boundary < ceiling:
            ceiling, why = boundary, f"the predicted boundary, {boundary:,}"
    if ceiling < 1:
        raise UsageError(f"{grid.model} does not fit even at batch 1 (predicted "
                         f"{format_bytes(model_for(hungriest).peak_bytes(1))} against "
                         f"{format_bytes(capacity)}); give it more memory, a smaller "
                         f"--input-shape, or another model")
    top = 2 ** (ceiling.bit_length() - 1)
    placed = sorted({max(1, top >> k) for k in range(len(named))})
    return placed, (f"batch sizes placed by the memory model for {grid.model}: "
                    f"{', '.join(f'{b:,}' for b in placed)} (powers of two up to {why})")


def key_shape(name: str, text: str | None) -> str:
    """--input-shape as cells' keys hold it: lower-case CxHxW, or '' where it is the model's own
    shape (so `1X28X28` for LeNet makes the keys a plain run makes)."""
    if not text:
        return ""
    shape = parse_input_shape(text)
    return "" if shape == resolve(name).input_shape else "x".join(str(d) for d in shape)


def new_plan(args) -> tuple[dict, list[Config]]:
    device, device_notice = plan_device(args)
    args.input_shape = key_shape(args.model, args.input_shape)
    model = resolve(args.model, args.input_shape or "")
    data, notice = resolve_data(args.data, args.data_root, model)
    overrides = parse_set(args.set)
    grid = get_grid(args.grid, device.type == "cuda", overrides, model.name,
                    args.input_shape or "")
    placement_words = None
    if not model.is_lenet and "batch_size" not in overrides:
        capacity, _ = capacity_bytes(device, args.memory_cap)
        placed, placement_words = placed_batch_sizes(grid, device, capacity)
        grid = replace(grid, overrides={**overrides, "batch_size": tuple(placed)})
    if args.repeats is not None and args.repeats < 5:
        raise UsageError(f"--repeats {args.repeats}: at least 5 are needed for a median and IQR")
    cells, skipped = grid.cells(str(device)), grid.skipped(str(device))
    if not cells:
        raise UsageError(f"nothing to run on {device}: {skipped_words(skipped)[0]}; choose "
                         f"another mode with --set mode=..., or run on a CUDA device")
    settings = Settings(repeats=args.repeats or grid.repeats, min_repeat_s=grid.min_repeat_s,
                        warmup_steps=grid.warmup_steps)
    plan = {
        "schema_version": SCHEMA_VERSION, "grid": grid.name,
        "grid_description": grid.description + (f"; {placement_words}" if placement_words
                                                else ""),
        "overrides": overrides, "model": describe(model),
        "input_shape": args.input_shape or "",
        "device": str(device), "device_notice": device_notice, "data": data,
        "data_notice": notice, "data_root": args.data_root,
        "memory_cap_bytes": args.memory_cap, "cell_timeout_s": args.cell_timeout,
        "find_max_batch": grid.find_max_batch if args.find_max_batch is None
        else args.find_max_batch,
        "boundary_limit": grid.boundary_limit,
        "boundary_budget_s": args.boundary_budget or grid.boundary_budget_s,
        "settings": asdict(settings), "cells": [c.as_dict() for c in cells],
        "skipped": skipped,
    }
    return plan, cells


def same_model(plan: dict, run_dir) -> None:
    """Refuse to carry on a run whose model has changed since it was planned (a user's factory
    edited between a stop and --resume): its rows would mix two architectures under one name."""
    planned = plan["model"]["fingerprint"]
    if planned is None:  # a plan from before fingerprints
        return
    now = describe(resolve(plan["model"]["name"], plan["input_shape"]))["fingerprint"]
    if now != planned:
        raise UsageError(f"{plan['model']['name']} has changed since {run_dir} was planned "
                         f"(architecture {planned} then, {now} now), so its rows would mix two "
                         f"models; restore the model to resume, or start a new run with "
                         f"another --out")


def cells_of(plan: dict, where: str) -> list[Config]:
    """The plan's cells, or RunDirError where plan.json does not describe cells."""
    try:
        return [Config(**c) for c in plan["cells"]]
    except TypeError as exc:
        raise RunDirError(f"{where} holds a cell this version cannot read ({exc}); start a new "
                          f"run instead") from None


def settings_of(plan: dict, where: str) -> Settings:
    try:
        return Settings(**plan["settings"])
    except TypeError as exc:
        raise RunDirError(f"{where} holds settings this version cannot read ({exc}); start a "
                          f"new run instead") from None
