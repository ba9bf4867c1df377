"""--devices: one worker per device, pulling cells from one queue; the parent the one writer."""

import json
import os
import shutil
import signal
import subprocess

import pytest

from bench.doctor import Checkup
from bench.execution.pool import Pool
from bench.execution.session import boundary_jobs
from bench.planning import devices
from bench.planning.grid import Config
from bench.run import _preflight
from helpers import (
    CPU_SYNTHETIC,
    NO_GPU,
    a_plan,
    one_line_error,
    rows_of,
    run_main,
    run_module,
    start_grid_and_wait_for_a_row,
)
from lenet.cli import UsageError


def test_cpu_workers_split_the_cores_between_them():
    assert [s.cpu_cores for s in devices.parse("cpu,cpu", 0, [0, 1, 2, 3, 4])] == [
        (0, 1, 2), (3, 4)]
    assert [s.cpu_cores for s in devices.parse("3xcpu", 0, [4, 5, 6])] == [(4,), (5,), (6,)]
    assert {s.device for s in devices.parse("2xcpu", 8, [0, 1])} == {"cpu"}


def test_cores_this_process_may_not_use_are_shared_anew_saying_so():
    stored = devices.parse("2xcpu", 0, cores=list(range(8)))
    slots, notice = devices.usable(stored, allowed={0, 1})
    assert [s.cpu_cores for s in slots] == [(0,), (1,)]
    assert notice == ("the stored CPU cores (0-3, 4-7) are not all this process's to use (it may "
                      "use 2): 2 CPU workers are bound to 0, 1 instead")
    fewer, _ = devices.usable(stored, allowed={5})
    assert [s.cpu_cores for s in fewer] == [(5,)]
    assert devices.usable(stored, allowed=set(range(8))) == (stored, None)


@pytest.mark.e2e  # real runs, about 10 s a case: the full tier
def test_a_run_resumed_where_its_cores_do_not_exist_measures_its_cells(one_cell_run, tmp_path):
    """A run moved to a smaller host: its cells became error rows, and the run exited 0."""
    out = tmp_path / "run"
    shutil.copytree(one_cell_run, out)
    plan = json.loads((out / "plan.json").read_text())
    plan["devices"] = [{"device": "cpu", "gpu_index": None, "visible_devices": None,
                        "cpu_cores": [0, 4095]}]
    (out / "plan.json").write_text(json.dumps(plan))
    (out / "results.jsonl").write_text("")
    result = run_main("bench.run", "--resume", out)
    assert result.returncode == 0, result.stderr
    assert "the stored CPU cores (0-4095) are not all this process's to use" in result.stderr
    (row,) = rows_of(out)
    assert row["status"] == "ok", row["error"]


def test_gpus_by_index_or_all_are_pinned_one_card_each(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slots = devices.parse("0,2,3", 4, [0])
    assert [(s.device, s.gpu_index, s.visible_devices) for s in slots] == [
        ("cuda:0", 0, "0"), ("cuda:0", 2, "2"), ("cuda:0", 3, "3")]
    assert [s.gpu_index for s in devices.parse("all", 2, [0])] == [0, 1]
    assert slots[1].label == "GPU 2"


def test_a_card_renumbered_by_the_parents_visible_devices_is_pinned_by_its_real_name(
        monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,GPU-abc")
    assert [s.visible_devices for s in devices.parse("all", 2, [0])] == ["5", "GPU-abc"]


@pytest.mark.parametrize("text, gpus, cores, words", [
    ("all", 0, 2, "no GPU is visible; use --devices cpu,cpu"),
    ("0,4", 2, 2, "there is no GPU 4 (this machine has GPUs 0 to 1)"),
    ("1", 0, 2, "there is no GPU 1 (this machine has no GPU)"),
    ("0,0", 2, 2, "a GPU is listed twice"),
    ("3xcpu", 0, 2, "3 CPU workers but 2 cores"),
    ("0xcpu", 0, 2, "at least one CPU worker"),
    ("gpu0", 1, 2, "write all, GPU indexes such as 0,2,3, cpu,cpu"),
    ("", 1, 2, "write all, GPU indexes"),
])
def test_what_devices_cannot_name_is_refused_saying_what_to_write(text, gpus, cores, words):
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        devices.parse(text, gpus, list(range(cores)))


def test_identical_cards_search_each_boundary_once_and_two_models_twice():
    cells = [Config(64), Config(256), Config(64, dtype="bfloat16")]
    assert len(boundary_jobs(cells, ["NVIDIA H200"] * 8, set())) == 2
    jobs = boundary_jobs(cells, ["NVIDIA H200", "NVIDIA H100", "NVIDIA H200"], set())
    assert sorted(m for _, m in jobs) == ["NVIDIA H100"] * 2 + ["NVIDIA H200"] * 2
    done = {(Config(64).boundary_key(), "NVIDIA H100")}
    assert len(boundary_jobs(cells, ["NVIDIA H100"], done)) == 1


def test_a_busy_card_is_left_out_with_the_reason_and_the_others_run(monkeypatch, capsys):
    # the doctor's verdict is the seam: GPU 1 is full, GPU 0 has room
    verdicts = {0: Checkup(["ok"]), 1: Checkup(["full"], False, "does not fit: 1 GiB free")}
    monkeypatch.setattr("bench.run.report", lambda device, need: verdicts[device.index])
    slots = [devices.Slot("cuda:0", 0, "0"), devices.Slot("cuda:0", 1, "1")]
    assert _preflight(slots, [Config(64, device="cuda:0")]) == slots[:1]
    assert "leaving out GPU 1: does not fit: 1 GiB free" in capsys.readouterr().err
    verdicts[0] = verdicts[1]
    with pytest.raises(UsageError, match="every listed GPU is too busy"):
        _preflight(slots, [Config(64, device="cuda:0")])


class _Runner:
    """A stand-in runner (the pool's seam): it records being stopped."""

    def __init__(self):
        self.killed = False

    def kill_worker(self):
        self.killed = True


def test_the_pool_sends_grouped_jobs_to_their_group_and_the_rest_to_anyone():
    runners = [_Runner(), _Runner(), _Runner()]
    ran = {}
    Pool(runners, ["H200", "H100", "H200"]).run(
        [("a", "H100"), ("b", "H200"), ("c", "H200"), ("d", "H100")],
        lambda runner, job: runners.index(runner), ran.__setitem__, group_of=lambda j: j[1])
    assert {ran[("a", "H100")], ran[("d", "H100")]} == {1}
    assert {ran[("b", "H200")], ran[("c", "H200")]} <= {0, 2}
    anyone = {}
    Pool(runners, ["H200", "H100", "H200"]).run(list(range(30)), lambda r, j: j,
                                                anyone.__setitem__)
    assert anyone == {n: n for n in range(30)}


def test_a_failure_in_a_worker_thread_stops_the_pool_and_its_workers():
    runners = [_Runner(), _Runner()]

    def work(runner, job):
        if job == 3:
            raise RuntimeError("a harness bug")
        return job

    with pytest.raises(RuntimeError, match="a harness bug"):
        Pool(runners, ["cpu", "cpu"]).run(list(range(6)), work, lambda job, result: None)
    assert all(r.killed for r in runners)


@pytest.mark.e2e
def test_two_cpu_workers_share_one_queue_and_the_parent_writes_every_row(tmp_path):
    out = tmp_path / "run"
    result = run_module("bench.run", "--grid", "smoke", "--devices", "cpu,cpu", "--out",
                        str(out), *CPU_SYNTHETIC, env=NO_GPU)
    assert result.returncode == 0, result.stderr
    assert "2 workers, one queue: cpu cores 0, cpu cores 1" in result.stderr
    rows = rows_of(out)
    assert sorted(r["key"] for r in rows) == sorted(
        {r["key"] for r in rows}) and len(rows) == 4
    assert {r["worker"] for r in rows} == {"cpu cores 0", "cpu cores 1"}
    assert all(r["status"] == "ok" and r["host"] == os.uname().nodename for r in rows)


def test_device_and_devices_that_disagree_are_refused(tmp_path):
    result = run_main("bench.run", "--device", "cuda:0", "--devices", "cpu,cpu", "--out",
                      tmp_path / "r")
    assert "--device cuda:0 and --devices cpu,cpu disagree" in one_line_error(result)


@pytest.mark.e2e
def test_a_stopped_pool_keeps_its_rows_and_resumes_to_the_end(tmp_path):
    out = tmp_path / "run"
    proc = start_grid_and_wait_for_a_row(out, "--devices", "cpu,cpu", stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    kept = rows_of(out)
    assert 1 <= len(kept) < 4
    resumed = run_module("bench.run", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    keys = [r["key"] for r in rows_of(out)]
    assert len(keys) == 4 == len(set(keys))


def test_a_pooled_run_reads_its_capacity_from_the_first_listed_card_not_the_parents_gpu_0():
    pooled = [devices.Slot("cuda:0", 2, "2"), devices.Slot("cuda:0", 3, "3")]  # --devices 2,3
    assert devices.parent_device(pooled) == "cuda:2"
    assert devices.parent_device(devices.single("cuda:1")) == "cuda:1"
    assert devices.parent_device(devices.parse("2xcpu", 0, [0, 1])) == "cpu"


def test_a_plans_devices_read_back_as_the_slots_it_was_written_with():
    import json

    from bench.planning.plan_file import Plan

    slots = devices.parse("2xcpu", 0, [0, 1, 2])
    stored = json.loads(json.dumps(a_plan(devices=tuple(slots)).as_dict()))
    assert Plan.from_dict(stored, "plan.json").slots() == slots
    assert a_plan(device="cuda:1").slots() == [devices.Slot("cuda:1", 1)]
