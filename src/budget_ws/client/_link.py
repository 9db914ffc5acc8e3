"""The client's link to the server: one connection at a time, read until it ends, again
after a backoff, until a final end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import anyio
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed as WebSocketClosed

from ..errors import ClientClosed, ServerProtocolError
from ..protocol import FINAL_CLOSE_CODES, CloseCode, close_reason
from ..server_frames import ServerFrame, Welcome, decode_server_frames
from ._backoff import Backoff
from ._websocket import Unreachable, open_websocket

__all__ = ["DEFAULT_SILENCE", "FrameHandler", "Link", "Listener", "logged_url"]

logger = logging.getLogger("budget_ws.client")
"""The client's lines; the table is in ``docs/reference/logging.md``."""

DEFAULT_SILENCE = 20.0
"""Longest server silence (s) before the welcome frame tells the real heartbeat."""


FrameHandler = Callable[[ClientConnection, ServerFrame], Awaitable[None]]
"""Handles one frame read from a connection (a welcome frame: call :meth:`Link.welcomed`)."""


def logged_url(url: str) -> str:
    """``url`` as log lines show it: without credentials, query string or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # pragma: no cover - client_url() checked it
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return f"{parts.scheme}://{netloc}{parts.path}"


class Listener(Protocol):
    """What the link tells the client's topic bookkeeping, besides the frames."""

    def disconnected(self) -> None:
        """The connection ended (whether it was open or not)."""

    def finished(self, error: BaseException | None) -> None:
        """The client stopped for good: with ``error``, or closed by the app (None)."""


class Link:
    """Keeps one connection open: connects, reads, answers pings, watches the server's
    heartbeat, reconnects with backoff; stops for good on a final end or :meth:`stop`.

    Owns the client's lifecycle: whether it is open, stopping, or ended by a final error,
    and whether the app has seen that error yet.
    """

    def __init__(
        self,
        url: str,
        headers: list[tuple[str, str]],
        *,
        min_delay: float,
        max_delay: float,
        heartbeat_slack: float,
        open_timeout: float,
        close_timeout: float,
        max_attempts: int | None,
        max_message_size: int | None,
    ) -> None:
        self.url = url
        self.heartbeat_slack = heartbeat_slack
        self.max_attempts = max_attempts
        self.welcome: Welcome | None = None
        """The current connection's welcome frame; None while disconnected."""
        self._headers = headers
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._max_message_size = max_message_size
        self._backoff = Backoff(min_delay, max_delay)
        self._websocket: ClientConnection | None = None
        self._open = False
        self._changed = asyncio.Event()
        self._closing: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._closed = asyncio.Event()
        self._final: BaseException | None = None
        self._final_seen = False

    # State -----------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        """Whether a connection is open (its welcome frame received)."""
        return self._open

    @property
    def started(self) -> bool:
        """Whether :meth:`start` was called."""
        return self._task is not None

    @property
    def done(self) -> bool:
        """Whether the client stopped for good or is stopping."""
        return self._stopping or self._final is not None

    def socket(self) -> ClientConnection | None:
        """The open connection; None while there is none (welcome frame not received)."""
        return self._websocket if self._open else None

    def check_usable(self) -> None:
        """Raise unless the client is started and not stopped."""
        if self._final is not None:
            self._final_seen = True
            raise self._final
        if self._stopping:
            raise ClientClosed(CloseCode.NORMAL, "the client was closed")
        if self._task is None:
            raise ClientClosed(None, "the client is not started: use `async with connect(...)`")

    def raised(self, exc: BaseException) -> None:
        """``exc`` reaches the app: if it is the final error, the app has seen it."""
        if exc is self._final:
            self._final_seen = True

    def unseen_final(self) -> BaseException | None:
        """The final error if the app has not seen it yet; it has from now on."""
        if self._final is None or self._final_seen:
            return None
        self._final_seen = True
        return self._final

    async def wait_open(self, stale: ClientConnection | None = None) -> ClientConnection:
        """The open connection (not ``stale``), once there is one."""
        while True:
            self.check_usable()
            websocket = self._websocket
            if self._open and websocket is not None and websocket is not stale:
                return websocket
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def send(self, websocket: ClientConnection, frame: str) -> None:
        """Send ``frame``; if the connection closed, the new one will resubscribe."""
        # Closed: the reader sees the end and reconnects; the new connection resubscribes.
        with contextlib.suppress(WebSocketClosed):
            await websocket.send(frame)

    # Lifecycle -------------------------------------------------------------------------

    def start(self, handle: FrameHandler, listener: Listener) -> None:
        """Start the connection loop: frames go to ``handle``, ends to ``listener``."""
        if self._task is not None:
            raise ClientClosed(None, "a Client is started once")
        self._task = asyncio.create_task(
            self._run(handle, listener), name=f"budget_ws client {logged_url(self.url)}"
        )

    async def stop(self) -> bool:
        """Close the connection with 1000 and end the loop.

        Returns:
            False when stopping already (then waits until stopped, unless called from the
            loop itself); True when the caller is to :meth:`finish` and :meth:`stopped`.
        """
        if self._stopping:
            if self._task is not asyncio.current_task():
                await self._closed.wait()
            return False
        self._stopping = True
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait({task})
        elif self._websocket is not None:  # from a handler, inside the reader
            await self._websocket.close(CloseCode.NORMAL, "client closed")
        for pending in self._closing:
            pending.cancel()
        if self._closing:
            await asyncio.wait(self._closing)
        return True

    def stopped(self) -> None:
        """:meth:`stop` and :meth:`finish` are done."""
        self._closed.set()

    def finish(self, error: BaseException | None) -> BaseException | None:
        """Stop for good, with ``error`` unless stopping already; waiting calls raise.

        Returns:
            The error the app's iterators end with (None: closed by the app).
        """
        if error is not None and self._final is None and not self._stopping:
            self._final = error
        self._notify()
        return self._final

    # Connecting ------------------------------------------------------------------------

    async def _run(self, handle: FrameHandler, listener: Listener) -> None:
        failures = 0
        try:
            while True:
                fields: dict[str, Any]
                try:
                    websocket = await open_websocket(
                        self.url,
                        self._headers,
                        open_timeout=self._open_timeout,
                        close_timeout=self._close_timeout,
                        max_message_size=self._max_message_size,
                    )
                except Unreachable as exc:
                    reason = f"connection failed: {exc}"
                    fields = {
                        "budget_ws_event": "client_connect_failed",
                        "budget_ws_error": str(exc),
                    }
                except ServerProtocolError as exc:  # e.g. no budget-ws.v1 subprotocol
                    self._protocol_error(exc)
                    raise
                else:
                    code, reason, welcomed = await self._serve(websocket, handle, listener)
                    if self._stopping:  # aclose() from a handler
                        return
                    if code in FINAL_CLOSE_CODES:
                        listener.finished(self.finish(ClientClosed(code, reason)))
                        return
                    fields = {
                        "budget_ws_event": "client_disconnected",
                        "budget_ws_close_code": int(code),
                        "budget_ws_close_reason": reason,
                    }
                    reason = f"connection closed ({code}{': ' + reason if reason else ''})"
                    if welcomed:
                        failures = 0
                failures += 1
                if self.max_attempts is not None and failures >= self.max_attempts:
                    gave_up = ClientClosed(None, f"gave up after {failures} attempts: {reason}")
                    listener.finished(self.finish(gave_up))
                    return
                delay = self._backoff.next_delay()
                # The first failure in a row is worth a line; the next ones are DEBUG.
                logger.log(
                    logging.INFO if failures == 1 else logging.DEBUG,
                    "budget_ws: %s: %s; reconnecting in %.2f s (attempt %d)",
                    logged_url(self.url),
                    reason,
                    delay,
                    failures,
                    extra={
                        **fields,
                        "budget_ws_url": logged_url(self.url),
                        "budget_ws_attempt": failures,
                        "budget_ws_retry_in": delay,
                    },
                )
                await asyncio.sleep(delay)
        except ClientClosed as exc:
            listener.finished(self.finish(exc))
        except Exception as exc:  # a bug: surface it rather than hang the app
            logger.exception(
                "budget_ws: the connection loop failed (client of %s)",
                logged_url(self.url),
                extra={
                    "budget_ws_event": "client_loop_failed",
                    "budget_ws_url": logged_url(self.url),
                },
            )
            listener.finished(self.finish(exc))

    def _protocol_error(self, exc: ServerProtocolError) -> None:
        logger.warning(
            "budget_ws: %s broke the protocol: %s; closing with 1002",
            logged_url(self.url),
            exc,
            extra={
                "budget_ws_event": "client_protocol_error",
                "budget_ws_url": logged_url(self.url),
                "budget_ws_close_code": int(CloseCode.PROTOCOL_ERROR),
                "budget_ws_error": str(exc),
            },
        )

    async def _serve(
        self, websocket: ClientConnection, handle: FrameHandler, listener: Listener
    ) -> tuple[int, str, bool]:
        """Read one connection until it ends.

        Returns:
            Its close code and reason, and whether it got its welcome frame.

        Raises:
            ServerProtocolError: After closing with 1002.
        """
        self._websocket = websocket
        silence = DEFAULT_SILENCE
        welcomed = False
        try:
            while True:
                try:
                    # Not asyncio.wait_for: before Python 3.12, a message arriving as the
                    # task is cancelled is returned and the cancellation lost, and stop()
                    # would wait for the next frame (seen as a Ctrl-C that hung `tail`).
                    message: str | bytes | None = None
                    with anyio.move_on_after(silence + self.heartbeat_slack):
                        message = await websocket.recv()
                    if message is None:
                        raise TimeoutError
                except TimeoutError:
                    logger.info(
                        "budget_ws: %s sent nothing for %.1f s; closing with 4001",
                        logged_url(self.url),
                        silence + self.heartbeat_slack,
                        extra={
                            "budget_ws_event": "client_heartbeat_timeout",
                            "budget_ws_url": logged_url(self.url),
                            "budget_ws_close_code": int(CloseCode.HEARTBEAT_TIMEOUT),
                            "budget_ws_silence": silence + self.heartbeat_slack,
                        },
                    )
                    # A dead link answers nothing, not even a close: don't wait for it.
                    self._close_later(websocket, CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
                    return CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout (client side)", welcomed
                except WebSocketClosed as exc:
                    if exc.rcvd is None:
                        return 1006, "connection lost", welcomed
                    return exc.rcvd.code, exc.rcvd.reason, welcomed
                try:
                    for frame in decode_server_frames(message):
                        if self.welcome is None and not isinstance(frame, Welcome):
                            raise ServerProtocolError(
                                "the server's first frame is not a welcome frame"
                            )
                        if isinstance(frame, Welcome):
                            silence = max(frame.heartbeat_interval, frame.heartbeat_timeout)
                            welcomed = True
                        await handle(websocket, frame)
                except ServerProtocolError as exc:
                    self._protocol_error(exc)
                    await websocket.close(CloseCode.PROTOCOL_ERROR, close_reason(str(exc)))
                    raise
        except asyncio.CancelledError:
            if self._stopping:
                await asyncio.shield(websocket.close(CloseCode.NORMAL, "client closed"))
            raise
        finally:
            self._disconnected(listener)

    def welcomed(self, welcome: Welcome) -> None:
        """The connection got its welcome frame: it is open."""
        self.welcome = welcome
        self._open = True
        self._backoff.reset()
        self._notify()
        logger.info(
            "budget_ws: connected to %s (connection %s)",
            logged_url(self.url),
            welcome.connection_id,
            extra={
                "budget_ws_event": "client_connected",
                "budget_ws_url": logged_url(self.url),
                "budget_ws_connection_id": welcome.connection_id,
            },
        )

    def _close_later(self, websocket: ClientConnection, code: int, reason: str) -> None:
        task = asyncio.create_task(websocket.close(code, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _disconnected(self, listener: Listener) -> None:
        self._websocket = None
        self._open = False
        self.welcome = None
        listener.disconnected()
        self._notify()
