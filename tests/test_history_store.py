"""The history store, on SQLite and on a real PostgreSQL (tests/postgres.py starts a cluster in
a temporary directory and stops it): recording, idempotence, series kept apart, two writers at
once, a store from a newer version, a database that is down or refuses the password."""

import multiprocessing
import os

import postgres
import pytest
import sqlalchemy as sa

from bench.series.database import VERSION_TABLE, History, HistoryError, url_of
from bench.series.points import read
from helpers import HISTORY_CPU, history_run, run_main


@pytest.fixture(scope="session")
def postgres_cluster():
    if postgres.binaries() is None:
        if os.environ.get("LENET_BENCH_POSTGRES_TESTS") == "required":  # CI installs it
            pytest.fail("PostgreSQL's initdb is not installed: apt-get install postgresql")
        pytest.skip("needs PostgreSQL's server (apt-get install postgresql)")
    with postgres.cluster() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    """An empty store's --db value: a SQLite file, or a new database in the real cluster."""
    if request.param == "sqlite":
        return str(tmp_path / "history.sqlite")
    return postgres.fresh_database(request.getfixturevalue("postgres_cluster"))


def test_a_run_is_recorded_once_and_a_resumed_run_replaces_its_points(db, tmp_path):
    run = history_run(tmp_path / "run", "c1", "2026-12-01T10:00:00+00:00", batches=(64, 128))
    results = run / "results.jsonl"
    both = results.read_text()
    results.write_text(both.splitlines(keepends=True)[0])  # stopped after its first cell
    with History(db) as history:
        assert history.add(*read(run)) == "added"
        assert history.add(*read(run)) == "already recorded"
        results.write_text(both)  # resumed since: its second cell
        assert history.add(*read(run)) == "updated"
        series = history.series()
    assert sorted(key[3] for key in series) == ["b128-float32-nchw-device (synthetic data)",
                                                 "b64-float32-nchw-device (synthetic data)"]
    assert all(len(points) == 1 for points in series.values())


def test_series_are_kept_apart_by_card_and_model_and_ordered_by_commit_time(db, tmp_path):
    with History(db) as history:
        # recorded out of order: the later commit first
        history.add(*read(history_run(tmp_path / "b", "c2", "2026-12-02T10:00:00+00:00",
                                      speed=11_000.0)))
        history.add(*read(history_run(tmp_path / "a", "c1", "2026-12-01T10:00:00+00:00")))
        history.add(*read(history_run(tmp_path / "gpu", "c1", "2026-12-01T11:00:00+00:00",
                                      gpu_name="NVIDIA H200")))
        series = history.series()
    assert len(series) == 2
    cpu = next(points for key, points in series.items() if key[1] == "cpu")
    assert [p.run.commit_id for p in cpu] == ["c1", "c2"]
    assert [p.point.examples_per_s for p in cpu] == [10_000.0, 11_000.0]
    assert cpu[0].run.machine == f"{HISTORY_CPU} (2 threads)"


def _add_runs(db, paths, errors):
    try:
        with History(db) as history:
            for path in paths:
                history.add(*read(path))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        errors.put(f"{type(exc).__name__}: {exc}")


def test_two_writers_at_once_both_record_every_run(db, tmp_path):
    runs = [history_run(tmp_path / f"run{i}", f"c{i}", f"2026-12-01T10:{i:02d}:00+00:00")
            for i in range(16)]
    History(db).close()  # the schema first, as a store that exists
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    writers = [context.Process(target=_add_runs, args=(db, runs[i::2], errors))
               for i in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
    assert [w.exitcode for w in writers] == [0, 0]
    assert errors.empty(), errors.get()
    with History(db) as history:
        (points,) = history.series().values()
    assert sorted(p.run.commit_id for p in points) == sorted(f"c{i}" for i in range(16))


def test_two_writers_opening_a_new_store_at_once_both_succeed(db, tmp_path):
    runs = [history_run(tmp_path / f"run{i}", f"c{i}", f"2026-12-01T10:{i:02d}:00+00:00")
            for i in range(2)]
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    writers = [context.Process(target=_add_runs, args=(db, [run], errors)) for run in runs]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
    assert errors.empty(), errors.get()
    with History(db) as history:
        assert len(next(iter(history.series().values()))) == 2


def test_a_store_from_a_newer_version_is_refused_in_one_line(db):
    History(db).close()
    engine = sa.create_engine(url_of(db))
    with engine.begin() as connection:
        connection.exec_driver_sql(f"UPDATE {VERSION_TABLE} SET version_num = '9999'")
    engine.dispose()
    with pytest.raises(HistoryError, match="schema revision 9999, from a newer lenet-bench"):
        History(db)
    result = run_main("bench.history", "list", "--db", db)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_database_that_refuses_the_password_is_one_line_and_nothing_is_written(
        postgres_cluster, tmp_path):
    url = postgres.fresh_database(postgres_cluster)
    wrong = url.replace(postgres.PASSWORD, "not-the-password")
    run = history_run(tmp_path / "run", "c1", "2026-12-01T10:00:00+00:00")
    result = run_main("bench.history", "add", run, "--db", wrong)
    assert result.returncode == 2
    assert "password authentication failed" in result.stderr
    assert "not-the-password" not in result.stderr  # the password is not printed
    assert len(result.stderr.strip().splitlines()) == 1
    engine = sa.create_engine(url_of(url))
    with engine.connect() as connection:
        tables = sa.inspect(connection).get_table_names()
    engine.dispose()
    assert tables == []


def test_a_database_that_is_down_is_one_line():
    # a port nothing listens on: the database is down
    result = run_main("bench.history", "list", "--db", "postgresql://bench:x@127.0.0.1:9/none")
    assert result.returncode == 2
    assert "cannot open the history store" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
