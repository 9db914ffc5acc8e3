"""PostgreSQL for the tests: the server on 127.0.0.1:5432, one schema per test."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path

import asyncpg
from tests.support.servers import free_port, wait_listening

from budget_ws.backends.postgresql import PostgresBackend

POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
"""The development machine's and CI's server (trust auth, database ``test``)."""


def url_of(schema: str, **options: object) -> str:
    query = "&".join(f"{name}={value}" for name, value in {"schema": schema, **options}.items())
    return f"{POSTGRES_DSN}?{query}"


@asynccontextmanager
async def migrated_schema() -> AsyncIterator[str]:
    """A schema of the test's own, migrated; dropped with everything in it afterwards."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    await PostgresBackend(POSTGRES_DSN, schema=schema).migrate()
    try:
        yield schema
    finally:
        connection = await asyncpg.connect(POSTGRES_DSN)
        try:
            await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await connection.close()


class OwnPostgres:
    """A PostgreSQL server of the test's own on a free loopback port, to stop and restart.

    Runs the installed server binaries (``/usr/lib/postgresql/*/bin``) as the ``postgres``
    user when the tests run as root, since ``initdb`` refuses root.
    """

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.data = directory / "data"
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        assert candidates, "PostgreSQL's server binaries are needed (apt-get install postgresql)"
        self.bin = candidates[-1].parent

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=60)

    def initialise(self) -> None:
        self.directory.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth=trust", "--no-sync", "-E", "UTF8",
        )  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.directory / "log"), "-w", "start",
        )  # fmt: skip
        wait_listening(self.port)

    def stop(self, mode: str = "fast") -> None:
        """Stop; ``immediate`` drops every connection at once, as a crash would."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")


@contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    """A fresh server in a directory of its own (not pytest's: ``postgres`` cannot enter it)."""
    directory = Path(tempfile.mkdtemp(prefix="budget_ws-postgres-"))
    server = OwnPostgres(directory)
    try:
        server.initialise()
        server.start()
        yield server
    finally:
        with suppress(subprocess.CalledProcessError):
            server.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)
