import json
import os

import pytest

from bench import store
from helpers import ROOT


def test_rows_are_appended_one_per_line(tmp_path):
    path = tmp_path / "results.jsonl"
    store.append_row(path, {"key": "a", "status": "ok", "examples_per_s": 1.5})
    store.append_row(path, {"key": "b", "status": "ok", "examples_per_s": float("nan")})
    rows, warnings = store.read_rows(path)
    assert [r["key"] for r in rows] == ["a", "b"] and warnings == []
    assert path.read_text().count("\n") == 2


def test_a_torn_last_line_is_skipped_with_a_warning_then_cut(tmp_path):
    path = tmp_path / "results.jsonl"
    store.append_row(path, {"key": "a", "status": "ok"})
    with path.open("a") as f:
        f.write('{"key": "b", "exam')  # what a kill -9 mid-write leaves
    rows, warnings = store.read_rows(path)
    assert rows == [{"key": "a", "status": "ok"}]
    assert warnings == [f"{path}: skipped a torn last line (the run was stopped mid-write) "
                        f"at line 2"]
    assert store.cut_torn_tail(path)
    store.append_row(path, {"key": "c", "status": "ok"})
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "c"]
    assert not store.cut_torn_tail(path)


def test_create_refuses_a_directory_that_holds_a_run(tmp_path):
    store.create(tmp_path / "run", {"grid": "smoke"}, {})
    with pytest.raises(store.RunDirError, match=r"already holds a run; continue it with "
                                                r"--resume .*run, or choose another --out"):
        store.create(tmp_path / "run", {"grid": "smoke"}, {})


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
    rows, warnings = store.read_rows(path)
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
         "from bench import store\n"
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
    code = ("import resource, sys; from pathlib import Path; from bench import store\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({size + 10}, {size + 10}))\n"
            "try:\n    store.append_row(Path(sys.argv[1]), {'key': 'b', 'status': 'ok', "
            "'pad': 'x' * 100})\nexcept store.StoreWriteError as exc:\n    print(exc)")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.stdout.strip() == f"cannot write {path}: File too large", result.stderr
    rows, warnings = store.read_rows(path)
    assert [r["key"] for r in rows] == ["a"] and warnings == []
