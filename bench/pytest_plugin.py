"""A pytest plugin: memory beside time in pytest-benchmark, for any project's tests.

Installed with the package (a `pytest11` entry point). The fixture `memory_benchmark` is called as
pytest-benchmark's `benchmark` is, on any callable:

    def test_forward(memory_benchmark):
        memory_benchmark(model, batch)              # or memory_benchmark.pedantic(...)

On CUDA it synchronises the device inside the timed target, so a round ends when the GPU's work
does, not when its launches do. Each benchmark's `extra_info` gets, where they were measured:
`peak_allocated_bytes` and `peak_reserved_bytes` (CUDA's allocator), `nvml_peak_used_bytes` (the
card, polled), `tracked_peak_bytes` (the peak of live tensor bytes over one call, tracked operator
by operator: repeatable to the byte on the CPU) and `cpu_peak_rss_bytes` (the process's peak
resident set). `machine_info` gets the GPU, its driver, CUDA and torch.

    pytest --benchmark-compare --benchmark-memory-compare-fail=tracked_peak_bytes:5%

fails the session when a benchmark's field grew past the threshold against the baseline that
--benchmark-compare loads, a line per failure. torch is imported only when a fixture or a hook
needs it, so a project's other test runs do not pay for it.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

import pytest

OPTION = "--benchmark-memory-compare-fail"
_THRESHOLD = re.compile(r"^(?P<field>[A-Za-z_][A-Za-z0-9_]*):(?P<percent>[0-9]+(\.[0-9]+)?)%$")


@dataclass(frozen=True)
class MemoryThreshold:
    field: str  # an extra_info name, such as tracked_peak_bytes
    fraction: float  # 0.05 for 5%

    def failure(self, name: str, base, now: dict) -> str | None:
        """The line that says `name` grew past this threshold, or that it cannot be compared
        (a gate that cannot compare fails: it never passes unseen); None where it held."""
        from bench.basics.units import format_bytes
        from bench.gates.growth import growth_past

        after = now.get(self.field)
        if not _is_number(after):
            held = ", ".join(sorted(k for k, v in now.items() if _is_number(v))) or "nothing"
            return (f"{name}: {self.field} was not measured here (its extra_info holds "
                    f"{held}); check the field's spelling, and that the test uses "
                    f"memory_benchmark")
        if not isinstance(base, dict):
            return (f"{name}: the baseline's extra_info is {_words(base)}, not an object "
                    f"holding {self.field}; save a new baseline (--benchmark-autosave)")
        before = base.get(self.field)
        if not _is_number(before) or before <= 0:
            return (f"{name}: the baseline's {self.field} is {_words(before)}, not a size to "
                    f"compare with; save a new baseline (--benchmark-autosave)")
        grew = growth_past(self.field, before, after, self.fraction, format_bytes)
        return grew and f"{name}: {grew}"


def _words(value) -> str:
    return "missing" if value is None else repr(value)[:60]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def parse_threshold(text: str) -> MemoryThreshold:
    match = _THRESHOLD.match(text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not FIELD:PCT, such as tracked_peak_bytes:5% (FIELD is an extra_info "
            f"name)")
    from bench.cli import percentage

    return MemoryThreshold(match["field"], percentage(match["percent"]))


def pytest_addoption(parser):
    group = parser.getgroup("benchmark")
    group.addoption(OPTION, action="append", type=parse_threshold, default=[],
                    metavar="FIELD:PCT",
                    help="fail when a benchmark's extra_info FIELD (e.g. tracked_peak_bytes) grew "
                         "more than PCT against the --benchmark-compare baseline; may be given "
                         "several times")


def pytest_configure(config):
    if config.getoption("benchmark_memory_compare_fail") and \
            not config.getoption("benchmark_compare", None):
        raise pytest.UsageError(f"{OPTION} needs --benchmark-compare: a baseline to compare with")


class MemoryBenchmark:
    """pytest-benchmark's `benchmark`, with the device synchronised and peak memory recorded."""

    def __init__(self, benchmark):
        self._benchmark = benchmark

    @property
    def extra_info(self) -> dict:
        return self._benchmark.extra_info

    def __call__(self, function, *args, **kwargs):
        return self._measure(function, args, kwargs,
                             lambda target: self._benchmark(target, *args, **kwargs))

    def pedantic(self, target, args=(), kwargs=None, setup=None, **options):
        kwargs = kwargs or {}

        def first_call():
            return setup() if setup is not None else (args, kwargs)

        return self._measure(target, args, kwargs, lambda timed: self._benchmark.pedantic(
            timed, args=args, kwargs=kwargs, setup=setup, **options), first_call)

    def _measure(self, function, args, kwargs, run, first_call=None):
        import torch

        from bench.instruments import memory

        call_args, call_kwargs = first_call() if first_call else (args, kwargs)
        function(*call_args, **(call_kwargs or {}))  # untimed: starts CUDA if the code uses it
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        device = torch.device("cuda", torch.cuda.current_device()) if cuda else None

        def synchronised(*a, **k):
            result = function(*a, **k)
            if cuda:
                torch.cuda.synchronize(device)  # the round ends when the GPU's work does
            return result

        if cuda:
            memory.reset_peaks(device)
        memory.reset_peaks(torch.device("cpu"))
        with _nvml_sampler(device) as sampler:
            result = run(synchronised)
        info = self._benchmark.extra_info
        info["cpu_peak_rss_bytes"] = memory.cpu_peak_rss_bytes()
        if cuda:
            peaks = memory.read_peaks(device)
            info["peak_allocated_bytes"] = peaks.peak_allocated_bytes
            info["peak_reserved_bytes"] = peaks.peak_reserved_bytes
            info["nvml_peak_used_bytes"] = sampler.peak if sampler else None
        call_args, call_kwargs = first_call() if first_call else (args, kwargs)
        with memory.LiveBytes() as tracker:  # after timing: tracking slows what it watches
            function(*call_args, **(call_kwargs or {}))
        info["tracked_peak_bytes"] = tracker.peak_bytes
        return result


class _nvml_sampler:
    """The card's used memory polled while the benchmark runs; None where NVML cannot say."""

    def __init__(self, device):
        self.device, self.reader, self.sampler = device, None, None

    def __enter__(self):
        if self.device is None:
            return None
        from bench.instruments.nvml import NvmlReader, NvmlUnavailable, PeakSampler

        try:
            self.reader = NvmlReader(self.device.index or 0)
        except NvmlUnavailable:
            return None
        self.sampler = PeakSampler(self.reader.used_bytes).__enter__()
        return self.sampler

    def __exit__(self, *exc):
        if self.sampler is not None:
            self.sampler.stop()
        if self.reader is not None:
            self.reader.close()


@pytest.fixture
def memory_benchmark(benchmark):
    """pytest-benchmark's `benchmark` with peak memory in extra_info (see the module's text)."""
    return MemoryBenchmark(benchmark)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info):
    import torch

    machine_info["torch_version"] = torch.__version__
    machine_info["cuda_version"] = torch.version.cuda
    machine_info["gpu_name"] = None
    machine_info["driver_version"] = None
    if torch.cuda.is_available():
        from bench.instruments.nvml import NvmlReader, NvmlUnavailable

        machine_info["gpu_name"] = torch.cuda.get_device_name(0)
        try:
            with NvmlReader(0) as reader:
                machine_info["driver_version"] = reader.driver_version()
        except NvmlUnavailable as exc:
            machine_info["driver_version"] = f"unknown ({exc})"


def memory_failures(config) -> list[str]:
    """A line per benchmark and field that grew past its threshold against the baseline."""
    thresholds = config.getoption("benchmark_memory_compare_fail")
    session = getattr(config, "_benchmarksession", None)
    if not thresholds or session is None:
        return []
    lines = []
    for bench in session.benchmarks:
        for baseline in (session.compared_mapping or {}).values():
            base = baseline.get(bench.fullname)
            if base is None:
                continue
            for threshold in thresholds:
                line = threshold.failure(bench.fullname, base.get("extra_info"),
                                         bench.extra_info)
                if line:
                    lines.append(line)
    return lines


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    failures = memory_failures(session.config)
    session.config.stash[_FAILURES] = failures
    if failures and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    failures = terminalreporter.config.stash.get(_FAILURES, [])
    if failures:
        terminalreporter.section("memory regressions", red=True)
        for line in failures:
            terminalreporter.line(f"MEMORY REGRESSION {line}", red=True)


_FAILURES = pytest.StashKey[list]()
