"""A throw-away PostgreSQL cluster on a loopback port, for the worker test and benchmark.

Uses Debian's ``postgresql`` package binaries; as root the server runs as the ``postgres`` user (it refuses
to run as root). Nothing is installed or left behind.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator


class PostgresUnavailable(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_cluster(databases: tuple[str, ...] = ("optuna",)) -> Iterator[dict[str, str]]:
    """Start a cluster, create ``databases``, yield ``{name: SQLAlchemy URL}``, then stop and delete it."""
    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdbs:
        raise PostgresUnavailable("PostgreSQL is not installed (Debian package 'postgresql'; `make sysdeps` installs it)")
    bindir = Path(initdbs[-1]).parent
    data = Path(tempfile.mkdtemp(prefix="mpsearch-pg-"))  # /tmp, not a 0700 root-owned pytest tree
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise PostgresUnavailable("running as root without runuser: cannot start PostgreSQL as another user")
        shutil.chown(data, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()

    def pg(*args: str) -> None:
        subprocess.run(prefix + list(args), check=True, capture_output=True, timeout=120)

    try:
        pg(str(bindir / "initdb"), "-D", str(data / "db"), "-U", "postgres", "--auth=trust", "-E", "UTF8", "-N")
        pg(str(bindir / "pg_ctl"), "-D", str(data / "db"), "-w", "-t", "60", "-l", str(data / "server.log"),
           "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", "start")
        try:
            for db in databases:
                pg(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", db)
            yield {db: f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{db}" for db in databases}
        finally:
            subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"],
                           capture_output=True, timeout=60)
    finally:
        shutil.rmtree(data, ignore_errors=True)
