"""--executor slurm against a real one-node Slurm (Debian's slurmctld, slurmd and munge, started
by tests/slurm-cluster.sh): cells as a job array through submitit, per-task result files, jobs
that end early, and --resume."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.execution import slurm as executor
from bench.records import store
from helpers import ROOT, one_line_error, rows_of, run_main, run_module

# CPU cells on synthetic data, so the suite means the same wherever a GPU is visible
CPU_CELLS = ["--grid", "smoke", "--device", "cpu", "--data", "synthetic"]
CLUSTER = ROOT / "tests" / "slurm-cluster.sh"


def _why_no_slurm() -> str | None:
    missing = [t for t in ("slurmctld", "slurmd", "munged", "sbatch") if not shutil.which(t)]
    if missing:
        return (f"needs a Slurm to submit to ({', '.join(missing)} missing): apt-get install -y "
                f"slurmctld slurmd slurm-client munge")
    if os.geteuid() != 0:
        return "needs root: tests/slurm-cluster.sh starts slurmctld and slurmd as root"
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "needs submitit: pip install -e '.[slurm]'"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """SLURM_CONF of a one-node cluster of this module's own, stopped afterwards."""
    reason = _why_no_slurm()
    if reason:
        if os.environ.get("LENET_BENCH_SLURM_TESTS") == "required":  # CI installs all of it
            pytest.fail(reason)
        pytest.skip(reason)
    where = tmp_path_factory.mktemp("slurm")
    ports = {"SLURMCTLD_PORT": str(_free_port()), "SLURMD_PORT": str(_free_port())}
    started = subprocess.run(["bash", str(CLUSTER), "start", str(where)], capture_output=True,
                             text=True, timeout=120, env={**os.environ, **ports})
    assert started.returncode == 0, started.stderr
    yield {"SLURM_CONF": started.stdout.strip()}
    subprocess.run(["bash", str(CLUSTER), "stop", str(where)], timeout=60)


def _bench(slurm, *args, timeout=600):
    return run_module("bench.run", *args, env=slurm, timeout=timeout)


def _all_rows(out: Path) -> list[dict]:
    return store.read_run(out)[0]


@pytest.mark.slurm
@pytest.mark.e2e
@pytest.mark.core
def test_one_cell_goes_through_slurm_and_comes_back_as_a_row(tmp_path, slurm):
    out = tmp_path / "run"
    result = _bench(slurm, *CPU_CELLS, "--set", "batch_size=64", "--set", "placement=device",
                    "--executor", "slurm", "--no-report", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "submitted Slurm job" in result.stderr and "1 tasks for 1 cells" in result.stderr
    (row,) = _all_rows(out)
    assert row["key"] == "b64-float32-nchw-device" and row["status"] == "ok"
    assert row["slurm_job_id"] and row["examples_per_s"] > 0
    assert row["host"] == os.uname().nodename
    assert rows_of(out) == []  # the task wrote it into its own part file


@pytest.mark.slurm
@pytest.mark.e2e
def test_under_a_loose_umask_the_pickled_jobs_are_the_owners_alone(tmp_path, slurm):
    """Another user rewrote a pending job's pickle, and the job ran it as the submitter."""
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", *CPU_CELLS, "--set", "batch_size=64", "--set",
         "placement=device", "--executor", "slurm", "--no-wait", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(0),
        env={**os.environ, "PYTHONPATH": str(ROOT), **slurm})
    assert result.returncode == 0, result.stderr
    assert out.stat().st_mode & 0o777 == 0o750
    assert (out / "slurm").stat().st_mode & 0o777 == 0o700
    pickles = list((out / "slurm").rglob("*.pkl"))
    assert pickles
    assert all(p.stat().st_mode & 0o077 == 0 for p in pickles), [
        (p.name, oct(p.stat().st_mode)) for p in pickles]
    waited = _bench(slurm, "--resume", str(out), "--no-report")
    assert waited.returncode == 0, waited.stderr


@pytest.mark.slurm
@pytest.mark.e2e
def test_a_smoke_grid_through_slurm_trains_every_planned_cell(tmp_path, slurm):
    cells = [*CPU_CELLS, "--set", "batch_size=64"]  # two: device-resident and host loader
    through = _bench(slurm, *cells, "--executor", "slurm", "--find-max-batch",
                     "--boundary-budget", "10", "--out", str(tmp_path / "slurm"))
    assert through.returncode == 0, through.stderr
    assert "submitted Slurm job" in through.stderr
    # every cell a local run of the same grid plans (its dry run), trained as planned
    planned = run_main("bench.run", *cells, "--dry-run", "--json")
    assert planned.returncode == 0, planned.stderr
    same = ("key", "batch_size", "dtype", "placement", "device")
    theirs = {r["key"]: r for r in _all_rows(tmp_path / "slurm")}
    assert {k: [r[f] for f in same] for k, r in theirs.items()} == {
        c["key"]: [c[f] for f in same] for c in json.loads(planned.stdout)["cells"]}
    assert all(r["status"] == "ok" and r["data_source"] == "synthetic" for r in theirs.values())
    host = os.uname().nodename
    assert all(r["host"] == host and r["slurm_job_id"] and r["examples_per_s"]
               for r in theirs.values())
    # each task wrote its own file; the submitting process wrote no row
    assert len(theirs) == 2
    assert len(list((tmp_path / "slurm" / "parts").glob("results-*.jsonl"))) == 2
    assert rows_of(tmp_path / "slurm") == []
    assert json.loads((tmp_path / "slurm" / "hosts" / f"{host}.json").read_text())["host"] == host
    assert (tmp_path / "slurm" / "report" / "index.html").is_file()
    # the boundary search ran as a task of its own, into its own file
    [boundary] = store.read_run_boundaries(tmp_path / "slurm")[0]
    assert boundary["key"] == "float32-nchw" and boundary["max_ok_batch"]


def _wait_for_rows(out: Path, count: int, proc=None, timeout_s: float = 240):
    deadline = time.monotonic() + timeout_s
    while len([r for r in _all_rows(out) if r["examples_per_s"]]) < count:
        assert time.monotonic() < deadline, "the Slurm task wrote no row in time"
        assert proc is None or proc.poll() is None, proc.communicate()
        time.sleep(0.5)


def _job_of(out: Path) -> str:
    return json.loads((out / "slurm.json").read_text())["submissions"][-1]["array_job_id"]


@pytest.mark.slurm
@pytest.mark.e2e
def test_a_cancelled_job_costs_its_unfinished_cells_and_resume_completes_the_run(tmp_path,
                                                                                slurm):
    out = tmp_path / "run"
    # one task runs the four cells in turn, so cancelling it leaves some unrun
    submitted = _bench(slurm, *CPU_CELLS, "--repeats", "20", "--no-report", "--executor",
                       "slurm", "--tasks", "1", "--no-wait", "--out", str(out))
    assert submitted.returncode == 0, submitted.stderr
    assert f"not waiting: follow it with: python -m bench.run --resume {out}" in submitted.stdout
    job = _job_of(out)
    # a later process picks up the task still running, and waits for it
    waiter = subprocess.Popen([sys.executable, "-m", "bench.run", "--resume", str(out)],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **slurm},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_rows(out, 1, waiter)
    subprocess.run(["scancel", job], check=True, env={**os.environ, **slurm})
    _, stderr = waiter.communicate(timeout=120)
    assert waiter.returncode == 1, stderr
    assert "picking up 1 Slurm tasks still queued or running" in stderr
    rows = _all_rows(out)
    ended = [r for r in rows if r["error_kind"] == "job_ended"]
    assert ended and len(rows) == 4  # one row per cell: what ran, and what the job's end cost
    assert all(f"Slurm job {job} ended (CANCELLED" in r["error"] for r in ended)
    assert "run them again with: python -m bench.run --resume" in stderr

    resumed = _bench(slurm, "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert f"tasks for {len(ended)} cells" in resumed.stderr
    rows = _all_rows(out)
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)


@pytest.mark.slurm
@pytest.mark.e2e
def test_a_job_past_its_time_limit_costs_its_unfinished_cells_with_slurms_reason(tmp_path,
                                                                                 slurm):
    out = tmp_path / "run"
    # four cells of about 25 s each in one task with a one-minute limit
    result = _bench(slurm, *CPU_CELLS, "--repeats", "100", "--no-report", "--executor", "slurm",
                    "--tasks", "1", "--time-limit", "1", "--out", str(out), timeout=300)
    assert result.returncode == 1, result.stderr
    rows = _all_rows(out)
    ended = [r for r in rows if r["error_kind"] == "job_ended"]
    assert ended and len(rows) == 4
    assert all("ended (TIMEOUT" in r["error"] for r in ended), ended[0]["error"]


@pytest.mark.slurm
@pytest.mark.e2e
@pytest.mark.parametrize("args, words", [
    (["--partition", "nope"], "Slurm refused the job: sbatch: error: invalid partition "
                              "specified: nope; fix that, then submit with: "),
    (["--slurm", "not-an-option=1"], "Slurm refused the job: sbatch: unrecognized option "
                                     "'--not-an-option=1'"),
])
def test_options_slurm_refuses_are_one_line_and_exit_2(tmp_path, slurm, args, words):
    result = _bench(slurm, *CPU_CELLS, "--executor", "slurm", *args, "--out",
                    str(tmp_path / "r"))
    assert result.returncode == 2, result.stderr
    # the plan's notice, then the error alone: sbatch's own lines are not repeated
    notice, error = result.stderr.strip().splitlines()
    assert notice.startswith("no GPU: grid 'smoke'") and words in error


@pytest.mark.slurm
@pytest.mark.e2e
def test_after_slurm_refused_a_partition_a_resume_with_another_carries_on(tmp_path, slurm):
    out = tmp_path / "run"
    one = ["--set", "batch_size=64", "--set", "placement=device", "--no-report"]
    refused = _bench(slurm, *CPU_CELLS, *one, "--executor", "slurm", "--partition", "nope",
                     "--out", str(out))
    assert refused.returncode == 2
    assert (f"then submit with: python -m bench.run --resume {out} (which takes new "
            f"--partition, --time-limit, --tasks and --slurm options)") in refused.stderr
    resumed = _bench(slurm, "--resume", str(out), "--partition", "debug", "--time-limit", "5",
                     "--no-report")
    assert resumed.returncode == 0, resumed.stderr
    (row,) = _all_rows(out)
    assert row["status"] == "ok"
    executor = json.loads((out / "plan.json").read_text())["executor"]
    assert executor["partition"] == "debug" and executor["time_limit_min"] == 5
    # what each task measures is not among them
    kept = _bench(slurm, "--resume", str(out), "--gpus-per-task", "1")
    assert "drop --gpus-per-task" in one_line_error(kept)


@pytest.mark.parametrize("args, words", [
    (["--executor", "slurm", "--slurm", "nonsense"], "--slurm 'nonsense': write KEY=VALUE"),
    (["--partition", "gpu"], "--partition only apply with --executor slurm"),
    (["--executor", "slurm", "--devices", "cpu,cpu"], "--devices is for this machine's GPUs"),
    (["--executor", "slurm", "--slurm", "time=5", "--time-limit", "10"],
     "--slurm time=5 and --time-limit 10 both set it; give one"),
    (["--executor", "slurm", "--slurm", "partition=a", "--partition", "b"],
     "--slurm partition=a and --partition b both set it; give one"),
    (["--executor", "slurm", "--slurm", "time=abc"],
     "--slurm time=abc: not a Slurm time; write minutes (90), hours:minutes:seconds (1:30:00) "
     "or days-hours[:minutes] (1-12)"),
    (["--executor", "slurm", "--slurm", "time=0"], "--slurm time=0: a task needs a time limit"),
    (["--executor", "slurm", "--slurm", "qos=high", "--slurm", "qos=low"],
     "--slurm qos is given twice ('high' and 'low'); give it once"),
    (["--executor", "slurm", "--slurm", "array=0-3"], "--slurm array: the run sets it itself"),
])
def test_slurm_options_that_cannot_work_are_refused_before_submitting(tmp_path, args, words):
    result = run_main("bench.run", *CPU_CELLS, *args, "--out", tmp_path / "r")
    assert words in one_line_error(result)


@pytest.mark.parametrize("time, minutes", [("5", 5), ("90:30", 91), ("1:30:00", 90),
                                           ("1-12", 2160), ("0-1:30", 90), ("2-0:0:30", 2881)])
def test_slurms_time_is_read_in_each_of_sbatchs_formats(time, minutes):
    """--slurm time=5 is the task's limit, not replaced by --time-limit's default (60)."""
    options, _ = executor.options_of(None, None, None, None, {"time": time})
    assert options.time_limit_min == minutes and "time" not in options.extra


@pytest.mark.parametrize("missing", ["scontrol", "srun", "sbatch"])
def test_a_slurm_command_missing_is_refused_before_submitting(tmp_path, monkeypatch, missing):
    """Without scontrol the run could not follow its tasks (it took silence for a controller
    restarting, for 600 s); without srun no task could start."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command in {"sbatch", "srun", "scontrol"} - {missing}:
        (bin_dir / command).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / command).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    pytest.importorskip("submitit")
    result = run_main("bench.run", *CPU_CELLS, "--executor", "slurm", "--out", tmp_path / "r")
    assert f"--executor slurm: {missing} not on PATH; run from a host of the Slurm cluster" \
           in one_line_error(result)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("environ, workers, threads", [
    ({"SLURM_CPUS_PER_TASK": "32"}, 4, 8),  # four GPU workers share the task's CPUs
    ({"SLURM_CPUS_PER_TASK": "2"}, 4, 1),
    ({"SLURM_CPUS_ON_NODE": "16"}, 1, 16),
    ({}, 2, None)])
def test_a_tasks_cpus_are_shared_among_its_workers(environ, workers, threads):
    assert executor.threads_per_worker(environ, workers) == threads


def test_a_boundary_searched_on_a_card_is_not_submitted_again(tmp_path):
    """The submitting process asked for rows with no card model: a GPU partition's finished
    search never matched, and every --resume submitted it again."""
    from bench.planning.grid import Config
    from bench.run import unsearched

    cells = [Config(64, device="cuda:0"), Config(256, device="cuda:0")]
    assert [c.boundary_key() for c in unsearched(tmp_path, cells)] == ["float32-nchw"]
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "boundaries-7_0.jsonl").write_text(json.dumps(
        {"key": "float32-nchw", "dtype": "float32", "channels_last": False,
         "placement": "device", "gpu_name": "NVIDIA H200", "max_ok_batch": 1048576,
         "first_failed_batch": None, "stop_reason": "budget", "failure": None,
         "trials": []}) + "\n")
    assert unsearched(tmp_path, cells) == []


def test_without_submitit_the_slurm_executor_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # unimportable, as without the extra
    result = run_main("bench.run", *CPU_CELLS, "--executor", "slurm", "--out", tmp_path / "r")
    assert ("--executor slurm needs submitit: pip install 'lenet-bench[slurm]'"
            in one_line_error(result))


def test_scontrols_lines_give_each_task_its_state_and_slurms_words():
    # as `scontrol show job -o 12` prints them (fields trimmed): a finished, a failed and a
    # timed-out task, and a range still pending
    text = "\n".join([
        "JobId=13 ArrayJobId=12 ArrayTaskId=0 JobState=COMPLETED Reason=None ExitCode=0:0",
        "JobId=14 ArrayJobId=12 ArrayTaskId=1 JobState=FAILED Reason=NonZeroExitCode "
        "ExitCode=1:0",
        "JobId=15 ArrayJobId=12 ArrayTaskId=2 JobState=TIMEOUT Reason=TimeLimit ExitCode=0:15",
        "JobId=12 ArrayJobId=12 ArrayTaskId=3-5%2 JobState=PENDING Reason=JobArrayTaskLimit",
    ])
    states = executor.parse_states(text, "12")
    assert states == {
        "12_0": ("COMPLETED", "COMPLETED"),
        "12_1": ("FAILED", "FAILED, reason NonZeroExitCode, exit code 1:0"),
        "12_2": ("TIMEOUT", "TIMEOUT, reason TimeLimit"),
        **{f"12_{n}": ("PENDING", "PENDING, reason JobArrayTaskLimit") for n in (3, 4, 5)}}
    submissions = [{"array_job_id": "12", "tasks": [{"job_id": f"12_{n}", "keys": [],
                                                     "boundaries": False} for n in range(7)]}]
    # 12_6 is not listed (gone from Slurm's memory): ended, not live
    assert [t["job_id"] for t in executor.live_tasks(submissions, states)] == [
        "12_3", "12_4", "12_5"]
    # a single task is submitted as a plain job
    assert executor.parse_states("JobId=20 JobState=CANCELLED Reason=None", "20") == {
        "20": ("CANCELLED", "CANCELLED")}


def test_a_task_starts_in_a_module_that_imports_nothing_heavy():
    """submitit loads the task's function before it handles signals, and Slurm's warning signal
    can come at once on a short limit: a task still importing torch died of it (exit 140,
    FAILED, not TIMEOUT). The function's module ignores the signal before importing torch."""
    import bench.execution.slurm_task

    assert executor.slurm_task.task is bench.execution.slurm_task.task
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, bench.execution.slurm_task; "
         "print(sorted(m for m in ('torch', 'pandas', 'numpy') if m in sys.modules))"],
        capture_output=True, text=True, cwd=ROOT, check=True)
    assert loaded.stdout.strip() == "[]"
