"""Processes the tests start on loopback ports: finding a port, waiting, stopping."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import uvicorn

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def free_port() -> int:
    """A TCP port nothing listens on right now, on 127.0.0.1."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: held open together, so none is handed out twice."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def wait_listening(
    port: int, process: subprocess.Popen[Any] | None = None, timeout: float = 15.0
) -> None:
    """Wait until something accepts connections on ``port``; fail early if ``process`` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout} s")


def stop(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, as a deployment would; SIGKILL if it does not end in time."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class UvicornWorker:
    """``uvicorn <app>:app_factory --factory`` in a subprocess on a free loopback port: one
    worker of a multi-worker test, with the environment that configures its app."""

    def __init__(self, name: str, app: str, app_dir: Path, environment: dict[str, str]) -> None:
        self.name = name
        self.app = app
        self.app_dir = app_dir
        self.environment = environment
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def launch(self) -> None:
        command = [
            sys.executable, "-m", "uvicorn", f"{self.app}:app_factory", "--factory",
            "--app-dir", str(self.app_dir), "--host", "127.0.0.1", "--port", str(self.port),
            "--log-level", "warning", "--ws-per-message-deflate", "false",
            "--timeout-graceful-shutdown", "5",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, env={**os.environ, **self.environment})

    def wait_listening(self, timeout: float = 15.0) -> None:
        # uvicorn listens only once the lifespan has started the manager (and its backend).
        assert self.process is not None
        wait_listening(self.port, self.process, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, as a deployment would: the worker shuts down gracefully."""
        if self.process is not None:
            stop(self.process, timeout)
            self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing of the worker runs any more."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.process = None


@contextmanager
def running_demo() -> Iterator[str]:
    """The family-budget demo (a database in memory, the memory backend) in a uvicorn
    process of its own; yields its base URL."""
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "family_budget.app:app_factory", "--factory",
        "--app-dir", str(EXAMPLES), "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning",
    ]  # fmt: skip
    env = {**os.environ, "BUDGET_DEMO_DB": ":memory:", "BUDGET_WS_BACKEND": "memory://"}
    with subprocess.Popen(command, env=env) as process:
        try:
            wait_listening(port, process)
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(process)


@asynccontextmanager
async def running_uvicorn(app: Any, **options: Any) -> AsyncIterator[uvicorn.Server]:
    """Run uvicorn in this process on 127.0.0.1 until the block ends; yield the server.

    ``options`` go to ``uvicorn.Config`` (``port`` 0, an ephemeral one, unless given);
    :func:`bound_port` says which port it took.
    """
    config = uvicorn.Config(
        app,
        **{
            "host": "127.0.0.1",
            "port": 0,
            "log_level": "warning",
            "timeout_graceful_shutdown": 5,
            **options,
        },
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        with anyio.fail_after(10):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.01)
        yield server
    finally:
        server.should_exit = True
        await task


def bound_port(server: uvicorn.Server) -> int:
    """The port a started uvicorn server listens on."""
    return int(server.servers[0].sockets[0].getsockname()[1])
