import json

import pytest

from bench import store


def test_rows_are_appended_one_per_line(tmp_path):
    path = tmp_path / "results.jsonl"
    store.append_row(path, {"key": "a", "examples_per_s": 1.5})
    store.append_row(path, {"key": "b", "examples_per_s": float("nan")})
    rows, warnings = store.read_rows(path)
    assert [r["key"] for r in rows] == ["a", "b"] and warnings == []
    assert path.read_text().count("\n") == 2


def test_a_torn_last_line_is_skipped_with_a_warning_then_cut(tmp_path):
    path = tmp_path / "results.jsonl"
    store.append_row(path, {"key": "a"})
    with path.open("a") as f:
        f.write('{"key": "b", "exam')  # what a kill -9 mid-write leaves
    rows, warnings = store.read_rows(path)
    assert rows == [{"key": "a"}]
    assert warnings == [f"{path}: skipped a torn last line (the run was stopped mid-write) "
                        f"at line 2"]
    assert store.cut_torn_tail(path)
    store.append_row(path, {"key": "c"})
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
