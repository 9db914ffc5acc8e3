"""A PostgreSQL server of a benchmark run's own, so that nobody else's sessions are in it.

A shared server carries other people's work, and one open transaction anywhere in it
holds back the clean-up of every row version written meanwhile: a row updated on every
publish (a budget_ws topic's) then gets slower with every update until that transaction
ends. The private server runs the installed binaries (``/usr/lib/postgresql/*/bin``,
the newest) with their default settings (``fsync`` and ``synchronous_commit`` on, as in
production) in a temporary directory, as the ``postgres`` user when run as root, since
``initdb`` refuses root; it is stopped and deleted afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from contextlib import suppress
from pathlib import Path
from types import TracebackType

from typing_extensions import Self

from benchmarks.measure import free_port

__all__ = ["PrivatePostgres"]


class PrivatePostgres:
    """``with PrivatePostgres() as server:`` connect to ``server.dsn`` (trust auth)."""

    def __init__(self) -> None:
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not candidates:
            raise RuntimeError("PostgreSQL's server binaries are needed (apt-get install "
                               "postgresql), or name a server with --postgres-url")  # fmt: skip
        self.bin = candidates[-1].parent
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="budget_ws-bench-postgres-"))
        self.data = self.directory / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=60)

    def __enter__(self) -> Self:
        try:
            self.directory.chmod(0o755)
            if os.geteuid() == 0:
                shutil.chown(self.directory, "postgres")
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                      "--auth=trust", "--no-sync", "-E", "UTF8")  # fmt: skip
            options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options,
                      "-l", str(self.directory / "log"), "-w", "start")  # fmt: skip
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pg_ctl = str(self.bin / "pg_ctl")
        try:
            self._run(pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")
        except subprocess.SubprocessError:
            with suppress(subprocess.SubprocessError):
                self._run(pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            self._remove()

    def _remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
