"""The history store: every recorded run and its points, in SQLite (a file: the default) or in
PostgreSQL (`postgresql://user:password@host/db`: the store many runners share), through one
code path, SQLAlchemy Core.

The schema has a version: opening a store brings an older one up to date with its alembic
revisions (bench/series/migrations) and refuses one from a newer version of this tool in one
line. SQLite runs in WAL mode and every transaction there begins IMMEDIATE, so two CI jobs
writing at once queue on the lock (30 s at most) rather than fail midway. A run is written in
one transaction: whole, or not at all.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError

from bench.series.points import Point, Recorded

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "history_schema_version"
SQLITE_WAIT_S = 30  # how long a writer waits for another's transaction to end

class HistoryError(Exception):
    """The store cannot be opened or written; the message, one line, says what to do."""


@dataclass(frozen=True)
class SeriesPoint:
    """A point with the run it came from: what a series is made of."""

    run: Recorded
    point: Point


def url_of(text: str) -> str:
    """A --db value as SQLAlchemy's URL: a path is a SQLite file; postgresql:// uses psycopg."""
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser().resolve()}"
    for plain in ("postgresql://", "postgres://"):
        if text.startswith(plain):
            return "postgresql+psycopg://" + text[len(plain):]
    return text


def shown(url: str) -> str:
    """A URL (or a --db value) without its password, for messages."""
    url = url_of(url)
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def _engine(url: str) -> sa.Engine:
    try:
        engine = sa.create_engine(url)
    except sa.exc.ArgumentError as exc:
        raise HistoryError(f"--db {shown(url)} is neither a file path nor a database URL "
                           f"({exc})") from None
    except sa.exc.NoSuchModuleError:
        raise HistoryError(f"--db {shown(url)}: only SQLite files and postgresql:// URLs are "
                           f"supported") from None
    except ModuleNotFoundError as exc:
        raise HistoryError(f"--db {shown(url)} needs {exc.name}: pip install "
                           f"'lenet-bench[postgresql]'") from None
    if engine.dialect.name == "sqlite":
        @sa.event.listens_for(engine, "connect")
        def _configure(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # BEGIN is ours to issue, below
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_WAIT_S * 1000}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(connection):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
    return engine


def _alembic(connection: sa.Connection) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes.update(connection=connection, version_table=VERSION_TABLE)
    return config


class History:
    """An open store. Use as a context manager, or close()."""

    def __init__(self, db: str):
        self.url = url_of(db)
        self.engine = _engine(self.url)
        try:
            self._migrate()
        except sa.exc.OperationalError as exc:
            self.engine.dispose()
            raise HistoryError(f"cannot open the history store {shown(self.url)}: "
                               f"{_first_line(exc)}") from None
        except HistoryError:
            self.engine.dispose()
            raise
        # the tables as the migrations left them: the revisions are their one definition
        tables = sa.MetaData()
        tables.reflect(self.engine, only=("runs", "points"))
        self.runs, self.points = tables.tables["runs"], tables.tables["points"]

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    def _migrate(self) -> None:
        """Bring the store to this version's schema; refuse one from a newer version."""
        with self.engine.connect() as connection:
            config = _alembic(connection)
            script = ScriptDirectory.from_config(config)
            current = MigrationContext.configure(
                connection, opts={"version_table": VERSION_TABLE}).get_current_revision()
            try:
                script.get_revision(current)
            except CommandError:
                raise HistoryError(
                    f"the history store {shown(self.url)} has schema revision {current}, from a "
                    f"newer lenet-bench than this one (which knows up to "
                    f"{script.get_current_head()}): upgrade lenet-bench to use it") from None
            connection.rollback()  # the read above began a transaction; alembic begins its own
            if current != script.get_current_head():
                command.upgrade(config, "head")

    def add(self, recorded: Recorded, new_points: list[Point]) -> str:
        """Record a run, or refresh one recorded before (same uid): 'added', 'updated' or
        'already recorded'. One transaction: a failure writes nothing."""
        try:
            with self.engine.begin() as connection:
                return self._add(connection, recorded, new_points)
        except sa.exc.IntegrityError:
            # another writer recorded the same run between our look and our insert
            with self.engine.begin() as connection:
                return self._add(connection, recorded, new_points)
        except sa.exc.OperationalError as exc:
            raise HistoryError(f"nothing was recorded in {shown(self.url)}: "
                               f"{_first_line(exc)}") from None

    def _add(self, connection: sa.Connection, recorded: Recorded, new_points: list[Point]) -> str:
        run_id = connection.scalar(sa.select(self.runs.c.id).where(self.runs.c.uid == recorded.uid))
        values = {f.name: getattr(recorded, f.name) for f in fields(Recorded)}
        if run_id is not None:
            stored = connection.execute(sa.select(self.runs).where(self.runs.c.id == run_id)).one()
            stored_points = connection.execute(
                sa.select(*[self.points.c[f.name] for f in fields(Point)])
                .where(self.points.c.run_id == run_id).order_by(self.points.c.cell)).all()
            same_run = all(getattr(stored, k) == v for k, v in values.items())
            if same_run and [tuple(p) for p in stored_points] == \
                    [astuple(p) for p in sorted(new_points, key=lambda p: p.cell)]:
                return "already recorded"
            connection.execute(self.points.delete().where(self.points.c.run_id == run_id))
            connection.execute(self.runs.update().where(self.runs.c.id == run_id).values(**values))
            word = "updated"
        else:
            run_id = connection.execute(self.runs.insert().values(**values)).inserted_primary_key[0]
            word = "added"
        if new_points:
            connection.execute(self.points.insert(), [
                {"run_id": run_id, **{f.name: getattr(p, f.name) for f in fields(Point)}}
                for p in new_points])
        return word

    def series(self) -> dict[tuple[str, str, str, str], list[SeriesPoint]]:
        """Every series, (machine, card, model, cell) -> its points in commit order (the
        commit's time, then when the run was made)."""
        query = sa.select(self.runs, self.points).join(
            self.points, self.points.c.run_id == self.runs.c.id)
        found: dict[tuple[str, str, str, str], list[SeriesPoint]] = {}
        try:
            with self.engine.connect() as connection:
                rows = connection.execute(query).mappings().all()
        except sa.exc.OperationalError as exc:
            raise HistoryError(f"cannot read {shown(self.url)}: {_first_line(exc)}") from None
        for row in rows:
            run = Recorded(**{f.name: row[f.name] for f in fields(Recorded)})
            point = Point(**{f.name: row[f.name] for f in fields(Point)})
            found.setdefault((run.machine, run.card, run.model, point.cell), []).append(
                SeriesPoint(run, point))
        for series in found.values():
            series.sort(key=lambda p: (p.run.commit_time or p.run.recorded_at,
                                       p.run.recorded_at))
        return dict(sorted(found.items()))


def _first_line(exc: Exception) -> str:
    """A driver's error, its first line, without SQLAlchemy's background link."""
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__

