"""One measurement, run inside a worker process: build, warm up, time, probe memory, back off.

Timing: warm-up steps are not timed (cuDNN picks its kernels, the allocator fills its cache);
doubling blocks of steps size the repeats so that each lasts at least `min_repeat_s`; each repeat
is synchronised at its two ends and never inside, so the GPU runs ahead as it would in training.
Between repeats, never inside one, the contention watch reads what else the machine is doing.
On the host path the DataLoader is inside the timed region: that is what pinning changes.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import torch

from bench.basics.outcome import Attempt, Outcome
from bench.basics.settings import Settings
from bench.instruments import memory
from bench.instruments.contention import Contention, ContentionWatch
from bench.instruments.energy import Energy, meter_for
from bench.instruments.memory import AllocatorPeaks
from bench.instruments.nvml import GpuReader, PeakSampler
from bench.instruments.oom import failure_kind, halve, one_line, run_with_backoff
from bench.instruments.stats import Measurement
from bench.instruments.timing import launch_s, synchronize, timed_steps
from bench.planning.grid import Config
from bench.planning.models import build_model
from lenet.data import TensorData, device_batches, host_batches
from lenet.modes import TABLE
from lenet.train import build_step


def _prepare(config: Config, batch_size: int, data: TensorData, settings: Settings):
    """A fresh model's training step on the device (or K models', each from a seed of its own),
    and the batches that feed it."""
    device = torch.device(config.device)
    nets = [build_model(config.model, settings.seed + k).to(device)
            for k in range(config.replicas)]
    step = build_step(nets if config.replicas > 1 else nets[0], settings.lr, config.dtype,
                      config.channels_last, config.mode, config.precision, config.optimizer,
                      config.replica_method)
    if config.placement == "device":
        batches = device_batches(data, batch_size, device, settings.seed)
    else:
        batches = host_batches(data, batch_size, device, config.num_workers, config.pin_memory,
                               settings.seed)
    return step, batches


# DataLoader's default: each worker keeps two batches in flight
PREFETCH_PER_WORKER = 2


def warmup_steps_for(config: Config, settings: Settings) -> int:
    """Untimed steps before the first repeat. Workers start slowly and then hand over the
    batches they queued meanwhile: the warm-up drains that queue, so timing starts steady."""
    workers = config.num_workers if config.placement == "host" else 0
    return settings.warmup_steps + PREFETCH_PER_WORKER * workers


def steps_per_repeat(run_block, settings: Settings) -> int:
    """Steps that make one repeat last `min_repeat_s`. `run_block(n)` runs n steps and returns
    their seconds. As timeit's autorange: double n until a block lasts a quarter of a repeat,
    then time a second block of n and keep the faster, so one slow step (a loader worker still
    starting) cannot size every repeat."""
    count = 1
    while True:
        elapsed = run_block(count)
        if elapsed >= settings.min_repeat_s / 4 or count >= settings.max_steps_per_repeat:
            break
        count *= 2
    elapsed = min(elapsed, run_block(count))
    return min(settings.max_steps_per_repeat,
               max(1, math.ceil(settings.min_repeat_s * count / max(elapsed, 1e-9))))


@dataclass(frozen=True)
class Measured:
    """What one attempt that trained measured."""

    measurement: Measurement
    peaks: AllocatorPeaks
    contention: Contention
    energy: Energy
    setup_s: float  # building the step and the warm-up: compiling and capturing included
    sizing_s: float  # the blocks of steps that sized the repeats
    start_rss_bytes: int | None  # the resident set as the attempt began
    tracked_peak_bytes: int | None  # CPU only: live tensor bytes over one step
    loss_first: float
    loss_last: float
    compile_cache: str | None = None  # compiled modes: compile_cache_words
    launch_s: float | None = None  # one near-empty operator on the device, after the repeats


# torch.compile's on-disk caches, as dynamo counts their lookups: the FX graphs inductor compiled
# and AOTAutograd's joint graphs. A warm cache makes a compile take a fraction of a second, a
# cold one seconds: a compiled cell's setup time means nothing without which it was.
_CACHE_COUNTERS = (("inductor", "fxgraph_cache"), ("aot_autograd", "autograd_cache"))


def _cache_lookups() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {f"{prefix}_{outcome}": counters[group][f"{prefix}_{outcome}"]
            for group, prefix in _CACHE_COUNTERS for outcome in ("hit", "miss")}


def compile_cache_words(before: dict[str, int], after: dict[str, int]) -> str:
    """warm (every graph from the cache), cold (none), or partly warm, with the counts."""
    hits = sum(after[k] - before[k] for k in after if k.endswith("_hit"))
    misses = sum(after[k] - before[k] for k in after if k.endswith("_miss"))
    if not hits:
        return "cold" if misses else "cold (no cache consulted)"
    return "warm" if not misses else f"partly warm ({hits} of {hits + misses} graphs cached)"


def measure(config: Config, batch_size: int, data: TensorData, settings: Settings,
            nvml: GpuReader | None = None) -> Measured:
    """Train `config` at `batch_size` and time it. Raises what training raises (an OOM included)."""
    device = torch.device(config.device)
    memory.reset_peaks(device)
    start_rss = memory.rss_bytes()  # read at the reset: where this attempt starts from
    setup_began = time.perf_counter()
    compiled = TABLE[config.mode].compiles
    lookups = _cache_lookups() if compiled else None
    step, batches = _prepare(config, batch_size, data, settings)
    try:
        # losses are read at once: a CUDA graph's outputs are overwritten by its next step. A
        # graphed step's first call trains a few steps before the one it returns: its own
        # first loss is the one before any training
        loss = step(*next(batches))[0]
        first_loss = float(getattr(step, "first_loss", loss))
        for _ in range(warmup_steps_for(config, settings) - 1):
            step(*next(batches))
        synchronize(device)
        setup_s = time.perf_counter() - setup_began
        cache = compile_cache_words(lookups, _cache_lookups()) if compiled else None
        sizing_began = time.perf_counter()
        steps = steps_per_repeat(lambda n: timed_steps(step, batches, n, device)[0], settings)
        sizing_s = time.perf_counter() - sizing_began
        repeat_s = []
        watch = ContentionWatch(nvml)
        meter = meter_for(device.type, nvml)
        synchronize(device)  # the window holds the timed repeats' work and nothing before it
        watch.start()
        meter.start()
        # the repeats asked for, then more of the same size while the energy window is short:
        # repeats sized from the faster of two blocks can each run a little under their target
        while len(repeat_s) < settings.repeats or meter.short_s() > 0:
            if repeat_s:
                watch.sample()  # between repeats: never inside one
            elapsed, last_loss = timed_steps(step, batches, steps, device)
            last_loss = float(last_loss)
            repeat_s.append(elapsed)
        energy = meter.stop()
        contention = watch.stop()
        peaks = memory.read_peaks(device)
        launch = launch_s(device)
        tracked = None
        if device.type == "cpu":  # after timing: tracking slows the step it watches
            with memory.LiveBytes() as tracker:
                step(*next(batches))
            tracked = tracker.peak_bytes
    finally:
        batches.close()  # stops the DataLoader's workers now, not at garbage collection
    # every replica trains on the batch: a step trains batch_size examples each
    measurement = Measurement(tuple(repeat_s), steps, batch_size * config.replicas)
    return Measured(measurement, peaks, contention, energy, setup_s, sizing_s, start_rss, tracked,
                    first_loss, last_loss, cache, launch)


def train_steps(config: Config, batch_size: int, data: TensorData, settings: Settings,
                steps: int = 1) -> None:
    """`steps` training steps of a freshly built step at `batch_size`: a boundary-search trial,
    a worker's first step, a compile ahead's warm-up."""
    step, batches = _prepare(config, batch_size, data, settings)
    try:
        for _ in range(steps):
            loss, _ = step(*next(batches))
        float(loss)  # waits for the steps, so an asynchronous failure surfaces here
    finally:
        batches.close()


@dataclass(frozen=True)
class AheadCompile:
    """A compiled cell's graphs, compiled in a process of its own before any cell is timed
    (bench.execution.ahead): what a user's first run of it pays, and whether torch.compile's
    on-disk caches already held them."""

    seconds: float | None  # building the step and its warm-up steps, compiling included
    cache: str | None  # compile_cache_words of that compile
    error: str | None = None  # why it did not compile; the cell then compiles on its own


def compile_ahead(config: Config, data: TensorData, settings: Settings) -> AheadCompile:
    """Build `config`'s step and run the steps its cell's warm-up runs, so that every graph the
    cell compiles (a second step's recompile included) lands in the on-disk caches first."""
    lookups = _cache_lookups()
    began = time.perf_counter()
    try:
        train_steps(config, config.batch_size, data, settings, warmup_steps_for(config, settings))
    except Exception as exc:  # noqa: BLE001 - the cell compiles on its own and says what failed
        return AheadCompile(None, None, one_line(exc))
    return AheadCompile(time.perf_counter() - began,
                        compile_cache_words(lookups, _cache_lookups()))


@dataclass(frozen=True)
class Trial:
    """A boundary trial's attempt, and whether memory came back to where it was."""

    attempt: Attempt
    healthy: bool


def run_trial(config: Config, batch_size: int, data: TensorData, settings: Settings) -> Trial:
    """One step at `batch_size`: ok, oom, kernel_limit or error."""
    device = torch.device(config.device)
    baseline = memory.settled_bytes(device)
    failure = None
    try:
        train_steps(config, batch_size, data, settings)
    except Exception as exc:  # noqa: BLE001 - the outcome is the finding
        failure = Attempt(batch_size, failure_kind(exc), one_line(exc))
    # released outside the except block, so the traceback no longer pins tensors
    healthy = memory.settled_bytes(device) <= baseline
    return Trial(failure or Attempt(batch_size, Outcome.OK), healthy)


@dataclass(frozen=True)
class CardReadings:
    """What the card said over a cell, through NVML: its peak use, this process's share (read
    with the allocator's cache still held), and why a figure is missing."""

    peak_used_bytes: int | None
    process_used_bytes: int | None
    note: str | None


@dataclass(frozen=True)
class CellResult:
    """A cell as a worker measured it, in typed pieces; the parent builds its row from them
    (bench.execution.session.build_row), the one place a row is made."""

    config: Config
    data_source: str
    attempts: list[Attempt]  # each batch tried, the last one the cell's outcome
    measured: Measured | None  # the attempt that trained; None where none did
    card: CardReadings | None  # None: no NVML reader (a CPU cell, or NVML unavailable)
    started_at: str | None = None
    wall_s: float | None = None


def run_cell(config: Config, data: TensorData, settings: Settings, nvml: GpuReader | None = None,
             floor: int = 1) -> tuple[CellResult, bool]:
    """Measure one cell, halving the batch on OOM. Returns what it measured and whether memory
    came back to where it was (if not, the worker should be replaced)."""
    device = torch.device(config.device)
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    baseline = memory.settled_bytes(device)
    sampler = PeakSampler(nvml.used_bytes) if nvml is not None else None
    with sampler or contextlib.nullcontext():
        measured, attempts = run_with_backoff(
            lambda batch: measure(config, batch, data, settings, nvml), config.batch_size,
            release=lambda: memory.release(device), policy=functools.partial(halve, floor=floor))
    card = None
    if sampler is not None:
        # this process's share as the driver sees it, the allocator's cache still held: before
        # settled_bytes empties it
        process_used, process_note = _process_used_bytes(nvml)
        card = CardReadings(sampler.peak, process_used, sampler.error or process_note)
    healthy = memory.settled_bytes(device) <= baseline
    return CellResult(config, data.source, attempts, measured, card, started_at,
                      time.perf_counter() - start), healthy


def _process_used_bytes(nvml) -> tuple[int | None, str | None]:
    processes = nvml.processes()
    if processes is None:
        return None, "per-process usage unavailable: the driver does not list processes here"
    mine = [p.used_bytes for p in processes if p.pid == os.getpid()]
    if not mine or mine[0] is None:
        return None, "per-process usage unavailable: this process is not in the driver's list"
    return mine[0], None
