"""The pytest plugin as another project meets it: a small project, run by pytester, that finds the
plugin through the installed package's entry point; docs/ci-gates.md's example in processes of
its own."""

import json
import re
import sys

import pytest

from helpers import PLUGIN, ROOT, needs_gpu

LOAD = [option for name in PLUGIN for option in ("-p", name)]


@pytest.fixture(autouse=True)
def _libraries_outlive_pytester(tmp_path_factory, monkeypatch):
    """pytester's in-process run drops every module first imported inside it when it ends, but
    torch registers operators and cache artifacts once per process and keeps references to
    sympy's classes: a library imported again later in the suite fails (a compile: "Artifact of
    type=autotune already registered", "Could not compare -oo <= oo"). Only the small
    project's own modules are dropped; the libraries it imported are kept, as pytester keeps
    zope's. Set up before the pytester fixture, whose own snapshot it shapes too."""
    from _pytest import pytester as module

    snapshot = module.SysModulesSnapshot.__init__
    projects = str(tmp_path_factory.getbasetemp())  # where pytester writes its projects

    def libraries(name):
        return not (getattr(sys.modules.get(name), "__file__", None) or "").startswith(projects)

    def keeping_libraries(self, preserve=None):
        snapshot(self, preserve=lambda name: libraries(name) or bool(preserve and preserve(name)))

    monkeypatch.setattr(module.SysModulesSnapshot, "__init__", keeping_libraries)


@pytest.fixture(autouse=True)
def _a_project_of_its_own(monkeypatch):
    """The small project is a pytest run of its own, not a worker of this suite's pytest-xdist:
    pytest-benchmark turns itself off in an xdist worker, which it knows by these variables."""
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)


PROJECT = """
import torch

SIZE = {size}


def make(n):
    return torch.ones(n, dtype=torch.float32).sum()


def test_make(memory_benchmark):
    memory_benchmark(make, SIZE)


def test_pedantic(memory_benchmark):
    memory_benchmark.pedantic(make, args=(SIZE,), rounds=3, warmup_rounds=1)
"""


def _run(pytester, size, *options):
    """The small project's tests, run by pytest in this process (pytester's in-process run loads
    the plugins afresh, as a new process does). Timing rounds are kept short: these tests read
    memory, which does not depend on how long a benchmark is timed."""
    pytester.makepyfile(test_project=PROJECT.format(size=size))
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", *LOAD,
                                        "--benchmark-max-time=0.05", *options)


def test_a_torch_module_first_imported_in_a_run_outlives_it(pytester):
    fresh = next(name for name in ("torch.utils.show_pickle", "torch.utils.model_zoo",
                                   "torch.utils.bundled_inputs") if name not in sys.modules)
    pytester.makepyfile(test_imports=f"import {fresh}\n\n\ndef test_nothing():\n    pass\n")
    assert pytester.runpytest_inprocess("-p", "no:cacheprovider").ret == 0
    assert fresh in sys.modules


def test_the_fixture_records_memory_and_the_machine(pytester):
    result = _run(pytester, 1000, "--benchmark-json=out.json")
    assert result.ret == 0, result.stdout.str()

    data = json.loads((pytester.path / "out.json").read_text())
    (first, second) = data["benchmarks"]
    # one float32 tensor of 1,000 and the 4-byte sum: the peak of live tensor bytes in one call
    assert first["extra_info"]["tracked_peak_bytes"] == 4004
    assert second["extra_info"]["tracked_peak_bytes"] == 4004
    assert first["extra_info"]["cpu_peak_rss_bytes"] > 0
    assert "peak_allocated_bytes" not in first["extra_info"]  # CPU code: no CUDA figures
    assert set(data["machine_info"]) >= {"gpu_name", "driver_version", "cuda_version",
                                         "torch_version"}


def test_memory_growth_past_the_threshold_fails_with_a_line_each(pytester):
    assert _run(pytester, 1000, "--benchmark-autosave").ret == 0
    result = _run(pytester, 2000, "--benchmark-compare",
                  "--benchmark-memory-compare-fail=tracked_peak_bytes:10%")
    assert result.ret == 1, result.stdout.str()
    result.stdout.fnmatch_lines([
        "MEMORY REGRESSION test_project.py::test_make: tracked_peak_bytes grew from 3.9 KiB "
        "to 7.8 KiB (+99.9%), past the 10% allowed",
        "MEMORY REGRESSION test_project.py::test_pedantic: tracked_peak_bytes grew from 3.9 KiB "
        "to 7.8 KiB (+99.9%), past the 10% allowed",
    ])


def test_nothing_grew_passes(pytester):
    assert _run(pytester, 1000, "--benchmark-autosave").ret == 0
    result = _run(pytester, 1000, "--benchmark-compare",
                  "--benchmark-memory-compare-fail=tracked_peak_bytes:10%",
                  "--benchmark-memory-compare-fail=cpu_peak_rss_bytes:100%")
    assert result.ret == 0, result.stdout.str()
    assert "MEMORY REGRESSION" not in result.stdout.str()


def _spoil_baseline(pytester, spoil) -> None:
    (saved,) = (pytester.path / ".benchmarks").rglob("*.json")
    data = json.loads(saved.read_text())
    for bench in data["benchmarks"]:
        spoil(bench)
    saved.write_text(json.dumps(data))


@pytest.mark.e2e  # a pytest session and a baseline a case, about 11 s each: the full tier
@pytest.mark.parametrize("spoil, words", [
    (lambda b: b["extra_info"].pop("tracked_peak_bytes"),
     "the baseline's tracked_peak_bytes is missing, not a size to compare with"),
    (lambda b: b["extra_info"].update(tracked_peak_bytes="4004"),
     "the baseline's tracked_peak_bytes is '4004', not a size to compare with"),
    (lambda b: b["extra_info"].update(tracked_peak_bytes=float("nan")),
     "the baseline's tracked_peak_bytes is nan, not a size to compare with"),
    (lambda b: b["extra_info"].update(tracked_peak_bytes=0),
     "the baseline's tracked_peak_bytes is 0, not a size to compare with"),
    (lambda b: b.pop("extra_info"), "the baseline's extra_info is missing, not an object"),
    (lambda b: b.update(extra_info=[1, 2]), "the baseline's extra_info is [1, 2], not an object"),
])
def test_a_baseline_that_cannot_be_compared_fails_the_gate_with_a_line(pytester, spoil, words):
    assert _run(pytester, 1000, "--benchmark-autosave").ret == 0
    _spoil_baseline(pytester, spoil)
    result = _run(pytester, 1000, "--benchmark-compare",
                  "--benchmark-memory-compare-fail=tracked_peak_bytes:10%")
    assert result.ret == 1, result.stdout.str()
    assert "INTERNALERROR" not in result.stdout.str()
    line = next(line for line in result.stdout.lines if line.startswith(
        "MEMORY REGRESSION test_project.py::test_make: "))
    assert words in line and line.endswith("; save a new baseline (--benchmark-autosave)")


def test_a_misspelled_field_fails_the_gate_naming_what_was_measured(pytester):
    assert _run(pytester, 1000, "--benchmark-autosave").ret == 0
    result = _run(pytester, 1000, "--benchmark-compare",
                  "--benchmark-memory-compare-fail=trackd_peak_bytes:0.5%")
    assert result.ret == 1, result.stdout.str()
    result.stdout.fnmatch_lines([
        "MEMORY REGRESSION test_project.py::test_make: trackd_peak_bytes was not measured here "
        "(its extra_info holds cpu_peak_rss_bytes, tracked_peak_bytes); check the field's "
        "spelling, and that the test uses memory_benchmark"])


def test_a_fractional_threshold_is_printed_as_given(pytester):
    assert _run(pytester, 1000, "--benchmark-autosave").ret == 0
    result = _run(pytester, 2000, "--benchmark-compare",
                  "--benchmark-memory-compare-fail=tracked_peak_bytes:0.5%")
    result.stdout.fnmatch_lines(["*past the 0.5% allowed"])


def test_a_threshold_that_is_not_field_and_percent_is_a_usage_error(pytester):
    result = _run(pytester, 1000, "--benchmark-memory-compare-fail=nonsense")
    assert result.ret == 4  # pytest's usage error, as for --benchmark-compare-fail
    result.stderr.fnmatch_lines(["*--benchmark-memory-compare-fail: 'nonsense' is not "
                                 "FIELD:PCT, such as tracked_peak_bytes:5%*"])


def test_the_gate_needs_a_baseline(pytester):
    result = _run(pytester, 1000, "--benchmark-memory-compare-fail=tracked_peak_bytes:5%")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--benchmark-memory-compare-fail needs --benchmark-compare*"])


def _readme_example():
    """The example project of docs/ci-gates.md and its commands, as written there."""
    text = (ROOT / "docs" / "ci-gates.md").read_text()
    section = text[text.index("## Use it in your own project's CI"):]
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]
    commands = re.search(r"```sh\n(.*?)```", section, re.S)[1]
    return code, [line for line in commands.splitlines() if line.startswith("pytest ")]


@pytest.mark.e2e
def test_the_documented_example_runs_as_written(pytester):
    code, commands = _readme_example()
    name = re.match(r"# (\S+\.py)", code)[1]
    (pytester.path / name).write_text(code)
    assert len(commands) == 2
    for command in commands:
        result = pytester.runpytest_subprocess(*LOAD, *command.split()[1:])
        assert result.ret == 0, result.stdout.str()
    (saved,) = (pytester.path / ".benchmarks").rglob("*.json")
    for bench in json.loads(saved.read_text())["benchmarks"]:
        assert bench["extra_info"]["tracked_peak_bytes"] > 0


CUDA_PROJECT = """
import torch


def sleep_on_the_gpu():
    torch.ones(2**20, device="cuda")  # 4 MiB through the caching allocator
    torch.cuda._sleep(100_000_000)  # a kernel that spins some 50 ms; the launch returns at once


def test_sleep(memory_benchmark):
    memory_benchmark.pedantic(sleep_on_the_gpu, rounds=3, warmup_rounds=1)
"""


@needs_gpu
def test_on_cuda_the_round_waits_for_the_gpu_and_memory_is_recorded(pytester):
    pytester.makepyfile(test_cuda=CUDA_PROJECT)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *LOAD,
                                           "--benchmark-json=out.json")
    assert result.ret == 0, result.stdout.str()
    (bench,) = json.loads((pytester.path / "out.json").read_text())["benchmarks"]
    assert bench["stats"]["min"] > 0.01  # the kernel's time, not the launch's microseconds
    info = bench["extra_info"]
    assert info["peak_allocated_bytes"] >= 4 * 2**20
    assert info["peak_reserved_bytes"] >= info["peak_allocated_bytes"]
    assert info["nvml_peak_used_bytes"] > info["peak_reserved_bytes"]
