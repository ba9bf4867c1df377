import json
import os

import pytest

from bench.basics.outcome import Attempt, Outcome
from bench.basics.schema import SCHEMA_VERSION, NewerSchemaError
from bench.instruments.contention import Contention
from bench.planning.devices import Slot
from bench.planning.grid import Config, Grid
from bench.planning.plan_file import ModelInfo, SlurmOptions
from bench.records import store
from bench.records.row import ROW_KEYS, Row, config_of
from helpers import ROOT, a_plan


def test_rows_are_appended_one_per_line(tmp_path):
    path = tmp_path / "results.jsonl"
    store.append_row(path, {"key": "a", "status": "ok", "examples_per_s": 1.5})
    store.append_row(path, {"key": "b", "status": "ok", "examples_per_s": float("nan")})
    rows, warnings = store.read_results(path)
    assert [r["key"] for r in rows] == ["a", "b"] and warnings == []
    assert path.read_text().count("\n") == 2


def test_a_torn_last_line_is_skipped_with_a_warning_then_cut(tmp_path):
    path = tmp_path / "results.jsonl"
    store.append_row(path, {"key": "a", "status": "ok"})
    with path.open("a") as f:
        f.write('{"key": "b", "exam')  # what a kill -9 mid-write leaves
    rows, warnings = store.read_results(path)
    assert [r["key"] for r in rows] == ["a"]
    assert warnings == [f"{path}: skipped a torn last line (the run was stopped mid-write) "
                        f"at line 2"]
    assert store.cut_torn_tail(path)
    store.append_row(path, {"key": "c", "status": "ok"})
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "c"]
    assert not store.cut_torn_tail(path)


def test_create_refuses_a_directory_that_holds_a_run(tmp_path):
    store.create(tmp_path / "run", a_plan(), {})
    with pytest.raises(store.RunDirError, match=r"already holds a run; continue it with "
                                                r"--resume .*run, or choose another --out"):
        store.create(tmp_path / "run", a_plan(), {})


def test_resume_needs_a_run_directory(tmp_path):
    with pytest.raises(store.RunDirError, match=r"is not a run directory \(no plan.json\)"):
        store.open_existing(tmp_path)


def test_default_run_dir_is_timestamped():
    from datetime import datetime

    assert str(store.default_run_dir(datetime(2026, 11, 27, 10, 15, 0))) == \
        "runs/20261127-101500"


@pytest.mark.parametrize("line", ["42", "null", '{"foo": 1}', '["key", "status"]',
                                  '{"key": 3, "status": "ok"}'])
def test_a_line_that_is_json_but_not_a_row_is_skipped_with_a_warning(tmp_path, line):
    path = tmp_path / "results.jsonl"
    store.append_row(path, {"key": "a", "status": "ok"})
    with path.open("a") as f:
        f.write(line + "\n")
    store.append_row(path, {"key": "b", "status": "ok"})
    rows, warnings = store.read_results(path)
    assert [r["key"] for r in rows] == ["a", "b"]
    assert warnings == [f"{path}: skipped line 2: not a row (it needs key, status)"]


@pytest.mark.parametrize("plan", ["{}", "[]", '{"grid": "smoke"}', "42"])
def test_a_plan_that_is_not_a_plan_is_refused_with_a_line(tmp_path, plan):
    (tmp_path / "plan.json").write_text(plan)
    with pytest.raises(store.RunDirError, match=r"plan.json is not a plan \(it lacks .*\); "
                                                r"start a new run instead"):
        store.open_existing(tmp_path)


def test_a_second_process_on_a_run_directory_is_refused_naming_the_holder(tmp_path):
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from bench.records import store\n"
         "with store.locked(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(store.RunDirError, match=rf"{tmp_path} is in use by pid {holder.pid} "
                                                    r"on .* since .*; wait for it to finish"):
            with store.locked(tmp_path):
                pass
    finally:
        holder.kill()  # as kill -9 would: the kernel lets go of the lock
        holder.wait()
    with store.locked(tmp_path):
        assert f"pid {os.getpid()}" in (tmp_path / ".lock").read_text()


def test_a_write_that_fails_leaves_the_rows_whole_and_says_so(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "results.jsonl"
    store.append_row(path, {"key": "a", "status": "ok"})
    size = path.stat().st_size
    # a file-size limit fails the next write part of the way through, as a full disk does
    code = ("import resource, sys; from pathlib import Path; from bench.records import store\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({size + 10}, {size + 10}))\n"
            "try:\n    store.append_row(Path(sys.argv[1]), {'key': 'b', 'status': 'ok', "
            "'pad': 'x' * 100})\nexcept store.StoreWriteError as exc:\n    print(exc)")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.stdout.strip() == f"cannot write {path}: File too large", result.stderr
    rows, warnings = store.read_results(path)
    assert [r["key"] for r in rows] == ["a"] and warnings == []


def test_an_older_row_is_read_at_this_schema_with_every_key(tmp_path):
    """A row written before rows carried a version (schema 1) lacks the contention figures."""
    path = tmp_path / "results.jsonl"
    store.append_row(path, {"key": "b256-float32-nchw-device", "status": "ok",
                            "batch_size_requested": 256, "examples_per_s": 9.0})
    (row,), _ = store.read_results(path)
    assert set(row) == set(ROW_KEYS)
    assert row["schema_version"] == SCHEMA_VERSION
    assert row["busy"] is None and row["busy_reasons"] == [] and row["attempts"] == []
    assert row["examples_per_s"] == 9.0


def test_a_row_from_a_newer_version_is_refused_with_a_line(tmp_path):
    path = tmp_path / "results.jsonl"
    store.append_row(path, {"key": "a", "status": "ok", "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(NewerSchemaError, match=rf"results.jsonl: a was written by a newer "
                                               rf"lenet-bench \(schema {SCHEMA_VERSION + 1}; "
                                               rf"this one reads up to {SCHEMA_VERSION}\): "
                                               rf"upgrade lenet-bench to read it"):
        store.read_results(path)


def test_a_row_written_now_reads_back_as_written(tmp_path):
    config = Config(256, dtype="bfloat16", channels_last=True, placement="host", num_workers=2)
    row = Row(config, "synthetic", Outcome.OOM_BACKED_OFF, batch_size=128,
              attempts=[Attempt(256, Outcome.OOM, "CUDA out of memory"), Attempt(128, Outcome.OK)],
              contention=Contention(cpu_other_fraction=0.5, busy=True,
                                    busy_reasons=("other processes used 50% of the CPUs",)))
    path = tmp_path / "results.jsonl"
    store.append_row(path, row.as_dict())
    (back,), _ = store.read_results(path)
    assert back["key"] == "b256-bfloat16-nhwc-host-w2" and back["batch_size"] == 128
    assert config_of(back) == config
    assert back["attempts"][0] == {"batch_size": 256, "outcome": "oom",
                                   "error": "CUDA out of memory"}
    assert back["busy"] is True and back["cpu_other_fraction"] == 0.5


def test_resume_refuses_a_plan_from_a_newer_version(tmp_path):
    store.write_json(tmp_path / store.PLAN, {**a_plan().as_dict(),
                                            "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(NewerSchemaError, match="plan.json was written by a newer lenet-bench"):
        store.open_existing(tmp_path)


# plan.json as the first version wrote it: no model, loader, executor or boundary settings
FIRST_PLAN = {"grid": "smoke", "device": "cpu", "data": "fashion-mnist",
              "settings": {"repeats": 5, "min_repeat_s": 0.2, "warmup_steps": 2, "lr": 0.9,
                           "seed": 0, "max_steps_per_repeat": 100000},
              "cells": [{"batch_size": 64, "dtype": "float32", "channels_last": False,
                         "placement": "device", "pin_memory": False, "num_workers": 0,
                         "device": "cpu"}]}


def test_a_plan_of_the_first_version_reads_as_a_typed_plan_with_every_default(tmp_path):
    store.write_json(tmp_path / store.PLAN, FIRST_PLAN)
    plan = store.open_existing(tmp_path)
    assert plan.cells == (Config(64),) and plan.model == ModelInfo()
    assert plan.model.name == "lenet" and plan.model.fingerprint is None
    assert plan.slots() == [Slot("cpu")] and plan.executor is None
    assert plan.boundary_budget_s == Grid.boundary_budget_s and plan.overrides == {}
    assert plan.schema_version == SCHEMA_VERSION


def test_a_plan_reads_back_as_it_was_written(tmp_path):
    written = a_plan(overrides={"batch_size": (64, 256)}, devices=(Slot("cpu", None, None, (0,)),
                                                                   Slot("cpu", None, None, (1,))),
                     executor=SlurmOptions("gpu", 1, 90, 4, {"qos": "high"}),
                     model=ModelInfo("torchvision:resnet18", (3, 64, 64), 1000, 11_689_512,
                                     "0123abcd"))
    store.create(tmp_path / "run", written, {})
    assert store.open_existing(tmp_path / "run") == written


def test_a_plan_whose_cells_this_version_cannot_read_is_refused_in_one_line(tmp_path):
    store.write_json(tmp_path / store.PLAN, {**FIRST_PLAN, "cells": [{"batch_size": 64,
                                                                     "colour": "blue"}]})
    with pytest.raises(store.RunDirError, match=r"plan.json holds a plan this version cannot "
                                                r"read \(.*colour.*\); start a new run"):
        store.open_existing(tmp_path)
    assert store.plan_or_none(tmp_path) is None  # the report shows the rows without it


def test_a_run_reads_as_one_row_per_cell_across_its_slurm_tasks_files(tmp_path):
    def row(key, error_kind=None):
        return {"key": key, "status": "error" if error_kind else "ok", "error_kind": error_kind,
                "schema_version": SCHEMA_VERSION}

    (tmp_path / store.PARTS).mkdir()
    # the first job ended before b and c ran; resumed, c ran and b's second job ended too
    store.append_row(tmp_path / store.RESULTS, row("b", "job_ended"))
    store.append_row(tmp_path / store.RESULTS, row("c", "job_ended"))
    store.append_row(tmp_path / store.PARTS / "results-7_0.jsonl", row("a"))
    store.append_row(tmp_path / store.PARTS / "results-9_1.jsonl", row("c"))
    store.append_row(tmp_path / store.RESULTS, {**row("b", "job_ended"), "error": "second"})
    rows, warnings = store.read_run(tmp_path)
    assert warnings == []
    assert sorted((r["key"], r["status"]) for r in rows) == [
        ("a", "ok"), ("b", "error"), ("c", "ok")]
    assert [r["error"] for r in rows if r["key"] == "b"] == ["second"]
    assert store.done_keys(rows) == {"a", "c"}


def test_two_writers_of_one_json_file_at_once_both_succeed_and_leave_it_whole(tmp_path):
    """Two Slurm tasks on one host each write hosts/HOST.json as they start: a temporary file of
    one shared name let one writer move the other's away (FileNotFoundError, a task lost)."""
    import threading

    path, errors = tmp_path / "host.json", []

    def write(who: int) -> None:
        try:
            for i in range(300):
                store.write_json(path, {"writer": who, "i": i})
        except OSError as exc:
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(who,)) for who in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert errors == []
    assert json.loads(path.read_text())["i"] == 299
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host.json"]  # no temporary left
