"""bench.run against what users and machines do to it: a second process on a run, a resume that
does not match, a full disk, SIGTERM and SIGHUP, hostile values, tight caps, stuck workers."""

import json
import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.execution.cell import Settings
from bench.execution.runner import Runner
from bench.execution.session import build_row
from bench.execution.worker import WorkerSpec
from bench.planning.grid import Config
from helpers import (
    CPU_SYNTHETIC,
    ONE_CELL,
    ROOT,
    crafted_cpu_row,
    ctrl_c_as_at_a_terminal,
    one_line_error,
    rows_of,
    run_main,
    run_module,
    start_grid_and_wait_for_a_row,
    wait_until_it_maps,
)

ROW_BYTES = 2050  # about what one row of results.jsonl takes, a CPU row at schema 5


@pytest.mark.e2e
def test_a_second_process_on_a_live_run_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    # cells long enough (seconds each) that the first run is still live when the second starts
    first = start_grid_and_wait_for_a_row(out, "--repeats", "40", stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
    try:
        second = run_module("bench.run", "--resume", str(out))
        line = one_line_error(second)
        assert second.returncode == 2
        assert f"{out} is in use by pid {first.pid} on " in line
        assert "wait for it to finish, or stop it (it can be resumed)" in line
    finally:
        first.wait(timeout=300)
    assert first.returncode == 0
    keys = [r["key"] for r in rows_of(out)]
    assert len(keys) == len(set(keys)) == 4  # no cell measured twice


@pytest.mark.parametrize("extra, named", [
    (["--grid", "default"], "--grid"),
    (["--set", "batch_size=128"], "--set"),
    (["--memory-cap", "1GiB", "--device", "cpu"], "--device, --memory-cap"),
])
def test_resume_with_plan_options_says_what_it_keeps(one_cell_run, tmp_path, extra, named):
    out = tmp_path / "run"
    shutil.copytree(one_cell_run, out)
    result = run_main("bench.run", "--resume", out, *extra)
    assert result.returncode == 2
    assert one_line_error(result).endswith(
        f"--resume carries on {out} with its own plan (grid 'smoke' on cpu); drop {named}, "
        f"or start a new run")


def test_resume_refuses_a_directory_that_mixes_two_runs(one_cell_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(one_cell_run, out)
    (stored,) = rows_of(out)
    other = crafted_cpu_row(128, model_fingerprint=stored["model_fingerprint"])
    with (out / "results.jsonl").open("a") as f:  # a row of another run's cell
        f.write(json.dumps(other) + "\n")
    result = run_main("bench.run", "--resume", out)
    assert result.returncode == 2
    assert "holds 1 rows of cells that plan.json does not plan (such as " \
           "b128-float32-nchw-device): it mixes two runs" in one_line_error(result)


@pytest.mark.parametrize("left", ["parts/results-41.jsonl", "results.jsonl", "hosts/node1.json",
                                  "slurm.json"])
def test_a_new_run_refuses_a_directory_holding_files_of_an_earlier_run(tmp_path, left):
    """A Slurm run's parts/ whose plan and results were removed: its rows would be this run's."""
    out = tmp_path / "run"
    (out / left).parent.mkdir(parents=True, exist_ok=True)
    (out / left).write_text(json.dumps(crafted_cpu_row(64)) + "\n")
    result = run_main("bench.run", *ONE_CELL, "--out", out, *CPU_SYNTHETIC)
    assert one_line_error(result) == (
        f"python -m bench.run: error: {out} holds files of an earlier run "
        f"({left.split('/')[0]}) without its plan.json; choose another --out, or remove them")
    assert not (out / "plan.json").exists()


@pytest.mark.parametrize("command", ["resume", "report", "compare"])
def test_a_slurm_part_file_of_another_run_is_refused_by_every_reader(one_cell_run, tmp_path,
                                                                     command):
    out = tmp_path / "run"
    shutil.copytree(one_cell_run, out)
    # a part file from a run of another model: its cell would be "Fastest" on this page
    other = {**crafted_cpu_row(64), "model": "user_factories:tiny_mlp",
             "key": "b64-float32-nchw-device-user_factories:tiny_mlp",
             "model_fingerprint": "0123456789ab"}
    (out / "parts").mkdir()
    (out / "parts" / "results-77.jsonl").write_text(json.dumps(other) + "\n")
    result = {"resume": lambda: run_main("bench.run", "--resume", out),
              "report": lambda: run_main("reports", out),
              "compare": lambda: run_main("bench.compare", one_cell_run, out)}[command]()
    assert (f"{out / 'parts' / 'results-77.jsonl'} holds 1 rows of cells that plan.json does "
            f"not plan (such as b64-float32-nchw-device-user_factories:tiny_mlp): it mixes two "
            f"runs; start a new run with another --out") in one_line_error(result)


def test_a_part_file_of_another_architecture_under_the_same_name_is_refused(one_cell_run,
                                                                            tmp_path):
    out = tmp_path / "run"
    shutil.copytree(one_cell_run, out)
    (stored,) = rows_of(out)
    (out / "parts").mkdir()
    (out / "parts" / "results-78.jsonl").write_text(
        json.dumps({**stored, "model_fingerprint": "0123456789ab"}) + "\n")
    assert (f"holds rows of another architecture (0123456789ab) than plan.json's "
            f"({stored['model_fingerprint']}): it mixes two models"
            in one_line_error(run_main("reports", out)))


@pytest.mark.parametrize("command", ["resume", "report", "compare"])
def test_a_run_that_cannot_be_read_is_one_line_saying_so(one_cell_run, tmp_path, monkeypatch,
                                                         command):
    """Permission to read taken away. The suite runs as root in CI, which permissions do not
    stop, so a fake at the seam stands for the refusal: Path.read_text on results.jsonl raises
    what the kernel's EACCES gives."""
    out = tmp_path / "run"
    shutil.copytree(one_cell_run, out)
    real_read_text = Path.read_text

    def unreadable(self, *args, **kwargs):
        if self == out / "results.jsonl":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", unreadable)
    result = {"resume": lambda: run_main("bench.run", "--resume", out),
              "report": lambda: run_main("reports", out),
              "compare": lambda: run_main("bench.compare", one_cell_run, out)}[command]()
    assert one_line_error(result).endswith(
        f"cannot read {out / 'results.jsonl'}: Permission denied; fix its permissions (or run "
        f"as its owner)")


def test_a_run_directory_that_any_user_can_write_is_refused(tmp_path):
    out = tmp_path / "shared"
    out.mkdir()
    out.chmod(0o777)
    result = run_main("bench.run", *ONE_CELL, "--out", out, *CPU_SYNTHETIC)
    assert one_line_error(result).endswith(
        f"{out} can be written by any user (mode drwxrwxrwx), who could change what the run "
        f"executes; chmod o-w {out}, or choose another --out")
    assert list(out.iterdir()) == []


def test_under_a_loose_umask_the_run_directory_is_closed_to_others(tmp_path):
    out = tmp_path / "runs" / "one"
    loose = os.umask(0)
    try:
        result = run_main("bench.run", *ONE_CELL, "--out", out, *CPU_SYNTHETIC)
    finally:
        os.umask(loose)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_mode & 0o777 == 0o750


@pytest.mark.e2e
def test_a_full_disk_stops_with_the_rows_kept_and_the_resume_command(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "bench.run", "--grid", "smoke", "--set", "batch_size=32,64",
           "--set", "placement=device", "--out", str(out), *CPU_SYNTHETIC]

    def small_files():  # a file-size limit: the second row does not fit, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (ROW_BYTES + ROW_BYTES // 2,) * 2)

    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            preexec_fn=small_files, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    row_bytes = len((out / "results.jsonl").read_bytes())
    assert ROW_BYTES // 2 < row_bytes <= ROW_BYTES * 3 // 2  # the limit still fits one row
    assert f"cannot write {out / 'results.jsonl'}: File too large; the 1 rows written before " \
           f"it are safe; make room (or fix the file), then carry on with: python -m " \
           f"bench.run --resume {out}" in result.stderr
    assert [r["key"] for r in rows_of(out)] == ["b32-float32-nchw-device"]  # every line whole
    resumed = run_module("bench.run", "--resume", str(out), "--no-report")
    assert resumed.returncode == 0, resumed.stderr
    assert len(rows_of(out)) == 2


@pytest.mark.e2e
@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_like_ctrl_c(tmp_path, signum, status):
    out = tmp_path / "run"
    proc = start_grid_and_wait_for_a_row(out, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True)
    workers = _workers(proc.pid)
    assert workers
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == status
    assert f"stopped by {signal.Signals(signum).name}: every finished cell is saved in " in stderr
    assert f"carry on with: python -m bench.run --resume {out}" in stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr
    assert not any(_alive(pid) for pid in workers)  # the worker stopped with it
    assert 1 <= len(rows_of(out)) < 4


@pytest.mark.e2e
def test_kill_9_of_a_pooled_runs_parent_ends_its_workers_and_their_loaders_at_once(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "bench.run", "--grid", "smoke", "--set", "batch_size=32,64,128",
           "--set", "placement=host", "--set", "num_workers=2", "--devices", "cpu,cpu",
           "--repeats", "40", "--out", str(out), *CPU_SYNTHETIC]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not (out / "results.jsonl").is_file() or not (out / "results.jsonl").read_text():
        assert time.monotonic() < deadline and proc.poll() is None, "no row was written"
        time.sleep(0.05)
    workers = _workers(proc.pid)
    family = workers + [c for w in workers for c in _descendants(w)]
    assert workers  # and, mid-cell, the processes of their host loaders
    proc.kill()
    proc.wait()
    killed = time.monotonic()
    while any(_alive(pid) for pid in family) and time.monotonic() - killed < 30:
        time.sleep(0.05)
    gone_s = time.monotonic() - killed
    print(f"the workers and their loaders ended {gone_s:.2f} s after the parent")
    assert not [pid for pid in family if _alive(pid)]
    assert gone_s < 5


def _descendants(pid) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(i) for i in (task / "children").read_text().split()]
        except FileNotFoundError:
            pass
    return found + [d for c in found for d in _descendants(c)]


@pytest.mark.e2e
@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_while_the_run_plans_stops_it_without_a_traceback(tmp_path, signum, status):
    mark = tmp_path / "building"
    cmd = [sys.executable, "-m", "bench.run", "--grid", "smoke", "--model",
           "user_factories:slow_to_build", "--out", str(tmp_path / "run"), *CPU_SYNTHETIC]
    proc = subprocess.Popen(cmd, cwd=ROOT / "tests", stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_as_at_a_terminal,
                            env={**os.environ, "PYTHONPATH": str(ROOT),
                                 "LENET_BENCH_TEST_MARK": str(mark)})
    deadline = time.monotonic() + 120
    while not mark.exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == status, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == f"stopped by {signal.Signals(signum).name}"


@pytest.mark.e2e
def test_ctrl_c_while_a_worker_starts_stops_the_run_without_a_traceback(tmp_path):
    """Ctrl-C reaches the whole process group, workers too: a worker still importing torch
    used to die of it with a traceback."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "bench.run", *ONE_CELL, "--out", str(out), *CPU_SYNTHETIC]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=ctrl_c_as_at_a_terminal,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 120
    while not (workers := _workers(proc.pid)):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    # past the interpreter's start (whose Ctrl-C no program answers), into torch's imports
    wait_until_it_maps(workers[0], "libtorch")
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends it
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr


@pytest.mark.e2e
def test_ctrl_c_while_a_cell_compiles_says_only_what_is_kept(tmp_path):
    """Killed mid-compile, a worker leaves inductor's compile pool's semaphores for
    multiprocessing's resource tracker to unlink; it did, but warned first of "leaked semaphore
    objects", a fault the run did not have."""
    out, cache = tmp_path / "run", tmp_path / "inductor"
    cmd = [sys.executable, "-m", "bench.run", *ONE_CELL, "--set", "mode=compile", "--out",
           str(out), *CPU_SYNTHETIC]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=ctrl_c_as_at_a_terminal,
                            env={**os.environ, "PYTHONPATH": str(ROOT),
                                 "TORCHINDUCTOR_CACHE_DIR": str(cache)})
    deadline = time.monotonic() + 120
    while not (cache.is_dir() and any(cache.rglob("*.py"))):  # inductor writes its kernels
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends it
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted: every finished cell is saved")
    assert "leaked" not in stderr and "Traceback" not in stderr, stderr


def _workers(pid) -> list[int]:
    """The cell workers among `pid`'s children. Not multiprocessing's resource tracker: it is
    meant to outlive its parent by a moment (it exits when it reads end-of-file)."""
    children = []
    # every thread's: a worker is started by the thread that feeds it (bench.execution.pool)
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(i) for i in (task / "children").read_text().split()]
        except FileNotFoundError:  # a thread that ended meanwhile
            pass
    return [c for c in children if b"spawn_main" in _cmdline(c)]


def _cmdline(pid) -> bytes:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read()
    except FileNotFoundError:
        return b""


def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0]
    return state != "Z"


@pytest.mark.parametrize("args, message", [
    (["--memory-cap", "16000000TiB"], "a cap must lie between 1 MiB and 1 PiB"),
    (["--memory-cap", "1.5"], "'1.5' is not a whole number of bytes"),
    (["--memory-cap", "100KiB"], "'100KiB' is 102,400 bytes; a cap must lie between 1 MiB"),
    (["--out", ""], "argument --out: an empty path; name a directory"),
    (["--set", "batch_size=64", "--set", "batch_size=128"],
     "--set batch_size is given twice; give its values once: --set batch_size=v1,v2"),
])
def test_values_that_cannot_work_are_refused_at_the_command_line(tmp_path, args, message):
    result = run_main("bench.run", *args, *CPU_SYNTHETIC, cwd=tmp_path)
    assert result.returncode == 2
    assert message in one_line_error(result)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.e2e
def test_every_cell_failing_exits_1_and_says_so(tmp_path):
    """Under an 8 MiB cap LeNet cannot train even at batch 1: each cell is an OOM."""
    out = tmp_path / "run"
    result = run_module("bench.run", *ONE_CELL, "--memory-cap", "8MiB", "--out", str(out),
                        *CPU_SYNTHETIC)
    assert result.returncode == 1, result.stderr
    assert "no cell produced a figure: every cell failed" in result.stderr
    (row,) = rows_of(out)
    # the worker starts under the cap (its warm-up OOM is let go) and the cell backs off
    assert row["status"] == "oom" and row["error_kind"] == "oom"
    assert [a["batch_size"] for a in row["attempts"]] == [64, 32, 16, 8, 4, 2, 1]


def test_a_cell_timeout_covers_a_worker_that_hangs_while_starting():
    spec = WorkerSpec("cpu", "synthetic", None, Settings(min_repeat_s=0.01, warmup_steps=1))
    runner = Runner(spec, cuda_index=None, timeout_s=3)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault(
        "row", build_row(*runner.cell(Config(64)))))
    start = time.monotonic()
    thread.start()
    while not multiprocessing.active_children():
        time.sleep(0.01)
    (worker,) = multiprocessing.active_children()
    os.kill(worker.pid, signal.SIGSTOP)  # stopped while importing torch
    thread.join(timeout=60)
    assert time.monotonic() - start < 20  # not the 300 s start-up allowance
    row = result["row"]
    assert (row.status, row.error_kind) == ("error", "timeout")
    assert row.error == "no answer within 3 s; the worker was stopped"
