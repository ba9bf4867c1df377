"""Planning a run: from the command line's typed `Request` to the `Plan` a run directory stores
(bench.planning.plan_file), and the forecast `--dry-run` prints: the cells a grid gives on a device,
each with its predicted peak and whether it fits, and the predicted OOM boundary per dtype and
layout."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from bench.basics.settings import Settings
from bench.basics.units import format_bytes
from bench.instruments.nvml import NvmlReader, NvmlUnavailable
from bench.planning.allocator import CONTEXT_ALLOWANCE_BYTES
from bench.planning.grid import LENET, Config, Grid, batch_sizes, get_grid, parse_set
from bench.planning.models import ModelSpec, describe, parse_input_shape, resolve
from bench.planning.plan_file import Plan
from bench.planning.predict import boundary_batch, model_for, step_fits, unmodelled
from lenet.cli import UsageError, resolve_device
from lenet.data import DataError, fashion_mnist_root
from lenet.modes import TABLE


@dataclass(frozen=True)
class Request:
    """What a new run is asked for, as the command line gives it; a field it leaves out takes
    the default here (the grid's own where None)."""

    grid: str = "default"
    set: tuple[str, ...] = ()  # --set AXIS=V1,V2, as given
    device: str = "auto"
    data: str = "auto"  # auto, real or synthetic
    data_root: str | None = None
    memory_cap_bytes: int | None = None
    cell_timeout_s: float = 900.0
    find_max_batch: bool | None = None
    boundary_budget_s: float | None = None
    repeats: int | None = None
    model: str = LENET
    input_shape: str | None = None
    slurm: bool = False  # --executor slurm: the cells run on the cards Slurm gives
    dry_run: bool = False


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
    available = host_available_bytes()
    if available is None:
        return None, "an unknown host capacity"
    return available, "the host's available memory"


def host_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """What the host can give a new process without swapping: the kernel's MemAvailable (free
    memory and the page cache it can drop), else the free pages alone (kernels before 3.14),
    else None."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the kernel's kB are KiB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


@dataclass(frozen=True)
class Planned:
    """A cell as planned: its predicted figure (the allocator's peak on a GPU; on the CPU one
    step's tracked tensors) or why there is none, and whether it fits (None: unknown)."""

    config: Config
    predicted_peak_bytes: int | None
    prediction_note: str | None
    fits: bool | None

    def as_dict(self) -> dict:
        return {**self.config.as_dict(), "key": self.config.key(),
                "predicted_peak_bytes": self.predicted_peak_bytes,
                "prediction_note": self.prediction_note, "fits": self.fits}


def plan_rows(cells: list[Config], capacity: int | None, capped: bool) -> list[Planned]:
    """Each cell's prediction, and whether it fits `capacity` (a --memory-cap where `capped`)."""
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
        rows.append(Planned(config, predicted, note, None if capacity is None or note
                            else step_fits(config, capacity, capped)))
    return rows


def smallest_need_bytes(cells: list[Config]) -> int:
    """What the smallest cell needs at least: its eager step's predicted peak (a compiled or
    captured step keeps that much or close to it), for the check that the device has room."""
    return min(model_for(c).peak_bytes(c.batch_size) for c in cells)


@dataclass(frozen=True)
class Forecast:
    """What --dry-run prints: every cell as planned and each search's predicted boundary,
    against the capacity named in words."""

    device: str
    capacity_bytes: int | None
    capacity: str
    cells: list[Planned]
    boundaries: list[tuple[str, int | None]]  # (boundary key, predicted largest batch)
    capped: bool = False  # the capacity is a --memory-cap

    def as_dict(self) -> dict:
        return {"device": self.device, "capacity_bytes": self.capacity_bytes,
                "capacity": self.capacity, "cells": [c.as_dict() for c in self.cells],
                "boundaries": [{"key": key, "predicted_max_batch": batch}
                               for key, batch in self.boundaries]}

    def print(self, as_json: bool) -> None:
        if as_json:
            import json

            print(json.dumps(self.as_dict(), indent=1))
            return
        if self.device.startswith("cuda"):
            what = "the allocator's peak"
            room = self.capacity if self.capped else (
                f"{self.capacity}, less {format_bytes(CONTEXT_ALLOWANCE_BYTES)} for the CUDA "
                f"context")
            rule = (f"a step's allocations replayed through the caching allocator (its "
                    f"fragmentation included) in {room}")
        else:
            what = "one step's tensors, without the weights and data the fit also counts"
            rule = f"the predicted peak against {self.capacity}"
        print(f"{len(self.cells)} cells on {self.device}; predicted: {what}; 'fits': {rule}")
        width = max(len(row.config.key()) for row in self.cells)
        for row in self.cells:
            if row.prediction_note:
                print(f"  {row.config.key():<{width}}  {row.prediction_note}")
                continue
            verdict = {True: "fits", False: "DOES NOT FIT", None: "?"}[row.fits]
            print(f"  {row.config.key():<{width}}  predicted "
                  f"{format_bytes(row.predicted_peak_bytes):>10}  {verdict}")
        print(f"predicted OOM boundary (largest batch) against {self.capacity}:")
        width = max((len(key) for key, _ in self.boundaries), default=0)
        for key, batch in self.boundaries:
            print(f"  {key:<{width}}  {batch or '?':>10}")


def forecast(cells: list[Config], device: str, capacity: int | None, words: str,
             capped: bool) -> Forecast:
    """The predicted OOM boundary of each search is on device-resident data."""
    return Forecast(device, capacity, words, plan_rows(cells, capacity, capped),
                    [(c.boundary_key(), None if capacity is None or unmodelled(c)
                      else boundary_batch(c, capacity, capped)) for c in boundary_configs(cells)],
                    capped)


def boundary_configs(cells: list[Config]) -> list[Config]:
    """One search per value of every axis but the batch and the loader (Config.for_boundary),
    none for the compiled modes (each of a search's trials would compile anew) nor for several
    replicas (each needs about one model's memory times their count: the plan predicts it)."""
    return list(dict.fromkeys(c.for_boundary() for c in cells
                              if not TABLE[c.mode].compiles and c.replicas == 1))


def skipped_words(skipped: dict[str, str]) -> list[str]:
    """One line per reason a cell cannot run here, with how many and which cells."""
    by_reason: dict[str, list[str]] = {}
    for key, reason in skipped.items():
        by_reason.setdefault(reason, []).append(key)
    return [f"skipped {len(keys)} cell{'s' if len(keys) > 1 else ''}: {reason} "
            f"({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
            for reason, keys in by_reason.items()]


def plan_device(request: Request) -> tuple[torch.device, str | None]:
    """The device, and a notice when a dry run plans for a GPU that is not here."""
    wants_cuda = request.device.startswith("cuda")
    if request.slurm and wants_cuda:
        # the cells run on the card each array task is given, which it sees as cuda:0
        return torch.device("cuda", 0), ("the cells run on the GPU Slurm gives each array task "
                                          "(cuda:0 inside it)")
    if not (request.dry_run and wants_cuda and not torch.cuda.is_available()):
        return resolve_device(request.device), None
    if request.memory_cap_bytes is None:
        raise UsageError(f"--dry-run --device {request.device} plans for a GPU that is not here: "
                         f"give its memory with --memory-cap, e.g. --memory-cap 80GiB")
    try:
        device = torch.device(request.device)
    except RuntimeError:
        raise UsageError(f"unknown device {request.device!r}; use auto, cpu or cuda:N") from None
    return torch.device("cuda", device.index or 0), (
        f"planning for a GPU that is not here, with {format_bytes(request.memory_cap_bytes)} "
        f"for the allocator (--memory-cap); a real card also needs about "
        f"{format_bytes(CONTEXT_ALLOWANCE_BYTES)} for the CUDA context")


def placed_batch_sizes(grid: Grid, device: torch.device, capacity: int | None,
                       capped: bool) -> tuple[list[int], str]:
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
        boundary = boundary_batch(hungriest, capacity, capped)
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


def searches(grid: Grid, device: torch.device, request: Request) -> bool:
    """Whether the run searches for the OOM boundary: as asked, else as the grid says, but on
    the CPU only under a memory cap. A host with 22 GiB free holds a float32 LeNet batch of
    about 285,000 (the memory model's figure): a search stops at its time budget or batch limit
    long before, having found no boundary (the CPU default grid's six did, at 2,048 to 65,536,
    after 46 s), and an emulated card (--memory-cap) is what gives the CPU a boundary to find."""
    if request.find_max_batch is not None:
        return request.find_max_batch
    return grid.find_max_batch and (device.type != "cpu" or request.memory_cap_bytes is not None)


def new_plan(request: Request) -> Plan:
    device, device_notice = plan_device(request)
    input_shape = key_shape(request.model, request.input_shape)
    model = resolve(request.model, input_shape)
    data, notice = resolve_data(request.data, request.data_root, model)
    overrides = parse_set(list(request.set))
    grid = get_grid(request.grid, device.type == "cuda", overrides, model.name, input_shape)
    placement_words = None
    if not model.is_lenet and "batch_size" not in overrides:
        capacity, _ = capacity_bytes(device, request.memory_cap_bytes)
        placed, placement_words = placed_batch_sizes(grid, device, capacity,
                                                     request.memory_cap_bytes is not None)
        grid = replace(grid, overrides={**overrides, "batch_size": tuple(placed)})
    if request.repeats is not None and request.repeats < 5:
        raise UsageError(f"--repeats {request.repeats}: at least 5 are needed for a median and "
                         f"IQR")
    cells, skipped = grid.cells(str(device)), grid.skipped(str(device))
    if not cells:
        raise UsageError(f"nothing to run on {device}: {skipped_words(skipped)[0]}; choose "
                         f"another mode with --set mode=..., or run on a CUDA device")
    settings = Settings(repeats=request.repeats or grid.repeats, min_repeat_s=grid.min_repeat_s,
                        warmup_steps=grid.warmup_steps)
    return Plan(
        grid=grid.name, device=str(device), data=data, settings=settings, cells=tuple(cells),
        grid_description=grid.description + (f"; {placement_words}" if placement_words
                                             else ""),
        overrides=overrides, model=describe(model), input_shape=input_shape,
        device_notice=device_notice, data_notice=notice, data_root=request.data_root,
        memory_cap_bytes=request.memory_cap_bytes, cell_timeout_s=request.cell_timeout_s,
        find_max_batch=searches(grid, device, request),
        boundary_limit=grid.boundary_limit,
        boundary_budget_s=request.boundary_budget_s or grid.boundary_budget_s,
        skipped=skipped)


def same_model(plan: Plan, run_dir) -> None:
    """Refuse to carry on a run whose model has changed since it was planned (a user's factory
    edited between a stop and --resume): its rows would mix two architectures under one name."""
    planned = plan.model.fingerprint
    if planned is None:  # a plan from before fingerprints
        return
    now = describe(resolve(plan.model.name, plan.input_shape)).fingerprint
    if now != planned:
        raise UsageError(f"{plan.model.name} has changed since {run_dir} was planned "
                         f"(architecture {planned} then, {now} now), so its rows would mix two "
                         f"models; restore the model to resume, or start a new run with "
                         f"another --out")
