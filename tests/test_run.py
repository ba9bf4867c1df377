"""bench.run as a user runs it: the smoke grid end to end, bad input, a real OOM, kill -9."""

import json
import os
import signal
import statistics
import subprocess

import pytest

from bench.basics.outcome import Outcome
from bench.execution.cell import Settings
from bench.execution.runner import Runner
from bench.execution.session import build_row
from bench.execution.worker import Worker, WorkerSpec
from bench.planning.grid import Config
from helpers import (
    CPU_ENV,
    CPU_SYNTHETIC,
    crafted_cpu_row,
    crafted_run,
    needs_real_data,
    rows_of,
    run_main,
    run_module,
    run_module_as_on_a_gpu_host,
    start_grid_and_wait_for_a_row,
)

SYNTHETIC = CPU_SYNTHETIC


@pytest.mark.e2e
def test_smoke_grid_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = run_module("bench.run", "--grid", "smoke", "--out", str(out), *SYNTHETIC)
    assert result.returncode == 0, result.stderr
    rows = rows_of(out)
    assert [r["key"] for r in rows] == ["b64-float32-nchw-device", "b64-float32-nchw-host-w0",
                                        "b256-float32-nchw-device", "b256-float32-nchw-host-w0"]
    for row in rows:
        assert row["status"] == "ok" and row["data_source"] == "synthetic"
        assert row["examples_per_s"] > 0 and row["repeats"] == 5 and len(row["repeat_s"]) == 5
        assert row["cpu_peak_rss_bytes"] >= row["cpu_baseline_rss_bytes"] > 0
        assert row["loss_first"] == row["loss_first"]  # not NaN
        assert row["nvml_peak_used_bytes"] is None and row["nvml_note"] == "no GPU"
        # predicted and measured mean the same in a row: one step's tensors on the CPU
        assert row["predicted_peak_bytes"] == pytest.approx(row["tracked_peak_bytes"], rel=0.10)
    assert set(json.loads((out / "env.json").read_text())) >= {
        "gpu_name", "driver_version", "cuda_version", "torch_version", "torchvision_version",
        "python_version", "host", "commit"}
    assert "grid 'smoke' runs CPU-sized settings" in result.stderr
    assert "fastest cells:" in result.stdout


def test_the_sgd_implementations_run_as_cells_with_their_flops_and_traffic(tmp_path):
    """The optimizer axis through a grid on the CPU: each implementation a cell of its own,
    each row with LeNet's FLOPs an example and its step's memory traffic."""
    out = tmp_path / "run"
    result = run_main("bench.run", "--grid", "smoke", "--set", "batch_size=64", "--set",
                      "placement=device", "--set", "optimizer=default,fused,loop", "--out", out,
                      *SYNTHETIC)
    assert result.returncode == 0, result.stderr
    rows = rows_of(out)
    assert [r["key"] for r in rows] == ["b64-float32-nchw-device",
                                        "b64-float32-nchw-device-fused",
                                        "b64-float32-nchw-device-loop"]
    assert [r["optimizer"] for r in rows] == ["default", "fused", "loop"]
    # the CPU's default is a loop of in-place adds; fused is one kernel, whose schema declares
    # the gradients written too (bench.planning.flops)
    traffic = {"default": (1_480_024, 43), "fused": (1_480_024 + 246_824, 34),
               "loop": (1_480_024, 43)}
    for row in rows:
        assert row["status"] == "ok" and row["precision"] == "default"
        assert row["flops_per_example"] == 2_263_920
        fixed_bytes, operators = traffic[row["optimizer"]]
        assert row["step_traffic_bytes"] == fixed_bytes + 300_240 * 64
        assert row["step_operators"] == operators


@pytest.mark.e2e
@pytest.mark.slow
def test_compile_cells_run_beside_eager_with_their_setup_time(tmp_path):
    out = tmp_path / "run"
    caches = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # empty: a cold compile
    # compiled in the cell's own setup, as on a machine of fewer than four cores
    result = run_module("bench.run", "--grid", "smoke", "--set", "batch_size=64", "--set",
                        "placement=device", "--set", "mode=eager,compile,graph", "--out",
                        str(out), "--compile-ahead", "0", *SYNTHETIC, env=caches)
    assert result.returncode == 0, result.stderr
    assert "skipped 1 cell: mode graph needs a CUDA device (b64-float32-nchw-device-graph)" \
        in result.stderr
    plan = json.loads((out / "plan.json").read_text())
    assert plan["skipped"] == {"b64-float32-nchw-device-graph": "mode graph needs a CUDA device"}
    eager, compiled = rows_of(out)
    assert (eager["key"], compiled["key"]) == ("b64-float32-nchw-device",
                                               "b64-float32-nchw-device-compile")
    assert eager["status"] == compiled["status"] == "ok" and compiled["mode"] == "compile"
    assert compiled["setup_s"] > eager["setup_s"] > 0  # compiling happens in the warm-up
    assert compiled["loss_last"] < compiled["loss_first"]
    assert compiled["prediction_note"].startswith("not modelled: torch.compile fuses kernels")
    assert compiled["compile_cache"] == "cold" and eager["compile_cache"] is None
    # new shapes, compiled ahead in a process of their own: the cell's compile finds them in
    # the caches that process filled, and its row keeps the cold compile beside the warm setup
    again = run_module("bench.run", "--grid", "smoke", "--set", "batch_size=128", "--set",
                       "placement=device", "--set", "mode=compile", "--out",
                       str(tmp_path / "again"), "--compile-ahead", "1",
                       *[o for o in SYNTHETIC if o != "--no-report"], env=caches)
    assert again.returncode == 0, again.stderr
    assert "compiling ahead (1 process)" in again.stderr
    (warm,) = rows_of(tmp_path / "again")
    assert warm["compile_cache"] == "warm", warm["compile_cache"]
    assert warm["compile_ahead_cache"] != "warm" and warm["compile_ahead_error"] is None
    assert warm["compile_ahead_s"] > warm["setup_s"] > 0
    # where the time went: the command's own wait, its compiling process's start (torch's import,
    # a first step) included, not the row's compile alone
    (waited,) = [line for line in again.stdout.splitlines()
                 if line.startswith("  compiling ahead (")]
    assert float(waited.split()[-3]) > warm["compile_ahead_s"] + 0.5, waited
    assert compiled["compile_ahead_s"] is None  # the first run compiled in the cell
    page = (tmp_path / "again" / "report" / "index.html").read_text()
    assert f"compiled ahead in {warm['compile_ahead_s']:,.1f} s" in page
    assert "compiling ahead (processes side by side, before the cells)" in page
    print(f"compile setup: cold {compiled['setup_s']:.1f} s in the cell; "
          f"{warm['compile_ahead_s']:.1f} s ahead ({warm['compile_ahead_cache']}), then "
          f"{warm['setup_s']:.1f} s in the cell")
    for row in (eager, compiled):  # no energy counter on this machine's CPU: never a zero
        assert row["energy_j_per_1000_examples"] is None and row["mean_power_w"] is None
        assert row["energy_note"].startswith("not measured: ")


@pytest.mark.e2e
def test_a_compile_that_fails_is_an_error_row_and_the_grid_goes_on(tmp_path):
    out = tmp_path / "run"
    # a real failure: inductor finds no working C++ compiler (and no cached kernel to reuse)
    broken = {"CXX": "/bin/false", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    result = run_module("bench.run", "--grid", "smoke", "--set", "batch_size=64,128", "--set",
                        "placement=device", "--set", "mode=compile,eager", "--out", str(out),
                        "--compile-ahead", "2", *SYNTHETIC, env=broken)
    assert result.returncode == 0, result.stderr
    by_key = {r["key"]: r for r in rows_of(out)}
    for batch in (64, 128):
        failed = by_key[f"b{batch}-float32-nchw-device-compile"]
        # compiling ahead failed too: said, and the cell then compiled (and failed) on its own
        assert f"compiling ahead failed for b{batch}-float32-nchw-device-compile: " \
               f"InductorError: InvalidCxxCompiler" in result.stderr
        assert failed["compile_ahead_error"].startswith("InductorError: InvalidCxxCompiler")
        assert failed["compile_ahead_s"] is None
        assert failed["status"] == "error" and failed["examples_per_s"] is None
        assert failed["error"].startswith("InductorError: InvalidCxxCompiler: No working C++ "
                                          "compiler found")
        assert "\n" not in failed["error"] and "TORCHDYNAMO_VERBOSE" not in failed["error"]
        assert by_key[f"b{batch}-float32-nchw-device"]["status"] == "ok"


def test_a_run_without_history_needs_none_of_the_history_stores_libraries(tmp_path):
    """A checkout run as it is on a host with torch and the report's libraries alone, as
    docs/gpu-check.sh runs on a lent GPU."""
    planned = run_module_as_on_a_gpu_host("bench.run", "--grid", "smoke", "--dry-run",
                                          *SYNTHETIC, cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    assert "b64-float32-nchw-host-w0" in planned.stdout
    # asked to record the run, it says what is missing before any cell, in one line
    recorded = run_module_as_on_a_gpu_host(
        "bench.run", "--grid", "smoke", "--history", tmp_path / "history.db", "--out",
        tmp_path / "run", *SYNTHETIC, cwd=tmp_path)
    assert recorded.returncode == 2
    assert recorded.stderr.strip().splitlines() == [
        "python -m bench.run: error: --history needs the history store's libraries "
        "(sqlalchemy is not installed); install the project with: pip install -e ."]
    assert not (tmp_path / "run").exists()


def test_dry_run_json_lists_cells_with_predictions(tmp_path, no_gpu):
    result = run_main("bench.run", "--grid", "smoke", "--dry-run", "--json",
                      "--memory-cap", "100MiB", "--set", "batch_size=64,8192", *SYNTHETIC,
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)  # standard output is the JSON alone; notices go to stderr
    assert "no GPU: grid 'smoke' runs CPU-sized settings" in result.stderr
    by_key = {p["key"]: p for p in plan["cells"]}
    assert by_key["b64-float32-nchw-host-w0"]["fits"] is True
    assert by_key["b8192-float32-nchw-host-w0"]["fits"] is False
    assert by_key["b8192-float32-nchw-device"]["predicted_peak_bytes"] > 8192 * 50_000
    assert plan["capacity_bytes"] == 100 * 2**20
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_every_cell_of_the_cpu_default_grid_predicts_its_tracked_step_within_10_percent(tmp_path):
    """A row's predicted figure is what its tracked one counts (the step's tensors, not the
    weights and data set before it): within 10% in every row of LeNet's CPU default grid. The
    fake-tensor count stands for the real step's, which it matched to the byte in float32."""
    from bench.planning.predict import step_peak_bytes

    result = run_main("bench.run", "--grid", "default", "--dry-run", "--json", *SYNTHETIC,
                      cwd=tmp_path)
    cells = [c for c in json.loads(result.stdout)["cells"] if c["predicted_peak_bytes"]]
    assert len(cells) >= 10
    for cell in cells:
        tracked = step_peak_bytes(cell["batch_size"], cell["dtype"], cell["channels_last"],
                                  replicas=cell["replicas"])
        assert cell["predicted_peak_bytes"] == pytest.approx(tracked, rel=0.10), cell["key"]


def test_dry_run_plans_for_a_gpu_that_is_not_here(tmp_path, no_gpu):
    result = run_main("bench.run", "--dry-run", "--json", "--device", "cuda",
                      "--memory-cap", "80GiB", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert "planning for a GPU that is not here, with 80.0 GiB" in result.stderr
    assert plan["device"] == "cuda:0" and plan["capacity_bytes"] == 80 * 2**30
    assert len(plan["cells"]) == 88  # the GPU's default grid, not the CPU's
    eager = [c for c in plan["cells"] if c["mode"] == "eager"]
    # b65,536 of LeNet is under 4 GiB, 16 LeNets at b4,096 about as much
    assert len(eager) == 55 and all(c["fits"] is not False for c in eager)
    for cell in plan["cells"]:  # the model predicts the eager step, and says so for the others
        modelled = cell["mode"] == "eager" and (cell["replicas"] == 1
                                                or cell["replica_method"] == "vmap")
        assert modelled == (cell["prediction_note"] is None)
        assert (cell["fits"] is None) == (cell["predicted_peak_bytes"] is None)
    boundaries = {b["key"]: b["predicted_max_batch"] for b in plan["boundaries"]}
    # graph mode searched too, unpredicted; the compiled modes not searched (each trial compiles)
    assert set(boundaries) == {f"{d}-{layout}" for d in ("float32", "bfloat16", "float16")
                               for layout in ("nchw", "nhwc")} | {
        "float32-nchw-graph", "bfloat16-nchw-graph"}
    assert boundaries["float32-nchw-graph"] is None
    # about 57 KiB a sample at float32 (DESIGN.md measured b1,048,576 in 59.7 GiB)
    assert 1_000_000 < boundaries["float32-nchw"] < 2_000_000
    text = run_main("bench.run", "--dry-run", "--device", "cuda", "--memory-cap", "24GiB",
                    cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "predicted OOM boundary (largest batch) against the 24.0 GiB cap:" in text.stdout
    assert not (tmp_path / "runs").exists()


def test_dry_run_for_a_gpu_that_is_not_here_needs_its_size(tmp_path, no_gpu):
    result = run_main("bench.run", "--dry-run", "--device", "cuda", cwd=tmp_path)
    assert result.returncode == 2
    assert "give its memory with --memory-cap, e.g. --memory-cap 80GiB" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--grid", "defualt"], "unknown grid 'defualt'; known: default, full, smoke"),
    (["--set", "colour=red"], "--set: unknown axis 'colour'; axes: batch_size, dtype"),
    (["--set", "dtype=float64"], "'float64' is not valid; valid: float32, bfloat16, float16"),
    (["--set", "batch_size=0"], "'0' is not a batch size"),
    (["--memory-cap", "lots"], "'lots' is not a size; write it like 2GiB"),
    (["--repeats", "3"], "--repeats 3: at least 5 are needed"),
    (["--set", "mode=graph"], "nothing to run on cpu: skipped 22 cells: mode graph needs a CUDA "
                              "device (b64-float32-nchw-device-graph, "),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    result = run_main("bench.run", *args, "--out", tmp_path / "run", *SYNTHETIC)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"python -m bench.run: error: "
                                                  f"{result.stderr.split('error: ', 1)[1].strip()}"]
    assert message in result.stderr
    assert not (tmp_path / "run").exists()


def test_cuda_without_a_gpu(tmp_path, no_gpu):
    result = run_main("bench.run", "--device", "cuda", "--out", tmp_path / "r", "--data",
                      "synthetic")
    assert result.returncode == 2 and "needs a CUDA GPU, but none is visible" in result.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_out_as_non_root(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = run_main("bench.run", "--grid", "smoke", "--out", locked / "r", *SYNTHETIC)
    assert result.returncode == 2 and "choose a writable --out" in result.stderr


def test_unwritable_out(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run_main("bench.run", "--grid", "smoke", "--out", blocker / "run", *SYNTHETIC)
    assert result.returncode == 2
    assert "cannot write the run directory" in result.stderr and "writable --out" in result.stderr


def test_resume_needs_a_run_directory(tmp_path):
    result = run_main("bench.run", "--resume", tmp_path, *SYNTHETIC)
    assert result.returncode == 2 and "is not a run directory (no plan.json)" in result.stderr


def test_out_that_holds_a_run_is_refused(tmp_path):
    out = crafted_run(tmp_path / "run", [crafted_cpu_row(64)], device="cpu", env=CPU_ENV)
    before = (out / "results.jsonl").read_text()
    result = run_main("bench.run", "--grid", "smoke", "--set", "batch_size=64", "--set",
                      "placement=device", "--out", out, *SYNTHETIC)
    assert result.returncode == 2 and f"--resume {out}" in result.stderr
    assert (out / "results.jsonl").read_text() == before


@pytest.mark.e2e
@pytest.mark.core
def test_a_real_oom_under_a_memory_cap_backs_off(tmp_path):
    """The CPU cap is an address-space rlimit: allocations past it fail for real."""
    out = tmp_path / "capped"
    result = run_module("bench.run", "--grid", "smoke", "--set", "batch_size=16384", "--set",
                        "placement=device", "--memory-cap", "512MiB", "--out", str(out),
                        *SYNTHETIC)
    assert result.returncode == 0, result.stderr
    (row,) = rows_of(out)
    assert row["status"] == "oom_backed_off" and row["memory_cap_bytes"] == 512 * 2**20
    tried = [a["batch_size"] for a in row["attempts"]]
    assert tried == [16384 // 2**k for k in range(len(tried))]
    assert [a["outcome"] for a in row["attempts"]] == ["oom"] * (len(tried) - 1) + ["ok"]
    assert "DefaultCPUAllocator: can't allocate memory" in row["attempts"][0]["error"]
    assert row["batch_size"] == tried[-1] and row["examples_per_s"] > 0


@pytest.mark.e2e
@pytest.mark.core
def test_kill_9_loses_at_most_the_cell_in_flight_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    proc = start_grid_and_wait_for_a_row(out, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its worker, mid-grid
    proc.wait()
    killed_with = len(rows_of(out))
    assert 1 <= killed_with < 4
    result = run_module("bench.run", "--resume", str(out), "--no-report")
    assert result.returncode == 0, result.stderr
    assert f"{killed_with} cells done, {4 - killed_with} to go" in result.stdout
    keys = [r["key"] for r in rows_of(out)]
    assert sorted(keys) == sorted(f"b{b}-float32-nchw-device" for b in (32, 64, 128, 256))


def test_a_dead_worker_costs_one_row_and_a_fresh_one_carries_on(tmp_path):
    spec = WorkerSpec("cpu", "synthetic", None, Settings(min_repeat_s=0.01, warmup_steps=1))
    runner = Runner(spec, cuda_index=None)
    runner.worker = Worker(spec)
    os.kill(runner.worker.pid, signal.SIGKILL)
    dead = build_row(*runner.cell(Config(64)))
    assert (dead.status, dead.error_kind) == ("error", "worker_died")
    assert dead.error == "the worker was killed by SIGKILL (the kernel's OOM killer sends this)"
    alive = build_row(*runner.cell(Config(64)))
    runner.retire_worker()
    assert alive.status == "ok" and alive.examples_per_s > 0


@pytest.mark.e2e
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    proc = start_grid_and_wait_for_a_row(out, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert f"carry on with: python -m bench.run --resume {out}" in stderr
    assert "Traceback" not in stderr
    rows = rows_of(out)  # every line whole
    assert 1 <= len(rows) < 4


@pytest.mark.e2e
def test_a_cell_past_its_time_limit_costs_one_row(tmp_path):
    out = tmp_path / "slow"
    # b65536 takes over 30 s here (nine steps of about 3.6 s); b64 about 1.5 s, and a worker
    # starts in 4 to 5 s (the limit covers the start too)
    result = run_module("bench.run", "--grid", "smoke", "--set", "batch_size=65536,64", "--set",
                        "placement=device", "--cell-timeout", "10", "--out", str(out),
                        *SYNTHETIC)
    assert result.returncode == 0, result.stderr
    slow, fast = rows_of(out)
    assert (slow["status"], slow["error_kind"]) == ("error", "timeout")
    assert slow["error"] == "no answer within 10 s; the worker was stopped"
    assert (fast["key"], fast["status"]) == ("b64-float32-nchw-device", "ok")  # a fresh worker


def test_a_boundary_trial_whose_worker_cannot_start_is_a_finding(tmp_path):
    no_data = WorkerSpec("cpu", "fashion-mnist", str(tmp_path / "nowhere"), Settings())
    attempt = Runner(no_data, cuda_index=None).trial(Config(64), 64)
    assert attempt.outcome == Outcome.ERROR
    assert "the worker could not start: DataError" in attempt.error


@pytest.mark.e2e
def test_a_boundary_search_under_a_tiny_cap_still_ends_in_a_summary(tmp_path):
    out = tmp_path / "run"
    result = run_module("bench.run", "--grid", "smoke", "--set", "batch_size=64", "--set",
                        "placement=device", "--memory-cap", "8MiB", "--find-max-batch",
                        "--boundary-budget", "30", "--out", str(out), *SYNTHETIC)
    assert "Traceback" not in result.stderr
    (boundary,) = [json.loads(line) for line in (out / "boundaries.jsonl").read_text().splitlines()]
    assert boundary["stop_reason"] in ("oom", "error") and boundary["trials"]
    assert "OOM boundary" in result.stdout


def test_several_models_run_as_cells_counting_every_models_examples(tmp_path):
    """Four LeNets at once through the smoke grid, stacked and one after another: a step trains
    four batches' examples, moves four models' traffic, and the stacked cell's predicted step
    is its tracked one (the memory model traces the stacked step)."""
    out = tmp_path / "run"
    result = run_main("bench.run", "--grid", "smoke", "--set", "batch_size=64", "--set",
                      "placement=device", "--set", "replicas=1,4", "--set",
                      "replica_method=vmap,streams", "--out", out, *SYNTHETIC)
    assert result.returncode == 0, result.stderr
    one, stacked, streamed = rows_of(out)
    assert [r["key"] for r in (one, stacked, streamed)] == [
        "b64-float32-nchw-device", "b64-float32-nchw-device-x4",
        "b64-float32-nchw-device-x4-streams"]
    for row in (stacked, streamed):
        assert row["status"] == "ok" and row["batch_size"] == 64 and row["replicas"] == 4
        per_repeat = row["steps_per_repeat"] * 64 * 4
        assert row["examples_per_s"] == pytest.approx(
            statistics.median(per_repeat / s for s in row["repeat_s"]))
        assert row["step_traffic_bytes"] == 4 * one["step_traffic_bytes"]
    assert stacked["step_operators"] == one["step_operators"]
    assert streamed["step_operators"] == 4 * one["step_operators"]
    assert stacked["predicted_peak_bytes"] == pytest.approx(stacked["tracked_peak_bytes"],
                                                            rel=0.10)
    assert streamed["predicted_peak_bytes"] is None
    assert streamed["prediction_note"].startswith("not modelled: K models step in turn")
    assert "(4 models, " in result.stdout and " examples/s each)" in result.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("data", [pytest.param("real", marks=needs_real_data), "synthetic"])
def test_under_a_cpu_cap_the_predicted_boundary_is_within_10_percent_of_the_found_one(tmp_path,
                                                                                      data):
    """The CPU under a 512 MiB cap (an address-space limit, real OOMs): the search starts at the
    memory model's prediction and brackets the boundary; here 5,827 predicted, 6,119 found, on
    either data (real Fashion-MNIST once found 6,810: the garbage its loading left was freed
    after the cap was set)."""
    out = tmp_path / "capped"
    result = run_module("bench.run", "--grid", "smoke", "--memory-cap", "512MiB", "--set",
                        "batch_size=64", "--set", "dtype=float32", "--find-max-batch",
                        "--no-report", "--out", str(out), "--device", "cpu", "--data", data)
    assert result.returncode == 0, result.stderr
    (boundary,) = [json.loads(line) for line in (out / "boundaries.jsonl").open()]
    assert boundary["stop_reason"] == "oom"
    assert boundary["trials"][0]["batch_size"] == boundary["predicted_max_batch"]
    assert boundary["predicted_max_batch"] == pytest.approx(boundary["max_ok_batch"], rel=0.10)
    assert boundary["prediction"] == "tensors"  # no caching allocator on the CPU to replay
