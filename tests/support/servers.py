"""Processes the tests start on loopback ports: finding a port, waiting, stopping."""

from __future__ import annotations

import asyncio
import contextlib
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
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.typing import Origin, Subprotocol
from websockets.uri import parse_uri

from budget_ws.native import NativeServer

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


@asynccontextmanager
async def running_native(
    app: Any, *, lifespan: bool = True, **options: Any
) -> AsyncIterator[NativeServer]:
    """Run budget_ws's native server in this process on 127.0.0.1 until the block ends.

    ``app`` is a ``ConnectionManager`` or a ``WebSocketApp``; ``options`` go to
    ``NativeServer`` (``port`` 0, an ephemeral one, unless given). With ``lifespan``, the
    manager is started first (unless it already runs) and closed after the server stops
    listening, as uvicorn's lifespan does for a ``WebSocketApp``.
    """
    server = NativeServer(app, **{"port": 0, **options})
    manager = server.manager
    if lifespan and manager.state == "new":
        await manager.start()
    try:
        async with server:
            yield server
    finally:
        if lifespan:
            await manager.aclose()


class RawClient:
    """A WebSocket client on a raw socket and ``websockets``' sans-I/O ``ClientProtocol``.

    It reads only when told to, so a test can stall it (with a small receive buffer the
    server's writes then really block), and it can send what a well-behaved client would
    not. ``messages`` holds the text messages read so far, as the server sent them (several
    frames joined with line feeds, when the server coalesced them).
    """

    def __init__(self, sock: socket.socket, protocol: ClientProtocol) -> None:
        self.sock = sock
        self.protocol = protocol
        self.messages: list[str] = []
        self.frames: list[Frame] = []
        """Every data frame received (text, binary, continuation), in order."""
        self._fragments: list[bytes] = []

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        subprotocol: str | None = "budget-ws.v1",
        origin: str | None = None,
        receive_buffer: int | None = None,
    ) -> RawClient:
        """Connect and complete the opening handshake (which must succeed)."""
        client = await cls.connect(url, receive_buffer=receive_buffer)
        protocol = client.protocol = ClientProtocol(
            parse_uri(url),
            subprotocols=[Subprotocol(subprotocol)] if subprotocol else None,
            origin=Origin(origin) if origin else None,
            max_size=None,
        )
        protocol.send_request(protocol.connect())
        await client.flush()
        loop = asyncio.get_running_loop()
        with anyio.fail_after(5):
            while protocol.state is State.CONNECTING:
                data = await loop.sock_recv(client.sock, 65536)
                if not data:
                    protocol.receive_eof()
                    break
                protocol.receive_data(data)
        assert protocol.handshake_exc is None, protocol.handshake_exc
        assert protocol.state is State.OPEN
        client._take_events()  # frames sent right after the handshake
        return client

    @classmethod
    async def connect(cls, url: str, *, receive_buffer: int | None = None) -> RawClient:
        """Only the TCP connection: the opening request is the test's to send (``send_raw``)."""
        uri = parse_uri(url)
        sock = socket.socket()
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        with anyio.fail_after(5):
            await asyncio.get_running_loop().sock_connect(sock, (uri.host, uri.port))
        return cls(sock, ClientProtocol(uri, max_size=None))

    async def flush(self) -> None:
        data = b"".join(self.protocol.data_to_send())
        if data:
            await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def send_raw(self, data: bytes) -> None:
        """Bytes as they are, on the TCP connection."""
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def send_text(self, text: str | bytes, *, fin: bool = True) -> None:
        self.protocol.send_text(text.encode() if isinstance(text, str) else text, fin=fin)
        await self.flush()

    async def read_some(self) -> bool:
        """Read what came (waiting for something); False once the server closed the TCP
        connection."""
        data = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        if not data:
            self.protocol.receive_eof()
            self._take_events()
            return False
        self.protocol.receive_data(data)
        self._take_events()
        return True

    async def read_messages(self, count: int, within: float = 5.0) -> list[str]:
        """Read until ``count`` messages came in all; return them."""
        with anyio.fail_after(within):
            while len(self.messages) < count:
                assert await self.read_some(), "the server closed the connection"
        return self.messages

    async def read_until_closed(self, within: float = 10.0) -> Close:
        """Read everything the server sent, up to its close frame; return the close frame."""
        with anyio.fail_after(within):
            while self.protocol.close_rcvd is None and await self.read_some():
                pass
        assert self.protocol.close_rcvd is not None, "the server sent no close frame"
        return self.protocol.close_rcvd

    async def read_until_eof(self, within: float = 5.0) -> bytes:
        """The raw bytes the server sends until it closes the TCP connection."""
        received = b""
        with anyio.fail_after(within):
            while data := await asyncio.get_running_loop().sock_recv(self.sock, 65536):
                received += data
        return received

    def _take_events(self) -> None:
        for event in self.protocol.events_received():
            if not isinstance(event, Frame):
                continue
            if event.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                self.frames.append(event)
            if event.opcode in (Opcode.TEXT, Opcode.CONT):
                self._fragments.append(bytes(event.data))
                if event.fin:
                    self.messages.append(b"".join(self._fragments).decode())
                    self._fragments = []
        # Answer pings and the closing handshake, as a client library would.
        data = b"".join(self.protocol.data_to_send())
        if data:
            with contextlib.suppress(OSError):
                self.sock.send(data)

    def close(self) -> None:
        self.sock.close()


ROOT = Path(__file__).resolve().parents[2]


class NativeProcess:
    """``python -m budget_ws serve TARGET --port PORT ...`` in a process of its own, run
    from the repository's root (so ``tests.…`` modules are importable).

    ``start()`` returns once it serves (it says so on standard error); ``stop()`` sends
    SIGTERM, as a deployment would, and returns the exit status.
    """

    def __init__(
        self,
        target: str,
        port: int,
        *arguments: str,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.command = [
            sys.executable, "-m", "budget_ws", "serve", target, "--port", str(port), *arguments,
        ]  # fmt: skip
        self.environment = {**os.environ, **(environment or {})}
        self.process: asyncio.subprocess.Process | None = None
        self.stderr = b""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def run(self) -> tuple[int, str]:
        """Run to the end (a command that fails at once); its exit status and stderr."""
        process = await asyncio.create_subprocess_exec(
            *self.command, cwd=ROOT, env=self.environment, stderr=asyncio.subprocess.PIPE
        )
        with anyio.fail_after(30):
            _, stderr = await process.communicate()
        assert process.returncode is not None
        return process.returncode, stderr.decode()

    async def start(self) -> None:
        self.process = process = await asyncio.create_subprocess_exec(
            *self.command, cwd=ROOT, env=self.environment, stderr=asyncio.subprocess.PIPE
        )
        assert process.stderr is not None
        with anyio.fail_after(30):
            while b"budget_ws: serving " not in self.stderr:
                line = await process.stderr.readline()
                if not line:
                    await process.wait()
                    raise RuntimeError(
                        f"{self.command} exited with {process.returncode}: {self.stderr.decode()}"
                    )
                self.stderr += line

    async def stop(self) -> int:
        process = self.process
        assert process is not None
        if process.returncode is None:
            process.terminate()
        try:
            with anyio.fail_after(15):
                _, stderr = await process.communicate()
        except TimeoutError:
            process.kill()
            _, stderr = await process.communicate()
        self.stderr += stderr
        assert process.returncode is not None
        return process.returncode
