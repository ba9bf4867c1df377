"""Pages built from crafted results files: every status, a CPU run, a torn file, one cell."""

import json
import os
import shutil
import signal
import subprocess
import sys

import matplotlib.image
import pandas as pd
import pytest

from bench.instruments.contention import Contention
from helpers import (
    CPU_ENV,
    H100_CAPPED_FULL,
    H100_FRAGMENTED,
    ROOT,
    MiB,
    crafted_cpu_row,
    crafted_row,
    crafted_run,
    ctrl_c_as_at_a_terminal,
    run_main,
    wait_until_it_maps,
    wait_until_it_writes,
)
from reports.frame import load_run, pareto
from reports.write import write_report

HOSTILE = "<script>alert('x')</script> & \"quotes\""


def _every_status_run(tmp_path):
    rows = [crafted_row(b) for b in (64, 256, 1024, 4096)]
    rows.append(crafted_row(256, placement="host", workers=4, examples_per_s=9000.0))
    rows.append(crafted_row(16384, status="oom_backed_off", batch_size=8192,
                         attempts=[{"batch_size": 16384, "outcome": "oom", "error": "CUDA oom"},
                                   {"batch_size": 8192, "outcome": "ok", "error": None}]))
    # a second cell that backed off to the same batch, with the prediction for the one it asked
    rows.append(crafted_row(32768, status="oom_backed_off", batch_size=8192,
                         predicted_peak_bytes=58 * 1024 * 32768 + 2 * MiB,
                         attempts=[{"batch_size": 32768, "outcome": "oom", "error": "CUDA oom"},
                                   {"batch_size": 16384, "outcome": "oom", "error": "CUDA oom"},
                                   {"batch_size": 8192, "outcome": "ok", "error": None}]))
    rows.append(crafted_row(65536, dtype="bfloat16", status="oom", batch_size=None,
                         examples_per_s=None, error="OutOfMemoryError: " + HOSTILE))
    rows.append(crafted_row(4096, dtype="float16", status="error", batch_size=None,
                         examples_per_s=None, error_kind="kernel_limit",
                         error="RuntimeError: integer out of range"))
    rows.append(crafted_row(1024, dtype="float16", loss_last=float("nan")))
    boundaries = [{"key": "float32-nchw", "dtype": "float32", "channels_last": False,
                   "placement": "device", "max_ok_batch": 1048576,
                   "first_failed_batch": 2097152, "stop_reason": "kernel_limit",
                   "failure": "RuntimeError: integer out of range", "trials": [],
                   "predicted_max_batch": 1400000}]
    return crafted_run(tmp_path / "gpu", rows, boundaries=boundaries)


def _check_pngs(folder, expected):
    for name in expected:
        pixels = matplotlib.image.imread(folder / name)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 200
        assert pixels.std() > 0.05, f"{name} is blank"


def test_every_status_gives_a_page_with_escaped_text(tmp_path):
    run_dir = _every_status_run(tmp_path)
    index = write_report(run_dir)
    page = index.read_text()
    assert HOSTILE not in page and "&lt;script&gt;" in page
    for status in ("oom_backed_off", "<tr class='oom'>", "<tr class='error'>"):
        assert status in page
    assert "integer out of range" in page
    assert "the loss became nan (diverged)" in page
    assert "Largest batch at float32: 1,048,576 (kernel_limit)" in page
    assert "The notebook's settings (b256-float32-nchw-host-w4)" in page
    _check_pngs(index.parent, ["throughput.png", "memory.png", "memory_parts.png",
                               "tradeoff.png"])
    for name in ("throughput.png", "memory.png", "memory_parts.png", "tradeoff.png"):
        assert f"src='{name}'" in page


def test_a_cpu_run_shows_not_measured_never_zero(tmp_path):
    rows = [crafted_row(b, peak_allocated_bytes=None, peak_reserved_bytes=None,
                     nvml_total_bytes=None, nvml_driver_reserved_bytes=None,
                     nvml_baseline_used_bytes=None, nvml_peak_used_bytes=None,
                     nvml_note="no GPU", device="cpu", cpu_peak_rss_bytes=900 * MiB,
                     cpu_baseline_rss_bytes=880 * MiB, tracked_peak_bytes=b * 57 * 1024,
                     placement=placement)
            for b in (64, 256) for placement in ("device", "host")]
    run_dir = crafted_run(tmp_path / "cpu", rows, device="cpu",
                        env={"cpu": "AMD EPYC", "torch_version": "2.14.1"})
    page = write_report(run_dir).read_text()
    assert "not measured" in page
    assert "<td>0 B</td>" not in page
    assert ("At the notebook&#x27;s settings (b256-float32-nchw-host-w0) one training step peaks "
            "at 14.2 MiB of live tensors; the worker&#x27;s resident set peaked at 900.0 MiB")\
        in page
    assert "a CPU run: no GPU memory was measured" in page


def test_a_torn_file_is_read_up_to_the_tear_with_a_warning(tmp_path):
    run_dir = crafted_run(tmp_path / "torn", [crafted_row(64), crafted_row(256)], torn=True)
    run = load_run(run_dir)
    assert len(run.cells) == 2
    assert run.warnings == [f"{run_dir}/results.jsonl: skipped a torn last line (the run was "
                            f"stopped mid-write) at line 3"]
    assert "skipped a torn last line" in write_report(run_dir).read_text()


def test_a_single_cell_and_an_all_failed_run(tmp_path):
    single = crafted_run(tmp_path / "one", [crafted_row(64)])
    assert "Fastest: <b>b64-float32-nchw-device</b>" in write_report(single).read_text()
    failed = crafted_run(tmp_path / "failed", [crafted_row(64, status="error", examples_per_s=None,
                                                      error="boom")])
    assert "No cell trained" in write_report(failed).read_text()


def test_pareto_keeps_only_cells_nothing_beats(tmp_path):
    run = load_run(_every_status_run(tmp_path))
    front = pareto(run.cells)
    # bigger batches are faster and bigger: every trained float32 device cell is a trade-off
    assert list(front["batch_size"])[:4] == [64, 256, 1024, 4096]
    assert front["examples_per_s"].is_monotonic_increasing


def test_comparison_page_puts_the_worst_first(tmp_path):
    base = crafted_run(tmp_path / "base", [crafted_row(64), crafted_row(256)])
    new = crafted_run(tmp_path / "new", [crafted_row(64), crafted_row(256, examples_per_s=100.0)])
    result = run_main("reports", str(base), str(new))
    assert result.returncode == 0, result.stderr
    page = (new / "compare" / "index.html").read_text()
    assert page.index("b256-float32-nchw-device") < page.index("b64-float32-nchw-device")
    assert "examples_per_s fell from 16,000 to 100" in page


def test_not_a_run_is_one_line(tmp_path):
    result = run_main("reports", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"python -m reports: error: {tmp_path} holds no "
                                     f"results.jsonl; run python -m bench.run --out {tmp_path} "
                                     f"first")


def test_reports_never_imports_torch(tmp_path):
    run_dir = _every_status_run(tmp_path)
    code = ("import sys; from reports.write import write_report; from pathlib import Path; "
            f"write_report(Path({str(run_dir)!r})); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = """<script>
window.addEventListener('load', () => {
  const images = [...document.images].map(i => [i.getAttribute('src'), i.naturalWidth,
                                                i.naturalHeight, i.complete]);
  document.body.setAttribute('data-images', JSON.stringify(images));
});
</script></body>"""


@pytest.mark.e2e
@pytest.mark.core
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_page_renders_in_chromium_with_every_image_loaded(tmp_path):
    index = write_report(_every_status_run(tmp_path))
    probe = index.with_name("probe.html")
    probe.write_text(index.read_text().replace("</body>", PROBE))
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             "--allow-file-access-from-files", "--virtual-time-budget=5000"]
    dom = subprocess.run(flags + ["--enable-logging=stderr", "--v=0", "--dump-dom",
                                  probe.as_uri()], capture_output=True, text=True, timeout=120)
    start = dom.stdout.index("data-images=\"") + len("data-images=\"")
    images = json.loads(dom.stdout[start:dom.stdout.index("\"", start)].replace("&quot;", "\""))
    assert sorted(src for src, *_ in images) == sorted(
        ["throughput.png", "memory.png", "memory_parts.png", "tradeoff.png"])
    for src, width, height, complete in images:
        assert complete and width > 200 and height > 200, src
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert console == []
    shot = tmp_path / "page.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1280,2400", index.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2400, 1280) and pixels.std() > 0.05


def test_cells_that_backed_off_to_the_same_batch(tmp_path):
    """The 2 GiB cap check's shape: b32768 and b65536 both trained at 16384."""
    rows = [crafted_row(asked, status="oom_backed_off", batch_size=16384,
                     predicted_peak_bytes=58 * 1024 * asked,
                     attempts=[{"batch_size": asked, "outcome": "oom", "error": "CUDA oom"},
                               {"batch_size": 16384, "outcome": "ok", "error": None}])
            for asked in (32768, 65536)]
    index = write_report(crafted_run(tmp_path / "cap", rows))
    _check_pngs(index.parent, ["memory.png"])


def test_a_run_with_no_rows_gets_a_page_that_says_so(tmp_path):
    run_dir = crafted_run(tmp_path / "empty", [])
    result = run_main("reports", str(run_dir))
    assert result.returncode == 0, result.stderr
    page = (run_dir / "report" / "index.html").read_text()
    assert "This run holds no result yet" in page
    assert f"python -m bench.run --resume {run_dir}" in page


def test_a_read_only_run_directory_is_one_line_and_out_writes_elsewhere(tmp_path):
    run_dir = crafted_run(tmp_path / "run", [crafted_row(64)])
    (run_dir / "report").mkdir()
    (run_dir / "report").chmod(0o500)
    (run_dir / "report" / "index.html").mkdir()  # unwritable even for root: a folder in the way
    result = run_main("reports", str(run_dir))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "cannot write the report into" in result.stderr
    assert "write it elsewhere with --out DIR" in result.stderr
    elsewhere = tmp_path / "elsewhere"
    result = run_main("reports", str(run_dir), "--out", str(elsewhere))
    assert result.returncode == 0, result.stderr
    assert "Fastest: <b>b64-float32-nchw-device</b>" in (elsewhere / "index.html").read_text()


# matplotlib would read "$...$" as math, and "\\frac{1}" as broken math
MACHINE_TEXT = "$\\frac{1}$ <b>GPU</b> & 50% $x^2$"


def test_text_from_the_machine_stays_plain_in_plots_and_page(tmp_path):
    rows = [crafted_row(b, error=None) for b in (64, 256)]
    rows.append(crafted_row(1024, status="error", examples_per_s=None, error=MACHINE_TEXT))
    env = {"gpu_name": MACHINE_TEXT, "host": MACHINE_TEXT, "created_at": "2026-11-27"}
    index = write_report(crafted_run(tmp_path / "odd", rows, env=env))
    page = index.read_text()
    assert "<b>GPU</b>" not in page and "&lt;b&gt;GPU&lt;/b&gt;" in page
    _check_pngs(index.parent, ["throughput.png", "tradeoff.png"])


def test_missing_batches_and_flags_stay_missing(tmp_path):
    """A failed cell has no batch and no noisy flag: the batch column must stay whole numbers
    (not 1024.0) and a missing flag must not read as noisy."""
    rows = [crafted_row(1024), crafted_row(64, status="oom", batch_size=None, examples_per_s=None,
                                     noisy=None, error="CUDA oom")]
    run_dir = crafted_run(tmp_path / "mixed", rows)
    run = load_run(run_dir)
    assert str(run.cells["batch_size"].dtype) == "Int64"
    assert list(run.cells["noisy"].astype(object)) == [False, pd.NA]
    page = write_report(run_dir).read_text()
    assert "<td>1024</td>" in page and "1024.0" not in page
    assert page.count("(noisy)") == 0


@pytest.mark.parametrize("plan", ["[]", "42", '{"grid": '])
def test_a_plan_or_env_that_is_not_an_object_still_gives_a_page(tmp_path, plan):
    run_dir = crafted_run(tmp_path / "odd", [crafted_row(64), "not a row", 42])
    (run_dir / "plan.json").write_text(plan)
    (run_dir / "env.json").write_text(plan)
    result = run_main("reports", str(run_dir))
    assert result.returncode == 0, result.stderr
    assert "skipped line 2: not a row" in result.stderr
    assert "b64-float32-nchw-device" in (run_dir / "report" / "index.html").read_text()


def test_the_page_says_what_set_changed_of_the_grid(tmp_path):
    run_dir = crafted_run(tmp_path / "set", [crafted_row(256)])
    plan = json.loads((run_dir / "plan.json").read_text())
    plan.update(grid_description="batch 64 to 16,384", overrides={"batch_size": [256, 4096]})
    (run_dir / "plan.json").write_text(json.dumps(plan))
    assert ("default: batch 64 to 16,384; as run, with --set batch_size=256,4096"
            in write_report(run_dir).read_text())


def test_pinned_loaders_and_noisy_cells_are_named(tmp_path):
    rows = [crafted_row(256, placement="host", workers=2, pin_memory=True, noisy=True)]
    run_dir = crafted_run(tmp_path / "pinned", rows)
    assert list(load_run(run_dir).cells["loader"]) == ["host, 2 workers, pinned"]
    assert write_report(run_dir).read_text().count("(noisy)") == 1


def test_a_busy_cell_is_named_and_left_out_of_the_answers(tmp_path):
    """A cell timed beside other work measured faster than the rest: the page ranks the cells it
    can vouch for, says the busy one was not counted, and keeps noisy-by-nature apart."""
    reasons = ["other processes used 48% of the CPUs"]
    rows = [crafted_row(64), crafted_row(256, noisy=True),
            crafted_row(1024, examples_per_s=10**6, contention=Contention(
                cpu_other_fraction=0.48, busy=True, busy_reasons=tuple(reasons)))]
    for row in rows[:2]:
        row.update(busy=False, cpu_other_fraction=0.01)
    page = write_report(crafted_run(tmp_path / "busy", rows)).read_text()
    assert "Fastest: <b>b256-float32-nchw-device</b>" in page
    assert ("b1024-float32-nchw-device measured faster (1,000,000 examples/s), but while the "
            "machine was busy (other processes used 48% of the CPUs): not counted.") in page
    assert ("Measured while the machine was busy, so not vouched for and left out of the "
            "answers above: 1 of 3 timed cells: b1024-float32-nchw-device (other processes used "
            "48% of the CPUs).") in page
    assert ("Noisy by nature (IQR over 5% of the median on a machine seen quiet): "
            "b256-float32-nchw-device") in page
    assert "1,000,000 (busy)" in page and "quiet (others 1% CPU)" in page


def _energy(examples_per_s, watts):
    return {"examples_per_s": examples_per_s, "mean_power_w": watts, "energy_window_s": 2.1,
            "energy_j_per_1000_examples": 1000 * watts / examples_per_s,
            "energy_method": "nvml-energy-counter"}


def test_modes_and_energy_name_the_fastest_and_the_most_frugal_cell(tmp_path):
    rows = [crafted_row(256, **_energy(180_000, 150), setup_s=0.05),
            crafted_row(256, mode="graph", **_energy(735_000, 200), setup_s=0.4),
            crafted_row(16384, **_energy(1_740_000, 600), setup_s=0.05),
            crafted_row(16384, mode="graph", **_energy(1_780_000, 640), setup_s=0.5,
                     prediction_note="not modelled: a CUDA graph keeps its step's memory")]
    index = write_report(crafted_run(tmp_path / "run", rows))
    page = index.read_text()
    assert "Fastest: <b>b16384-float32-nchw-device-graph</b> (mode graph, 0.5 s to set up) at " \
           "1,780,000 examples/s" in page
    # 200 W at 735k examples/s: 0.272 J per 1,000 examples, under 640 W at 1.78M (0.36)
    assert "Least energy: <b>b256-float32-nchw-device-graph</b> (mode graph, 0.4 s to set up) " \
           "at 0.272 J per 1,000 examples (200 W, 735,000 examples/s; nvml-energy-counter); " \
           "the fastest cell uses 0.36 J per 1,000 examples." in page
    assert "graph runs at 2.55x eager&#x27;s speed (median over 2 matching cells): faster, " \
           "after a median 0.5 s of setup a cell (eager: 0.05 s). Examples/s, graph against " \
           "eager: b256-float32-nchw-device-graph: 735,000 against 180,000 (4.08x); " \
           "b16384-float32-nchw-device-graph: 1,780,000 against 1,740,000 (1.02x)." in page
    assert "<td title='not modelled: a CUDA graph keeps its step&#x27;s memory'>not modelled" \
           in page
    assert "energy.png" in page and (index.parent / "energy.png").is_file()
    assert matplotlib.image.imread(index.parent / "energy.png").shape[1] > 600


def test_a_run_without_energy_figures_says_why_and_draws_no_energy_plot(tmp_path):
    note = "not measured: no RAPL package counter under /sys/class/powercap"
    rows = [crafted_row(b, device="cpu", energy_note=note) for b in (64, 256)]
    index = write_report(crafted_run(tmp_path / "run", rows, device="cpu", env={"cpu": "x86"}))
    page = index.read_text()
    assert f"Energy: no cell has a figure ({note})." in page
    assert "energy.png not drawn: no cell has an energy figure" in page
    assert not (index.parent / "energy.png").exists()


def test_the_loader_finding_compares_a_host_cell_with_the_same_mode_on_the_device(tmp_path):
    rows = [crafted_row(1024, placement="host", examples_per_s=9_000.0),
            crafted_row(1024, examples_per_s=10_000.0),
            crafted_row(1024, mode="compile", examples_per_s=20_000.0)]
    page = write_report(crafted_run(tmp_path / "run", rows)).read_text()
    assert "against 10,000 on device-resident data: 90% of what the step alone can do" in page


def test_a_run_spread_over_workers_says_which_ran_what_and_how_fast():
    import pandas as pd

    from reports.html import where_table

    cells = pd.DataFrame({"host": ["a", "a", "b"], "gpu_name": ["NVIDIA H100", "NVIDIA H100",
                                                                "NVIDIA H200"],
                          "worker": ["GPU 0", "GPU 0", "GPU 0"],
                          "examples_per_s": [1000.0, 3000.0, 5000.0]})
    table = where_table(cells)
    assert "<td>a</td><td>NVIDIA H100</td><td>GPU 0</td><td>2</td><td>2,000</td>" in table
    assert "<td>b</td><td>NVIDIA H200</td><td>GPU 0</td><td>1</td><td>5,000</td>" in table
    assert where_table(cells.iloc[:2]) is None  # one worker: nothing to say


def test_the_page_says_where_the_time_went(tmp_path):
    rows = [crafted_row(64, worker_start_s=6.0, data_load_s=1.5, setup_s=1.0, sizing_s=0.5,
                        wall_s=3.0),
            crafted_row(256, setup_s=1.0, sizing_s=0.5, wall_s=3.0)]
    boundaries = [{"key": "float32-nchw", "dtype": "float32", "channels_last": False,
                   "placement": "device", "max_ok_batch": 4096, "stop_reason": "oom",
                   "search_s": 21.0}]
    page = write_report(crafted_run(tmp_path / "run", rows, boundaries=boundaries)).read_text()
    section = page.split("<h2>Where the time went</h2>")[1].split("<h2>")[0]
    # 33 s in all: 4.5 s starting the worker, 1.5 s of data, 2 s of set-up, 1 s sizing, 1 s
    # timed (5 repeats of 0.1 s a cell), 2 s of the rest (1 s a cell) and the 21 s search
    assert "<tr><td>starting workers (interpreter, torch, first step)</td><td>4.5</td>" \
           "<td>14%</td></tr>" in section
    assert "<tr><td>timed repeats</td><td>1.0</td><td>3%</td></tr>" in section
    assert "<tr><td>boundary searches</td><td>21.0</td><td>64%</td></tr>" in section


def test_modes_against_eager_without_setup_times_never_read_nan(tmp_path):
    """Rows without setup_s (an older version's, or written by hand): the line leaves the
    setup out rather than print a median of nothing."""
    rows = [crafted_row(64, examples_per_s=9_000.0, setup_s=None),
            crafted_row(64, mode="compile", examples_per_s=18_000.0, setup_s=None)]
    page = write_report(crafted_run(tmp_path / "run", rows)).read_text()
    assert ("compile runs at 2.00x eager&#x27;s speed (median over 1 matching cells): faster. "
            "Examples/s, compile against eager:") in page
    assert "nan" not in page.lower().replace("nanosecond", "")


def test_without_a_search_the_largest_batch_says_so_in_one_clause(tmp_path):
    rows = [crafted_row(64), crafted_row(1024)]
    page = write_report(crafted_run(tmp_path / "run", rows)).read_text()
    assert ("Largest batch at float32: 1,024 (the largest in the grid; no boundary search "
            "ran).") in page


def test_how_long_names_the_compiles_ahead_and_the_searches_beside_the_cells(tmp_path):
    rows = [crafted_row(64, wall_s=3.0),
            crafted_row(64, mode="compile", wall_s=4.0, compile_ahead_s=21.9,
                        compile_ahead_cache="cold"),
            crafted_row(256, mode="compile", wall_s=4.0, compile_ahead_s=18.2,
                        compile_ahead_cache="cold")]
    boundaries = [{"key": "float32-nchw", "dtype": "float32", "channels_last": False,
                   "placement": "device", "max_ok_batch": 4096, "stop_reason": "oom",
                   "search_s": 21.0}]
    page = write_report(crafted_run(tmp_path / "run", rows, boundaries=boundaries)).read_text()
    assert ("<th>how long</th><td>11 s measuring cells; 40 s compiling ahead (summed over "
            "processes side by side); 21 s searching boundaries</td>") in page
    plain = write_report(crafted_run(tmp_path / "plain", rows[:1])).read_text()
    assert "<th>how long</th><td>3 s measuring cells</td>" in plain


def test_a_cell_compiled_ahead_shows_its_cold_compile_before_its_warm_setup(tmp_path):
    rows = [crafted_row(64, setup_s=0.05, examples_per_s=9_000.0),
            crafted_row(64, mode="compile", setup_s=3.6, compile_cache="warm",
                        compile_ahead_s=21.9, compile_ahead_cache="cold",
                        examples_per_s=20_000.0),
            crafted_row(256, mode="compile", setup_s=20.5, compile_cache="cold",
                        compile_ahead_error="InductorError: InvalidCxxCompiler",
                        examples_per_s=5_000.0)]
    page = write_report(crafted_run(tmp_path / "run", rows)).read_text()
    assert ("(mode compile, compiled ahead in 21.9 s (cold compile cache), then 3.6 s to set up "
            "(warm compile cache))") in page
    table = page.split("<h2>Every cell</h2>")[1]
    assert "<th>compiled ahead s</th><th>setup s</th>" in table
    assert "<td>21.9</td><td>3.6</td>" in table
    assert "compiling ahead (processes side by side, before the cells)" in page
    # the line on compile against eager gives the cold compile, what a first run pays
    assert "after a median 21.9 s of setup a cell (eager: 0.05 s)" in page
    plain = write_report(crafted_run(tmp_path / "plain", rows[:1])).read_text()
    assert "compiled ahead" not in plain


@pytest.mark.parametrize("ahead, words", [
    ({"compile_ahead_s": 21.9, "compile_ahead_cache": "cold"},
     "(mode compile, compiled ahead in 21.9 s (cold compile cache))"),
    ({"compile_ahead_error": "InductorError: InvalidCxxCompiler"},
     "(mode compile, compiling ahead failed: InductorError: InvalidCxxCompiler)")])
def test_a_compiled_cell_without_its_own_setup_time_reads_whole(tmp_path, ahead, words):
    """A row without setup_s (stored by an older version, or written by hand) still reads as a
    sentence: no dangling "then", no empty clause."""
    rows = [crafted_row(64, mode="compile", setup_s=None, examples_per_s=20_000.0, **ahead)]
    page = write_report(crafted_run(tmp_path / "run", rows)).read_text()
    assert words in page


def test_energy_fields_of_the_wrong_type_never_show_as_nan_or_none(tmp_path):
    rows = [crafted_row(64, energy_j_per_1000_examples=3.0, mean_power_w="high",
                        energy_method=None),
            crafted_row(256, energy_j_per_1000_examples=5.0, mean_power_w=250.0,
                        energy_method=12)]
    answer = write_report(crafted_run(tmp_path / "run", rows)).read_text().split(
        "<h2>The answer</h2>")[1].split("</ul>")[0]
    line = next(li for li in answer.split("<li>") if li.startswith("Least energy"))
    assert "nan" not in line and "None" not in line
    assert "J per 1,000 examples (" in line


@pytest.mark.e2e
@pytest.mark.parametrize("during", ["imports", "drawing"])
def test_ctrl_c_while_the_report_is_written_ends_it_without_a_traceback(one_cell_run, tmp_path,
                                                                       during):
    """Ctrl-C as numpy loads (the command is importing pandas and matplotlib), or as the first
    plot is saved (about a second of drawing and writing is left here). Timed by what the
    process has done, not by the clock: on a loaded CI machine 2 s after numpy's load fell at
    the report's very end."""
    run_dir = tmp_path / "run"
    shutil.copytree(one_cell_run, run_dir)
    proc = subprocess.Popen([sys.executable, "-m", "reports", str(run_dir)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_as_at_a_terminal,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    if during == "imports":
        wait_until_it_maps(proc.pid, "_multiarray_umath")
    else:
        wait_until_it_writes(proc, run_dir / "report" / "throughput.png")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert "Traceback" not in stderr, stderr
    if "report: " in stdout:
        # the signal came after the page was written: the command ended as it would have, or as
        # a Ctrl-C ends one (130), or, in Python's last moments (its finalizing gives SIGINT its
        # default action back), by the signal itself
        assert proc.returncode in (0, 128 + signal.SIGINT, -signal.SIGINT)
    else:
        assert proc.returncode == 128 + signal.SIGINT
        assert "interrupted: the report is not written; the results are untouched" in stderr


def test_the_answer_places_the_fastest_cell_against_its_cards_peak_and_roofs(tmp_path):
    """A float32 cell on an H200 at 2,406,445 examples/s of LeNet's 2,263,920 FLOPs each:
    5.45 TFLOP/s, 8.1% of the card's 66.9 TFLOP/s float32 peak. Its eager step moves
    1,480,024 bytes plus 300,240 an example (bench.planning.flops.step_traffic): 7.54 FLOP/byte,
    left of the H200's ridge (66.9 / 4.8 = 13.9), so its roof is 4.8 TB/s x 7.54 = 36.2 TFLOP/s."""
    def traffic(batch):
        return 1_480_024 + 300_240 * batch

    rows = [crafted_row(16384, gpu_name="NVIDIA H200", flops_per_example=2_263_920,
                        examples_per_s=2_406_445.0, step_traffic_bytes=traffic(16384)),
            crafted_row(256, gpu_name="NVIDIA H200", flops_per_example=2_263_920,
                        step_traffic_bytes=traffic(256))]
    index = write_report(crafted_run(tmp_path / "h200", rows))
    page = index.read_text()
    assert ("It ran 5.45 TFLOP/s of model arithmetic (2.26 MFLOP an example, forward and "
            "backward): <b>8.1%</b> of the H200 SXM's dense float32 peak (66.9 TFLOP/s; its "
            "convolutions may run as TF32). Bound by memory bandwidth: at 7.5 FLOP/byte (an "
            "eager step's traffic, unfused) its roof is 36.2 TFLOP/s, and it reached 15% of "
            "it.") in page
    assert "roofline.png" in page and (index.parent / "roofline.png").is_file()
    unknown = [crafted_row(256, gpu_name="NVIDIA GeForce RTX 4090", flops_per_example=2_263_920)]
    page = write_report(crafted_run(tmp_path / "4090", unknown)).read_text()
    assert "no peak is known for NVIDIA GeForce RTX 4090, so no share of it is given" in page
    older = [crafted_row(256)]  # a row from before FLOPs were counted
    page = write_report(crafted_run(tmp_path / "older", older)).read_text()
    assert "Its arithmetic rate is not known (the model's FLOPs were not counted)." in page


def test_a_tf32_cell_is_read_against_the_cards_tf32_peak(tmp_path):
    rows = [crafted_row(16384, gpu_name="NVIDIA H200", flops_per_example=2_263_920,
                        examples_per_s=2_406_445.0, precision="tf32")]
    page = write_report(crafted_run(tmp_path / "tf32", rows)).read_text()
    assert ("<b>1.1%</b> of the H200 SXM's dense tf32 peak (494.7 TFLOP/s).") in page


def test_several_models_at_once_are_answered_beside_the_fastest_single_one(tmp_path):
    """Sixteen LeNets stacked at batch 4,096 on an H200, 6,000,000 examples/s in all: the
    fastest answer stays the single model's (2,406,445), and a line of its own gives the
    aggregate, 375,000 each, 2.49x, 13.6 TFLOP/s (20.3% of the float32 peak). Its intensity is
    read from sixteen models' traffic for sixteen times the examples: 7.5 FLOP/byte, as one
    model's, so its roof is 36.2 TFLOP/s, 38% of it reached."""
    def traffic(batch, models=1):
        return models * (1_480_024 + 300_240 * batch)

    h200 = {"gpu_name": "NVIDIA H200", "flops_per_example": 2_263_920}
    rows = [crafted_row(16384, examples_per_s=2_406_445.0, step_traffic_bytes=traffic(16384),
                        **h200),
            crafted_row(4096, replicas=16, examples_per_s=6_000_000.0,
                        step_traffic_bytes=traffic(4096, 16), **h200),
            crafted_row(4096, replicas=16, replica_method="streams", examples_per_s=3_000_000.0,
                        step_traffic_bytes=traffic(4096, 16), **h200)]
    index = write_report(crafted_run(tmp_path / "h200", rows))
    page = index.read_text()
    assert "Fastest: <b>b16384-float32-nchw-device</b>" in page
    assert ("Several models at once: <b>b4096-float32-nchw-device-x16</b> (mode eager, vmap) "
            "trained 16 at 6,000,000 examples/s in all, 375,000 each: 2.49x the fastest single "
            "model") in page
    assert ("It ran 13.6 TFLOP/s of model arithmetic (2.26 MFLOP an example, forward and "
            "backward): <b>20.3%</b> of the H200 SXM's dense float32 peak (66.9 TFLOP/s; its "
            "convolutions may run as TF32). Bound by memory bandwidth: at 7.5 FLOP/byte (an "
            "eager step's traffic, unfused) its roof is 36.2 TFLOP/s, and it reached 38% of "
            "it.") in page
    assert "<th>examples/s a model</th>" in page and "<td>187,500</td>" in page
    single = write_report(crafted_run(tmp_path / "single", rows[:1])).read_text()
    assert "Several models at once" not in single and "examples/s a model" not in single


def test_a_step_its_operators_launches_fill_is_called_bound_by_launching(tmp_path):
    """LeNet's eager step, 43 operators, at 8 µs each takes 0.34 ms to launch: of a 0.4 ms step
    that is 86%, bound by launching kernels; of a CPU step of 25 ms, 1%, and the page says so
    without roofs."""
    h200 = {"gpu_name": "NVIDIA H200", "flops_per_example": 2_263_920, "step_operators": 43}
    small = crafted_row(64, examples_per_s=160_000.0, step_ms_median=0.4, launch_us=8.0,
                        step_traffic_bytes=1_480_024 + 300_240 * 64, **h200)
    page = write_report(crafted_run(tmp_path / "h200", [small])).read_text()
    assert ("Bound by launching kernels: its 43 operators take at least 0.34 ms to launch "
            "(8.0 µs each, measured on this device), 86% of its 0.40 ms step; a CUDA graph or "
            "torch.compile launches fewer.") in page
    cpu = crafted_cpu_row(64, step_ms_median=25.0, launch_us=8.0, step_operators=43,
                          flops_per_example=2_263_920)
    page = write_report(crafted_run(tmp_path / "cpu", [cpu], device="cpu", env=CPU_ENV)
                        ).read_text()
    assert ("no peak is known for a CPU, so no share of it is given. Launching is 1% of its "
            "25.00 ms step (its 43 operators take at least 0.34 ms to launch (8.0 µs each, "
            "measured on this device)); the rest is the work itself and other overhead.") in page


def test_the_launch_time_is_a_small_positive_figure_on_the_cpu():
    import torch

    from bench.instruments.timing import launch_s

    assert 0 < launch_s(torch.device("cpu")) < 1e-3


def test_a_cpu_run_without_a_cap_says_why_it_searched_no_boundary(tmp_path):
    cpu = write_report(crafted_run(tmp_path / "cpu", [crafted_cpu_row(64)], device="cpu"))
    assert ("No boundary search in this run: on the CPU a search runs under "
            "<code>--memory-cap</code>") in cpu.read_text()
    gpu = write_report(crafted_run(tmp_path / "gpu", [crafted_row(64)]))
    assert "<p>No boundary search in this run.</p>" in gpu.read_text()


def test_a_cpu_smoke_run_gives_no_reason_for_a_search_its_grid_never_runs(tmp_path):
    run = crafted_run(tmp_path / "run", [crafted_cpu_row(64)], device="cpu")
    plan = json.loads((run / "plan.json").read_text())
    (run / "plan.json").write_text(json.dumps({**plan, "grid": "smoke"}))
    assert "<p>No boundary search in this run.</p>" in write_report(run).read_text()


def test_the_boundary_table_says_how_its_prediction_was_made(tmp_path):
    """On a GPU the predicted boundary replays a trial's allocations through the caching
    allocator; on the CPU it is where the live tensors meet the cap: the page says which, and
    how far the search found it from the prediction."""
    run = _every_status_run(tmp_path)
    (run / "boundaries.jsonl").write_text("".join(
        json.dumps({**json.loads(line), "prediction": "allocator"}) + "\n"
        for line in (run / "boundaries.jsonl").read_text().splitlines()))
    gpu = write_report(run).read_text()
    assert ("Predicted: one trial's allocations replayed through PyTorch's caching allocator, "
            "its fragmentation included, in the card's free memory less 768.0 MiB for the "
            "CUDA context") in gpu
    assert "<td>-25%</td>" in gpu  # 1,048,576 trained where 1,400,000 was predicted
    # a run from before the replay (schema 9) predicted every boundary from the live tensors
    older = write_report(_every_status_run(tmp_path / "older")).read_text()
    assert ("Predicted: where one step's live tensors meet the card's free memory (a run from "
            "before the allocator was replayed; on a GPU its fragmentation ends huge batches "
            "sooner).") in older
    run = _every_status_run(tmp_path / "expandable")
    (run / "boundaries.jsonl").write_text("".join(
        json.dumps({**json.loads(line), "prediction": "tensors"}) + "\n"
        for line in (run / "boundaries.jsonl").read_text().splitlines()))
    env = json.loads((run / "env.json").read_text())
    (run / "env.json").write_text(json.dumps({**env, "memory_settings": {
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}}))
    assert ("Predicted: where one step's live tensors meet the card's free memory less 768.0 MiB "
            "for the CUDA context: the allocator ran with "
            "<code>PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True</code>, whose placement is "
            "not replayed.") in write_report(run).read_text()
    boundaries = [{"key": "float32-nchw", "dtype": "float32", "channels_last": False,
                   "placement": "device", "max_ok_batch": 6119, "first_failed_batch": 6162,
                   "stop_reason": "oom", "failure": "MemoryError", "trials": [],
                   "predicted_max_batch": 5827, "prediction": "tensors"}]
    run = crafted_run(tmp_path / "cpu", [crafted_cpu_row(64)], device="cpu",
                      boundaries=boundaries, env=CPU_ENV)
    plan = json.loads((run / "plan.json").read_text())
    (run / "plan.json").write_text(json.dumps({**plan, "memory_cap_bytes": 512 * MiB}))
    cpu = write_report(run).read_text()
    assert "Predicted: where one step's live tensors meet the 512.0 MiB cap" in cpu
    assert "<td>+5%</td>" in cpu


def test_a_search_that_ran_out_of_memory_in_pieces_says_so(tmp_path):
    """The H100's float32 search ended at 1,114,112 asking 19.52 GiB with 16.40 free and 19.42
    reserved but unallocated: the page says the room was there in pieces, and what joins
    them; a search that ran out of room says nothing of the kind."""
    def page(name, failure):
        boundary = {"key": "float32-nchw", "dtype": "float32", "channels_last": False,
                    "placement": "device", "max_ok_batch": 1048576,
                    "first_failed_batch": 1114112, "stop_reason": "oom", "failure": failure,
                    "trials": [], "predicted_max_batch": 1071312}
        return write_report(crafted_run(tmp_path / name, [crafted_row(256)],
                                        boundaries=[boundary])).read_text()

    assert ("float32-nchw at 1,114,112: the memory was there but not in one piece. It asked "
            "for 19.5 GiB with 19.4 GiB reserved but unallocated") in page("pieces",
                                                                         H100_FRAGMENTED)
    assert "expandable_segments:True maps memory into one range" in page("again",
                                                                         H100_FRAGMENTED)
    assert "not in one piece" not in page("full", H100_CAPPED_FULL)
