"""What several test modules share: paths, skip marks, running a module as a user does, and run
directories crafted from rows (a report or a gate tested without measuring anything)."""

import contextlib
import importlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

from bench.instruments.nvml import MemoryInfo, NvmlUnavailable

ROOT = Path(__file__).resolve().parent.parent
# The plugin to name with -p where the package is not installed (its pytest11 entry point absent).
PLUGIN = [] if any(ep.value == "bench.pytest_plugin" for ep in entry_points(group="pytest11")) \
    else ["bench.pytest_plugin"]
DEBIAN_DATA = Path("/usr/share/datasets/fashion-mnist")
MiB = 2**20

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_real_data = pytest.mark.skipif(
    not DEBIAN_DATA.is_dir(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")


GiB = 2**30


class FakeCard:
    """The one fake of bench.instruments.nvml.GpuReader, the seam through which the CPU covers what
    a card says: an 80 GB H100 whose free memory, processes, clocks, clock events, power-cap time,
    temperature and power draw the test decides. Where a real card cannot say, it raises
    NvmlUnavailable as NvmlReader does: `temperature_c=None`, `counter=False` or `power=False`
    for a reading the card lacks, `fail=True` for a card lost mid-run (clocks, events and
    temperature). Its energy counter advances at `watts` in steps of `update_s`, as NVML's
    does; its power-cap counter by `power_capped_ns` between one read and the next."""

    def __init__(self, free_bytes=70 * GiB, processes=None, clock_mhz=1980, events=0,
                 power_capped_ns=0, temperature_c=71, watts=250.0, update_s=0.0, counter=True,
                 power=True, fail=False):
        self.info = MemoryInfo(80 * GiB, GiB // 2, 80 * GiB - GiB // 2 - free_bytes,
                               free_bytes)
        self.process_list, self.clock_mhz, self.events = processes, clock_mhz, events
        self.power_capped_ns, self.temperature = power_capped_ns, temperature_c
        self.watts, self.update_s, self.counter, self.power = watts, update_s, counter, power
        self.fail = fail
        self.violation_reads = 0
        self.t0 = time.perf_counter()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        pass

    def _read(self, what, value):
        if self.fail:
            raise NvmlUnavailable(f"{what}: NVML_ERROR_GPU_IS_LOST")
        return value

    def memory(self):
        return self.info

    def used_bytes(self):
        return self.info.used_bytes

    def processes(self):
        return self.process_list

    def sm_clock_mhz(self):
        return self._read("no SM clock", self.clock_mhz)

    def max_sm_clock_mhz(self):
        return self._read("no maximum SM clock", 1980)

    def clock_event_reasons(self):
        return self._read("no clock-event reasons", self.events)

    def violation_ns(self):
        self.violation_reads += 1
        return {"power cap": 10**12 + (self.violation_reads - 1) * self.power_capped_ns,
                "thermal": 10**12}

    def compute_capability(self):
        return self._read("no compute capability", (9, 0))  # an H100's or H200's

    def temperature_c(self):
        if self.temperature is None:
            raise NvmlUnavailable("no temperature: Not Supported")
        return self._read("no temperature", self.temperature)

    def total_energy_mj(self):
        if not self.counter:
            raise NvmlUnavailable("no energy counter: Not Supported")
        elapsed = time.perf_counter() - self.t0
        if self.update_s:
            elapsed -= elapsed % self.update_s
        return int(5_000_000 + self.watts * elapsed * 1000)

    def power_mw(self):
        if not self.power:
            raise NvmlUnavailable("no power reading: Not Supported")
        return int(self.watts * 1000)

    def name(self):
        return "NVIDIA H100 80GB HBM3"

    def driver_version(self):
        return "580.65.06"


def one_line_error(result) -> str:
    """The single line a refused command prints on standard error (exit status 2)."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def run_module(*args, cwd=None, env=None, timeout=300):
    """`python -m ...` as a user runs it, from the project root unless told otherwise."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=full_env, timeout=timeout)


# What `pip install -e '.[dev,slurm,postgresql]'` adds that a lent GPU host's python3 lacks (it
# has torch, torchvision, pandas, matplotlib, pytest, pytest-benchmark, nvidia-ml-py and tqdm),
# less the tools (pytest-xdist's plugin loads with pytest here, wherever it is installed)
NOT_ON_A_GPU_HOST = ("sqlalchemy", "alembic", "ruptures", "psycopg", "submitit", "scipy")


def run_module_as_on_a_gpu_host(module, *args, cwd=None) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` from the checkout as docs/gpu-check.sh runs it on a lent GPU
    host: in a Python of its own, what such a host lacks unimportable."""
    code = ("import runpy, sys\n"
            f"for name in {NOT_ON_A_GPU_HOST!r}:\n"
            "    sys.modules[name] = None  # import fails as if not installed\n"
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


def benchmark_json(folder: Path) -> Path:
    """A real pytest-benchmark JSON file of this project's CPU benchmark at batch 64, as
    `pytest --benchmark-json` writes it with the memory plugin's extra_info."""
    saved = folder / "bench.json"
    result = run_module("pytest", "tests/benchmarks", "-q", "-k", "64 and cpu",
                        f"--benchmark-json={saved}", "-p", "no:cacheprovider")
    assert result.returncode == 0, result.stdout
    return saved


def run_main(module, *args, cwd=None) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` called in this process, `main(argv)` with its output captured,
    answered as run_module answers (returncode, stdout, stderr): no interpreter start and no
    torch import, so the fast tier tests what a command prints without a process of its own.
    `cwd` runs it from another directory."""
    main = importlib.import_module(module if "." in module else f"{module}.__main__").main
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:
                code = exc.code
    finally:  # bench.run stops on SIGTERM and SIGHUP as on Ctrl-C; pytest must not
        os.chdir(here)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


# bench.run options for tests that mean the CPU, so the suite passes where a GPU is visible too
CPU_SYNTHETIC = ["--device", "cpu", "--data", "synthetic", "--no-report"]
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}  # a machine without a GPU, wherever the test runs
ONE_CELL = ["--grid", "smoke", "--set", "batch_size=64", "--set", "placement=device"]


def rows_of(run_dir):
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def ctrl_c_as_at_a_terminal():
    """SIGINT's default action, as a terminal gives it: a shell that starts the suite in the
    background leaves SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_until_it_maps(pid: int, library: str, timeout_s: float = 60.0):
    """Return once process `pid` has loaded a shared object whose path holds `library`: the
    process has got that far in its imports, whatever the machine's load."""
    deadline = time.monotonic() + timeout_s
    while library not in Path(f"/proc/{pid}/maps").read_text():
        assert time.monotonic() < deadline, f"{library} never loaded"
        time.sleep(0.01)


def wait_until_it_writes(proc, path: Path, timeout_s: float = 60.0):
    """Return as soon as `path` exists, while `proc` still runs: the process has got that far."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, f"it ended before it wrote {path.name}"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.005)


def start_grid_and_wait_for_a_row(out, *more_args, **popen):
    """Start a four-cell CPU grid writing to `out`; return once its first row is on disk."""
    cmd = [sys.executable, "-m", "bench.run", "--grid", "smoke", "--set",
           "batch_size=32,64,128,256", "--set", "placement=device", "--out", str(out),
           *CPU_SYNTHETIC, *more_args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=ctrl_c_as_at_a_terminal, **popen)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while not (results.exists() and results.read_text().count("\n") >= 1):
        assert time.monotonic() < deadline and proc.poll() is None, "no row was written"
        time.sleep(0.05)
    return proc


def slowed_tree(dest: Path, every: int, times: int = 2) -> Path:
    """A copy of this source tree whose training step runs `times` times every `every`-th call:
    a planted slowdown of real work (every=4 is 25% more time, a 20% drop in examples/s)."""
    import shutil

    for package in ("bench", "lenet"):
        shutil.copytree(ROOT / package, dest / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    with (dest / "lenet" / "train.py").open("a") as f:
        f.write(f"""

# planted slowdown, for tests of the speed gate
_unslowed, _calls = TrainStep.__call__, [0]


def _slowed(self, images, labels):
    _calls[0] += 1
    if _calls[0] % {every} == 0:
        for _ in range({times - 1}):
            _unslowed(self, images, labels)
    return _unslowed(self, images, labels)


TrainStep.__call__ = _slowed
""")
    return dest


def crafted_row(batch, dtype="float32", status="ok", placement="device", workers=0,
                pin_memory=False, device="cuda:0", mode="eager", data_source="fashion-mnist",
                precision="default", replicas=1, replica_method="vmap", **extra) -> dict:
    """A stored row with the figures of a GPU cell that trained (LeNet's 57 KiB a sample); any
    field of bench.records.row.Row can be given."""
    from bench.basics.outcome import Attempt, Outcome
    from bench.planning.grid import Config
    from bench.records.row import Row

    config = Config(batch, dtype, placement=placement, num_workers=workers,
                    pin_memory=pin_memory, device=device, mode=mode, precision=precision,
                    replicas=replicas, replica_method=replica_method)
    row = Row(config, data_source, status, batch_size=batch,
              attempts=[Attempt(batch, Outcome.OK)],
              examples_per_s=1000.0 * batch ** 0.5, examples_per_s_iqr=5.0, noisy=False,
              step_ms_median=1.0, repeats=5, steps_per_repeat=10, repeat_s=[0.1] * 5,
              peak_allocated_bytes=57 * 1024 * batch + 2 * MiB,
              peak_reserved_bytes=57 * 1024 * batch + 20 * MiB,
              nvml_total_bytes=80 * 1024 * MiB, nvml_driver_reserved_bytes=615 * MiB,
              nvml_baseline_used_bytes=10 * MiB,
              nvml_peak_used_bytes=57 * 1024 * batch + 20 * MiB + 617 * MiB + 10 * MiB,
              predicted_peak_bytes=58 * 1024 * batch + 2 * MiB, loss_first=2.3, loss_last=1.9,
              wall_s=2.0)
    for name, value in extra.items():
        assert hasattr(row, name), name
        setattr(row, name, value)
    return row.as_dict()


def crafted_cpu_row(batch, **extra) -> dict:
    """A stored row of a CPU cell on synthetic data: no allocator or NVML figures, the tracked
    tensor peak instead, as `bench.run --device cpu --data synthetic` writes it."""
    cpu = {"device": "cpu", "data_source": "synthetic", "peak_allocated_bytes": None,
           "peak_reserved_bytes": None, "nvml_total_bytes": None,
           "nvml_driver_reserved_bytes": None, "nvml_baseline_used_bytes": None,
           "nvml_peak_used_bytes": None, "nvml_note": "no GPU",
           "cpu_peak_rss_bytes": 900 * MiB, "cpu_baseline_rss_bytes": 880 * MiB,
           "tracked_peak_bytes": 57 * 1024 * batch, "model_fingerprint": "5d1e8b2c7a90",
           "examples_per_s": 50.0 * batch ** 0.5 * 100, "examples_per_s_iqr": 300.0}
    return crafted_row(batch, **{**cpu, **extra})


CPU_ENV = {"gpu_name": None, "driver_version": None, "cuda_version": None,
           "torch_version": "2.14.1", "created_at": "2026-11-27T10:00:00+00:00",
           "commit": "abc123"}


HISTORY_CPU = "Intel(R) Xeon(R) Processor"


def history_run(path, commit, when, speed=10_000.0, memory=1_000_000, busy=False,
                status="ok", batches=(64,), gpu_name=None, **extra):
    """A finished CPU run of LeNet at one commit, with the figures given, as bench.history
    records it."""
    from bench.instruments.contention import Contention

    contention = Contention(busy=busy, busy_reasons=("others used 40% of the CPUs",) if busy
                            else ())
    rows = [crafted_cpu_row(b, examples_per_s=speed, examples_per_s_iqr=speed * 0.01,
                            tracked_peak_bytes=memory, contention=contention, status=status,
                            **extra)
            for b in batches]
    env = {"gpu_name": gpu_name, "torch_version": "2.14.1", "cpu": HISTORY_CPU, "torch_threads": 2,
           "host": "runner-1", "created_at": when, "commit": commit, "commit_time": when,
           "branch": "main"}
    return crafted_run(path, rows, device="cpu", env=env)


def a_plan(**fields):
    """A plan of one CPU cell on synthetic data, with any field of
    bench.planning.plan_file.Plan given."""
    from bench.basics.settings import Settings
    from bench.planning.grid import Config
    from bench.planning.plan_file import Plan

    plan = {"grid": "smoke", "device": "cpu", "data": "synthetic", "settings": Settings(),
            "cells": (Config(64),), **fields}
    return Plan(**plan)


def crafted_run(path, rows, device="cuda:0", boundaries=(), env=None, torn=False):
    """A run directory holding `rows` (stored dicts): env.json, plan.json, results.jsonl and
    boundaries.jsonl, as a finished run leaves them."""
    path.mkdir(parents=True)
    (path / "env.json").write_text(json.dumps(env or {
        "gpu_name": "NVIDIA H100 80GB HBM3", "driver_version": "580.65.06",
        "cuda_version": "13.0", "torch_version": "2.14.1", "gpu_total_bytes": 80 * 1024 * MiB,
        "created_at": "2026-11-27T10:00:00+00:00", "commit": "abc123"}))
    from bench.records.row import config_of, read_row

    cells = tuple(dict.fromkeys(config_of(read_row(r, "crafted")) for r in rows
                                if isinstance(r, dict) and "key" in r))
    (path / "plan.json").write_text(json.dumps(a_plan(grid="default", device=device, cells=cells,
                                                       data="fashion-mnist").as_dict()))
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if torn:
        text += '{"key": "b9-flo'
    (path / "results.jsonl").write_text(text)
    (path / "boundaries.jsonl").write_text("".join(json.dumps(b) + "\n" for b in boundaries))
    return path


def loader_start_method(device: str) -> str:
    """How a host loader starts its workers in this process: for a test in a spawned one."""
    from lenet.data import loader_context

    return loader_context(torch.device(device)).get_start_method()


# two CUDA out-of-memory messages an H100 gave (torch 2.11): a float32 boundary trial at
# b1,114,112 whose room was there in pieces, and a b65,536 cell under a 2 GiB cap out of room
H100_FRAGMENTED = (
    "OutOfMemoryError: CUDA out of memory. Tried to allocate 19.52 GiB. GPU 0 has a total "
    "capacity of 79.18 GiB of which 16.40 GiB is free. Including non-PyTorch memory, this "
    "process has 62.77 GiB memory in use. Of the allocated memory 42.60 GiB is allocated by "
    "PyTorch, and 19.42 GiB is reserved by PyTorch but unallocated. If reserved but unallocated "
    "memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True")
H100_CAPPED_FULL = (
    "OutOfMemoryError: CUDA out of memory. Tried to allocate 1.15 GiB. GPU 0 has a total "
    "capacity of 79.18 GiB of which 76.91 GiB is free. Including non-PyTorch memory, this "
    "process has 2.26 GiB memory in use. 2.00 GiB allowed; Of the allocated memory 1.52 GiB is "
    "allocated by PyTorch, and 311.50 KiB is reserved by PyTorch but unallocated.")
