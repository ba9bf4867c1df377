"""Cells run in a spawned worker process; the parent only sends configs and writes results.

A worker that dies (a signal, the OOM killer, a sticky CUDA error) costs the cell in flight, which
the parent records as an error with the cause; the next cell gets a fresh worker. Workers ignore
Ctrl-C: the parent decides how to stop.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.basics.outcome import Outcome
from bench.basics.settings import Settings
from bench.planning.grid import Config

if TYPE_CHECKING:
    from bench.execution.cell import AheadCompile, Trial


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to start: the data, the device, the cap."""

    device: str
    data: str  # fashion-mnist or synthetic
    data_root: str | None
    settings: Settings
    memory_cap_bytes: int | None = None
    # another model trains on synthetic data of its shape (bench.planning.models)
    model: str = "lenet"
    input_shape: str = ""
    # pins a pooled GPU worker to its card (bench.planning.devices)
    visible_devices: str | None = None
    cpu_cores: tuple[int, ...] | None = None  # binds a pooled CPU worker to its share
    threads: int | None = None  # torch's threads where not one per bound core: a Slurm task's CPUs
    # inductor's compile processes, where not one per core: a compile ahead's share of them
    compile_threads: int | None = None
    # the architecture the plan was made for (bench.planning.models.fingerprint): a worker that
    # builds another (the user's model edited since) refuses to start rather than mix two in one
    # run
    model_fingerprint: str | None = None


class WorkerDied(Exception):
    """The worker process ended while it held a cell."""

    kind = Outcome.WORKER_DIED


class WorkerTimedOut(WorkerDied):
    """The worker held a cell past its time limit and was stopped."""

    kind = Outcome.TIMEOUT


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "the worker stopped answering"
    if exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (the kernel's OOM killer sends this)" if name == "SIGKILL" else ""
        return f"the worker was killed by {name}{hint}"
    return f"the worker exited with status {exitcode}"


_STARTING = threading.Lock()  # workers start from several threads; __main__ is shared


@contextlib.contextmanager
def _main_not_imported():
    """Start a worker without multiprocessing's re-import of the parent's main module (bench.run,
    torch with it): until the worker ignores SIGINT, a Ctrl-C at the terminal ends it with a
    traceback, and the import takes seconds. The worker needs nothing from that module."""
    main = sys.modules["__main__"]
    with _STARTING:
        saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if k in main.__dict__}
        main.__spec__ = None
        main.__dict__.pop("__file__", None)
        try:
            yield
        finally:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


PARENT_CHECK_S = 0.2  # how often a worker looks whether its parent is still there


def _die_with(parent_pid: int) -> None:
    """End this worker, and its DataLoader's processes, as soon as its parent is gone (killed
    with -9, say): a worker mid-cell reads no end-of-file on its pipe until the cell is done, and
    would train on at full speed for minutes, for nobody."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK_S)
    for child in multiprocessing.active_children():
        child.kill()
    os._exit(1)


def _serve(conn, spec: WorkerSpec, parent_pid: int) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # the parent stops the worker
    threading.Thread(target=_die_with, args=(parent_pid,), daemon=True).start()
    if spec.visible_devices is not None:  # before CUDA starts: it reads this once
        os.environ["CUDA_VISIBLE_DEVICES"] = spec.visible_devices
    if spec.compile_threads is not None:  # before inductor's config reads it; the user's wins
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(spec.compile_threads))
    # torch is imported here, not at the module's top: until SIGINT is ignored above, a Ctrl-C
    # at the terminal would end this process with a traceback
    import torch

    try:
        if spec.cpu_cores:
            os.sched_setaffinity(0, spec.cpu_cores)
    except OSError as exc:  # a start that failed: the parent says so, no cell is run
        conn.send(("failed", f"cannot bind to CPU cores {list(spec.cpu_cores)}: {exc}"))
        return
    if spec.threads or spec.cpu_cores:
        # more threads than cores spin against each other: many times slower, not 2x
        torch.set_num_threads(spec.threads or len(spec.cpu_cores))

    from bench.execution.cell import compile_ahead, run_cell, run_trial

    try:
        data, nvml, data_load_s, built = _ready(spec)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which says what to do
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", (data_load_s, built)))
    _answer(conn, {
        "cell": lambda config: run_cell(config, data, spec.settings, nvml),
        "trial": lambda config, batch: run_trial(config, batch, data, spec.settings),
        "compile": lambda config: compile_ahead(config, data, spec.settings),
    })
    if nvml is not None:
        nvml.close()


def _ready(spec: WorkerSpec):
    """What the worker's cells share: (the data, the card's NVML reader or None, seconds the
    data took, the model's fingerprint). Raises what stops the worker from starting."""
    import torch

    from bench.execution.cell import train_steps
    from bench.instruments import memory
    from bench.instruments.nvml import NvmlReader, NvmlUnavailable
    from bench.instruments.oom import is_oom
    from bench.planning.models import SYNTHETIC_SIZE, fingerprint, resolve
    from lenet.data import real_tensors, synthetic_tensors

    device = torch.device(spec.device)
    data_began = time.perf_counter()
    model = resolve(spec.model, spec.input_shape)
    built = fingerprint(model.build(seed=0))
    if spec.model_fingerprint is not None and built != spec.model_fingerprint:
        raise RuntimeError(
            f"{spec.model} has changed since this run was planned (architecture "
            f"{spec.model_fingerprint} then, {built} now), so its cells would not be the "
            f"plan's: restore the model, or start a new run")
    if not model.is_lenet:
        data = synthetic_tensors(SYNTHETIC_SIZE, 0, model.input_shape, model.num_classes)
    elif spec.data == "synthetic":
        data = synthetic_tensors()
    else:
        data = real_tensors(True, spec.data_root)
    data_load_s = time.perf_counter() - data_began
    if spec.memory_cap_bytes is not None:
        # torch.optim imports torch._dynamo on its first use; under a tight address-space
        # cap that import fails (MemoryError, SystemError) instead of the step running out
        # of memory, so it is imported before the cap
        import torch._dynamo  # noqa: F401
        memory.apply_memory_cap(device, spec.memory_cap_bytes)
    nvml = None
    if device.type == "cuda":
        torch.cuda.init()
        try:
            nvml = NvmlReader(device.index or 0)
        except NvmlUnavailable:
            pass  # NVML columns stay empty, with the reason from the parent's snapshot
    # one small step first, so the first cell does not pay for library start-up; under a
    # tight cap even that may not fit, and then the cells find out how little does
    first = Config(64 if model.is_lenet else 2, device=spec.device, model=spec.model,
                   input_shape=spec.input_shape)
    try:
        train_steps(first, first.batch_size, data, spec.settings)
    except Exception as exc:  # noqa: BLE001 - only running out of memory is let go
        if not is_oom(exc):
            raise
    memory.release(device)
    # what the worker built to start (torch's modules, the data, the first step's libraries)
    # lives as long as it does: out of the collector's sight, each of a cell's collections (two
    # at least) scans only what the cell made, not 0.2 s of start-up objects each time
    gc.freeze()
    return data, nvml, data_load_s, built


def _answer(conn, handlers: dict) -> None:
    """Answer the parent's requests, one at a time, until it says stop or is gone."""
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the parent is gone
            break
        if message is None:
            break
        name, args = message
        try:
            conn.send(("ok", handlers[name](*args)))
        except Exception:  # noqa: BLE001 - a harness bug: the parent records it and goes on
            conn.send(("error", traceback.format_exc(limit=5)))


# A worker killed mid-compile (Ctrl-C, a time limit) leaves the semaphores of inductor's compile
# pool registered; multiprocessing's resource tracker unlinks them as it should, but first warns
# of "leaked semaphore objects", words that sound like a fault of the run. Its options are the
# interpreter's (multiprocessing.util._args_from_interpreter_flags), read as it starts.
_TRACKER_QUIET = "ignore:resource_tracker:UserWarning"


def _quiet_resource_tracker() -> None:
    if _TRACKER_QUIET not in sys.warnoptions:
        sys.warnoptions.append(_TRACKER_QUIET)


class Worker:
    """A spawned process that runs cells one at a time."""

    def __init__(self, spec: WorkerSpec, start_timeout_s: float = 300):
        began = time.perf_counter()
        context = multiprocessing.get_context("spawn")  # a fresh CUDA state, never a fork of one
        _quiet_resource_tracker()
        self._conn, child = context.Pipe()
        # not a daemon: its DataLoader needs worker processes of its own. If the parent dies,
        # the worker sees it and exits (_die_with).
        self._process = context.Process(target=_serve, args=(child, spec, os.getpid()))
        with _main_not_imported():
            self._process.start()
        child.close()
        kind, detail = self._receive(start_timeout_s)
        if kind != "ready":
            self.kill()
            raise RuntimeError(f"the worker could not start: {detail}")
        # how long it took to answer, the part of it that went to building the data, and the
        # architecture it built, which every row it measures carries
        self.start_s = time.perf_counter() - began
        self.data_load_s, self.model_fingerprint = detail

    def _receive(self, timeout_s: float | None):
        waited = 0.0
        while not self._conn.poll(0.2):
            waited += 0.2
            if not self._process.is_alive():
                self._process.join(5)
                raise WorkerDied(_describe_exit(self._process.exitcode))
            if timeout_s is not None and waited > timeout_s:
                self.kill()
                raise WorkerTimedOut(f"no answer within {timeout_s:g} s; the worker was stopped")
        try:
            return self._conn.recv()
        except (EOFError, ConnectionError):
            self._process.join(5)
            raise WorkerDied(_describe_exit(self._process.exitcode)) from None

    def call(self, name: str, *args, timeout_s: float | None = None):
        self._conn.send((name, args))
        kind, payload = self._receive(timeout_s)
        if kind == "error":
            raise RuntimeError(payload)
        return payload

    def cell(self, config: Config, timeout_s: float | None = None):
        return self.call("cell", config, timeout_s=timeout_s)

    def trial(self, config: Config, batch_size: int, timeout_s: float | None = None) -> Trial:
        return self.call("trial", config, batch_size, timeout_s=timeout_s)

    def compile(self, config: Config, timeout_s: float | None = None) -> AheadCompile:
        return self.call("compile", config, timeout_s=timeout_s)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def close(self) -> None:
        try:
            self._conn.send(None)
            self._process.join(10)
        except (BrokenPipeError, OSError):
            pass
        self.kill()

    def kill(self) -> None:
        if self._process.is_alive():
            self._process.kill()
        self._process.join(5)
