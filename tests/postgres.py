"""A real PostgreSQL for the history store's tests: a cluster of Debian's `postgresql` package,
made in a temporary directory, started on a free local port with password authentication, and
stopped after. As root it runs as the `postgres` user (PostgreSQL refuses to run as root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

USER, PASSWORD = "bench", "bench-secret"


def binaries() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, or Debian's versioned folder."""
    found = shutil.which("initdb") or next(iter(sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)), None)
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def cluster():
    """Start a cluster; yields the URL of its `postgres` database. Stopped and removed after."""
    bin_dir = binaries()
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="bench-postgres-"))
    if as_postgres:
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    data, password = folder / "data", folder / "password"
    password.write_text(PASSWORD)
    if as_postgres:
        os.chown(password, owner.pw_uid, owner.pw_gid)

    def run(*args: str) -> None:
        subprocess.run([*as_postgres, *args], check=True, capture_output=True, text=True,
                       timeout=120)

    port = _free_port()
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={password}",
            "--auth=scram-sha-256", "-E", "UTF8")
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start")
        try:
            yield f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/postgres"
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def fresh_database(url: str) -> str:
    """A new, empty database in the cluster at `url`; its URL."""
    import sqlalchemy as sa

    name = f"history_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"),
                              isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return url.rsplit("/", 1)[0] + f"/{name}"
