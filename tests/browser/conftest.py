"""Browser tests: Debian's Chromium driven by Playwright, against real uvicorn servers.

Servers run in subprocesses so a test can stop and restart them (on the same port) while
the page stays open. In CI a missing browser fails the run instead of skipping.

The bundled client's tests run on each transport (``client_server``): the WebSockets served
by uvicorn, or by a :class:`~budget_ws.native.NativeServer` beside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.servers import free_port, free_ports, stop, wait_listening

CHROMIUM = "/usr/bin/chromium"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TRANSPORTS = ["uvicorn", "native"]
# Chromium's own background traffic is refused on this network; keep it quiet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"browser tests cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium shared by a module's tests.

    Module-scoped, not session-scoped: Playwright's sync API keeps an event loop running
    in this thread while it is open, and the async tests of other modules need it gone.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed: pip install -e . --group test")
    if not os.path.exists(CHROMIUM):
        _unavailable(f"{CHROMIUM} is missing: apt-get install chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page in its own browser context (own cookies and storage)."""
    context = browser.new_context()
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Any]:
    """Opens more pages, each in its own context: ``second = new_page()``."""
    contexts: list[Any] = []

    def open_page() -> Any:
        context = browser.new_context()
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


class LiveServer:
    """``uvicorn APP`` in a subprocess on 127.0.0.1; stop and start it again at will.

    Args:
        app: The ASGI app as ``module:attribute`` (uvicorn's syntax).
        app_dir: Directory put on ``sys.path`` for the app's module.
        env: Extra environment variables for the server process.
        factory: ``app`` names a function returning the app (uvicorn ``--factory``).
        port: The port to listen on (default: a free one).
    """

    def __init__(
        self,
        app: str,
        *,
        app_dir: Path = ROOT,
        env: dict[str, str] | None = None,
        factory: bool = False,
        port: int | None = None,
    ) -> None:
        self.app = app
        self.app_dir = app_dir
        self.env = env or {}
        self.factory = factory
        self.port = free_port() if port is None else port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> LiveServer:
        command = [
            sys.executable, "-m", "uvicorn", self.app,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--app-dir", str(self.app_dir), "--log-level", "warning",
        ]  # fmt: skip
        if self.factory:
            command.append("--factory")
        self.process = subprocess.Popen(command, env={**os.environ, **self.env})
        try:
            wait_listening(self.port, self.process, timeout)
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM, as a deployment would); WebSockets get 1012."""
        if self.process is None:
            return
        stop(self.process, timeout)
        self.process = None


@pytest.fixture
def live_server() -> Iterator[Any]:
    """``live_server("module:app", env={...})`` starts a server, stopped after the test."""
    servers: list[LiveServer] = []

    def start(app: str, **options: Any) -> LiveServer:
        server = LiveServer(app, **options)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


class ClientServer(LiveServer):
    """``client_app.py`` (the bundled client's test app) with its WebSockets on ``transport``.

    ``"uvicorn"``: the app's own ``/ws`` route, on the page's origin. ``"native"``: a
    :class:`~budget_ws.native.NativeServer` that the app runs in its lifespan, over the same
    manager, on another port of 127.0.0.1 (:attr:`ws_port`). The page is still served by
    uvicorn, so its WebSockets are cross-origin, and the native server allows the page's
    origin (as a deployment with the WebSockets on a port of their own does). Stopping and
    starting the server stops and starts both, on the same ports.

    Args:
        transport: ``"uvicorn"`` or ``"native"``.
        env: ``BUDGET_WS_<NAME>`` is set from each ``name=value`` (see ``client_app.py``).
    """

    def __init__(self, transport: str, **env: object) -> None:
        assert transport in TRANSPORTS, transport
        http_port, native_port = free_ports(2)
        self.transport = transport
        self.ws_port = native_port if transport == "native" else http_port
        """The port the page's WebSockets go to."""
        variables = {f"BUDGET_WS_{name.upper()}": str(value) for name, value in env.items()}
        if transport == "native":
            variables["BUDGET_WS_NATIVE_PORT"] = str(native_port)
            variables["BUDGET_WS_ORIGIN"] = f"http://127.0.0.1:{http_port}"
        super().__init__(
            "client_app:app_factory", app_dir=HERE, env=variables, factory=True, port=http_port
        )

    @property
    def ws_url(self) -> str:
        """The WebSocket URL the page connects to by default."""
        return f"ws://127.0.0.1:{self.ws_port}/ws"

    def start(self, timeout: float = 15.0) -> ClientServer:
        super().start(timeout)
        # The lifespan starts the native server before uvicorn listens; say so anyway.
        assert self.process is not None
        wait_listening(self.ws_port, self.process, timeout)
        return self


def _client_servers(transport: str) -> Iterator[Callable[..., ClientServer]]:
    servers: list[ClientServer] = []

    def start(**env: object) -> ClientServer:
        server = ClientServer(transport, **env)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(params=TRANSPORTS)
def client_server(request: pytest.FixtureRequest) -> Iterator[Callable[..., ClientServer]]:
    """``client_server(history=2)`` starts ``client_app`` on each transport in turn (the
    test runs once per transport); stopped after the test."""
    yield from _client_servers(request.param)


@pytest.fixture
def native_client_server() -> Iterator[Callable[..., ClientServer]]:
    """``client_server`` on the native transport only, for what only it can do."""
    yield from _client_servers("native")
