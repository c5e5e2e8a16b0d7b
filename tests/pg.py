"""A throwaway PostgreSQL cluster for the tests: initdb in a temp dir, a free port, trust auth.

PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` system user.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, fsync: bool = False) -> None:
        """`fsync=False` (tests) trades durability for speed; benchmarks keep it on."""
        self.dir = Path(tempfile.mkdtemp(prefix="hadmc-pg-"))
        self.port = _free_port()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.dir, "postgres", "postgres")
        data = self.dir / "data"
        self._run("initdb", "-A", "trust", "-U", "postgres", "-D", str(data))
        self.data = data
        self._options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync={'on' if fsync else 'off'}"
        )
        self.start()

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self._as, *cmd], check=True, capture_output=True, timeout=120)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def restart(self) -> None:
        """A fast restart: every connection is cut, as in a server upgrade or a failover."""
        self._ctl("restart", "-m", "fast")

    def halt(self) -> None:
        """Stop the server, keeping its data; `start` brings it back."""
        self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data))

    def start(self) -> None:
        self._ctl("start")

    def _ctl(self, action: str, *flags: str) -> None:
        log = str(self.dir / "log")
        self._run("pg_ctl", action, *flags, "-w", "-t", "60", "-D", str(self.data), "-l", log, "-o", self._options)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "stop", "-m", "immediate", "-D", str(self.data))
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
