"""What budget_ws logs: a logger per layer, one line per event, its fields in ``extra``.

Each test provokes one kind of line through the public API and checks what
``docs/reference/logging.md`` promises of it: logger, level, ``budget_ws_event``, fields,
and no traceback for an expected condition. The Redis backend's lines are in
``tests/backends/test_redis_logging.py``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from tests.support.clock import virtual_time_backends

from budget_ws import (
    BackendUnavailable,
    ClientMessage,
    CloseCode,
    ConnectionClosed,
    ConnectionManager,
    Event,
    Handshake,
    HandshakeRejected,
    Heartbeat,
    Limits,
    MemoryBackend,
    OutboxLimits,
)
from budget_ws.adapters import WebSocketApp
from budget_ws.compat import Compatibility
from budget_ws.connection import Connection
from budget_ws.testing import MemoryClient, MemoryTransport, RecordingListener, connect

pytestmark = pytest.mark.anyio

LOGGING_PAGE = Path(__file__).resolve().parent.parent / "docs" / "reference" / "logging.md"

# What every LogRecord has; anything else on a record came from `extra`.
STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("name", logging.INFO, "path", 1, "msg", (), None))
) | {"message", "asctime"}


class Noted(Event, name="test_logging_noted", register=False):
    text: str


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """What the line carries in ``extra``."""
    return {key: value for key, value in vars(record).items() if key not in STANDARD_ATTRIBUTES}


def lines(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "budget_ws_event", None) == event]


def line(caplog: pytest.LogCaptureFixture, event: str) -> logging.LogRecord:
    [record] = lines(caplog, event)
    return record


@pytest.fixture(autouse=True)
def every_line_is_structured(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Capture every level; afterwards, check every line of the core's loggers."""
    caplog.set_level(logging.DEBUG, logger="budget_ws")
    yield
    for record in caplog.records:
        if not record.name.startswith("budget_ws") or record.name == "budget_ws.client":
            continue
        assert record.name.startswith("budget_ws."), "a layer's logger, under budget_ws"
        extra = fields(record)
        assert "budget_ws_event" in extra, record.getMessage()
        # Flat and prefixed: never a LogRecord attribute, emitted as-is by JSON formatters.
        assert all(key.startswith("budget_ws_") for key in extra), extra
        json.dumps(extra)


async def closed_with(client: MemoryClient) -> ConnectionClosed:
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await client.receive()
    return info.value


# Connections -----------------------------------------------------------------------------


class Principal:
    def __repr__(self) -> str:
        return "<Principal " + "ann " * 40 + ">"


async def test_a_connection_opened_and_closed_is_two_debug_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with ConnectionManager() as manager:
        async with connect(manager, principal=Principal()) as client:
            welcome = await client.receive()
            await client.subscribe("t")
        connection_id = welcome["connection_id"]
    opened, closed = line(caplog, "connection_opened"), line(caplog, "connection_closed")
    for record in opened, closed:
        assert record.name == "budget_ws.connection"
        assert record.levelno == logging.DEBUG
        assert record.exc_info is None
        assert record.budget_ws_connection_id == connection_id
        # The principal's repr, cut short.
        assert record.budget_ws_principal.startswith("<Principal ann ann")
        assert len(record.budget_ws_principal) == 80
    assert fields(closed) == {
        "budget_ws_event": "connection_closed",
        "budget_ws_connection_id": connection_id,
        "budget_ws_principal": opened.budget_ws_principal,
        "budget_ws_close_code": 1000,
        "budget_ws_close_reason": "client closed",
        "budget_ws_closed_by": "client",
        "budget_ws_topics": 1,
        "budget_ws_duration": closed.budget_ws_duration,
    }
    assert closed.budget_ws_duration >= 0
    assert f"connection {connection_id} closed by the client with 1000" in closed.getMessage()


class Unrepresentable:
    def __repr__(self) -> str:
        raise RuntimeError("bug in __repr__")


async def test_a_principal_whose_repr_fails_is_named_by_its_type(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with ConnectionManager() as manager, connect(manager, principal=Unrepresentable()) as c:
        await c.receive()
    for event in "connection_opened", "connection_closed":
        assert line(caplog, event).budget_ws_principal == "<Unrepresentable without a repr>"


async def test_a_connection_the_server_closes_says_so(caplog: pytest.LogCaptureFixture) -> None:
    async def on_connect(connection: Connection) -> None:
        connection.close(CloseCode.FORBIDDEN, "not today")

    async with ConnectionManager(on_connect=on_connect) as manager, connect(manager) as client:
        await closed_with(client)
    closed = line(caplog, "connection_closed")
    assert (closed.budget_ws_close_code, closed.budget_ws_close_reason) == (4003, "not today")
    assert closed.budget_ws_closed_by == "server"


async def test_silencing_debug_leaves_the_other_lines(caplog: pytest.LogCaptureFixture) -> None:
    # The recipe in the docs: the connection layer at INFO drops opened/closed only.
    logging.getLogger("budget_ws.connection").setLevel(logging.INFO)
    try:
        limits = Limits(max_frame_bytes=100)
        async with ConnectionManager(limits=limits) as manager, connect(manager) as client:
            await client.send_raw("x" * 101)
            await closed_with(client)
    finally:
        logging.getLogger("budget_ws.connection").setLevel(logging.NOTSET)
    assert lines(caplog, "connection_opened") == []
    assert lines(caplog, "connection_closed") == []
    assert line(caplog, "frame_too_big").levelno == logging.INFO


async def test_configuring_budget_ws_configures_every_layer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="budget_ws")
    async with ConnectionManager() as manager, connect(manager) as client:
        await client.receive()
    assert [r for r in caplog.records if r.name.startswith("budget_ws")] == []


async def test_a_slow_consumer_is_one_warning_with_its_queue(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outbox = OutboxLimits(max_messages=10)
    async with ConnectionManager(outbox=outbox) as manager:
        async with connect(manager, send_buffer=1) as stalled:
            await stalled.subscribe("t")
            for number in range(50):
                await manager.publish(Noted(text=str(number)), topic="t")
            assert (await closed_with(stalled)).code == CloseCode.SLOW_CONSUMER
    record = line(caplog, "slow_consumer")
    assert record.name == "budget_ws.connection"
    assert record.levelno == logging.WARNING
    assert record.exc_info is None
    assert record.budget_ws_close_code == 4000
    assert record.budget_ws_queue == "events"
    assert record.budget_ws_queued_frames == 10
    assert record.budget_ws_queued_bytes > 10 * len('{"event":"test_logging_noted"}')
    assert record.getMessage().startswith(
        f"budget_ws: slow consumer: connection {record.budget_ws_connection_id} closed with 4000"
    )


async def test_a_client_piling_up_control_frames_is_a_slow_consumer_of_that_queue(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outbox = OutboxLimits(max_messages=5, max_replay=0)
    async with ConnectionManager(outbox=outbox) as manager:
        async with connect(manager, send_buffer=1) as client:
            for _ in range(20):
                await client.send_raw('{"op": "ping"}')
            assert (await closed_with(client)).code == CloseCode.SLOW_CONSUMER
    record = line(caplog, "slow_consumer")
    assert record.budget_ws_queue == "control"
    assert record.budget_ws_queued_frames > 5
    assert record.exc_info is None


async def test_a_frame_too_big_is_one_info_line_with_the_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with ConnectionManager(limits=Limits(max_frame_bytes=100)) as manager:
        async with connect(manager) as client:
            await client.send_raw("é" * 60)
            assert (await closed_with(client)).code == CloseCode.MESSAGE_TOO_BIG
    record = line(caplog, "frame_too_big")
    assert (record.name, record.levelno, record.exc_info) == (
        "budget_ws.connection",
        logging.INFO,
        None,
    )
    assert record.budget_ws_close_code == 1009
    assert (record.budget_ws_limit, record.budget_ws_limit_value) == ("Limits.max_frame_bytes", 100)
    assert record.budget_ws_frame_bytes == 120
    assert record.getMessage() == (
        f"budget_ws: connection {record.budget_ws_connection_id} closed with 1009: "
        "frame larger than 100 bytes"
    )


@pytest.mark.parametrize(
    ("limits", "frame", "limit", "value"),
    [
        (
            Limits(max_messages_per_second=5, message_burst=10),
            '{"op": "ping"}',
            "Limits.max_messages_per_second",
            5,
        ),
        (
            Limits(max_frame_bytes=1_000, max_bytes_per_second=1_000, byte_burst=2_500),
            '{"op": "ping", "pad": "' + "x" * 900 + '"}',
            "Limits.max_bytes_per_second",
            1_000,
        ),
    ],
    ids=["frames", "bytes"],
)
async def test_a_rate_limited_client_is_one_info_line_with_the_limit(
    caplog: pytest.LogCaptureFixture, limits: Limits, frame: str, limit: str, value: float
) -> None:
    async with ConnectionManager(limits=limits) as manager, connect(manager) as client:
        for _ in range(30):
            await client.send_raw(frame)
        assert (await closed_with(client)).code == CloseCode.RATE_LIMITED
    record = line(caplog, "rate_limited")
    assert (record.name, record.levelno, record.exc_info) == (
        "budget_ws.connection",
        logging.INFO,
        None,
    )
    assert record.budget_ws_close_code == 4029
    assert (record.budget_ws_limit, record.budget_ws_limit_value) == (limit, value)


@pytest.mark.parametrize("anyio_backend", virtual_time_backends())
async def test_a_heartbeat_timeout_is_one_info_line(
    anyio_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    heartbeat = Heartbeat(interval=20, timeout=5)
    async with ConnectionManager(heartbeat=heartbeat) as manager, connect(manager) as client:
        client.timeout = 1000
        assert (await closed_with(client)).code == CloseCode.HEARTBEAT_TIMEOUT
    record = line(caplog, "heartbeat_timeout")
    assert (record.name, record.levelno, record.exc_info) == (
        "budget_ws.connection",
        logging.INFO,
        None,
    )
    assert record.budget_ws_close_code == 4001
    assert (record.budget_ws_limit, record.budget_ws_limit_value) == ("Heartbeat.timeout", 5)
    assert record.getMessage().endswith("closed with 4001: no pong within 5 s")


# The manager -----------------------------------------------------------------------------


async def test_a_connection_over_max_connections_is_one_info_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with ConnectionManager(max_connections=1) as manager, connect(manager) as first:
        await first.receive()
        async with connect(manager) as second:
            assert (await closed_with(second)).code == CloseCode.TRY_AGAIN_LATER
    record = line(caplog, "connection_refused")
    assert (record.name, record.levelno, record.exc_info) == (
        "budget_ws.manager",
        logging.INFO,
        None,
    )
    assert record.budget_ws_close_code == 1013
    assert record.budget_ws_limit == "ConnectionManager.max_connections"
    assert record.budget_ws_limit_value == 1


class _SubscribeFails(MemoryBackend):
    async def subscribe(self, topic: str, listener: Any) -> None:
        raise BackendUnavailable("backend down")


async def test_a_failed_subscribe_is_one_warning_with_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with ConnectionManager(_SubscribeFails()) as manager:
        async with connect(manager) as client:
            welcome = await client.receive()
            assert (await client.subscribe("budget:1"))["code"] == "backend_error"
        transport = MemoryTransport()
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(lambda: manager.serve(transport, topics=["budget:2"]))
        transport.release()
        assert transport.close_code == CloseCode.TRY_AGAIN_LATER
    by_client, server_side = lines(caplog, "subscribe_failed")
    for record in by_client, server_side:
        assert (record.name, record.levelno, record.exc_info) == (
            "budget_ws.manager",
            logging.WARNING,
            None,
        )
        assert "backend down" in record.budget_ws_error
    assert by_client.budget_ws_connection_id == welcome["connection_id"]
    assert (by_client.budget_ws_topic, by_client.budget_ws_server_side) == ("budget:1", False)
    assert (server_side.budget_ws_topic, server_side.budget_ws_server_side) == ("budget:2", True)


class _UnsubscribeFails(MemoryBackend):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def unsubscribe(self, topic: str, listener: Any) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("error", "level", "traceback"),
    [
        (BackendUnavailable("backend down"), logging.WARNING, False),
        (RuntimeError("bug in the backend"), logging.ERROR, True),
    ],
    ids=["outage", "bug"],
)
async def test_a_failed_unsubscribe_has_a_traceback_only_when_unexpected(
    caplog: pytest.LogCaptureFixture, error: Exception, level: int, traceback: bool
) -> None:
    async with ConnectionManager(_UnsubscribeFails(error)) as manager:
        async with connect(manager) as client:
            await client.subscribe("t")
            await client.unsubscribe("t")
    record = line(caplog, "unsubscribe_failed")
    assert (record.name, record.levelno, record.budget_ws_topic) == ("budget_ws.topics", level, "t")
    assert bool(record.exc_info) is traceback


async def test_the_apps_hooks_that_crash_are_errors_with_their_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def crash(*args: Any) -> Any:
        raise RuntimeError("bug in the app")

    manager = ConnectionManager(authorize=crash, on_disconnect=crash)

    @manager.on(Noted)
    async def noted(message: ClientMessage[Noted]) -> None:
        raise RuntimeError("bug in the handler")

    async with manager:
        async with connect(manager) as client:
            connection_id = (await client.receive())["connection_id"]
            assert (await client.subscribe("t"))["code"] == "forbidden"
            await client.send_event(Noted(text="hi"))
            while (await client.receive()).get("code") != "handler_error":
                pass
    async with ConnectionManager(on_connect=crash) as manager, connect(manager) as client:
        other_id = (await client.receive())["connection_id"]
        assert (await closed_with(client)).code == CloseCode.INTERNAL_ERROR
    for event, connection in [
        ("on_connect_failed", other_id),
        ("on_disconnect_failed", connection_id),
        ("authorize_failed", connection_id),
        ("handler_failed", connection_id),
    ]:
        record = line(caplog, event)
        assert (record.name, record.levelno) == ("budget_ws.manager", logging.ERROR)
        assert record.exc_info is not None
        assert record.budget_ws_connection_id == connection
    authorize = line(caplog, "authorize_failed")
    assert (authorize.budget_ws_topic, authorize.budget_ws_action) == ("t", "subscribe")
    handler = line(caplog, "handler_failed")
    assert (handler.budget_ws_client_event, handler.budget_ws_topic) == ("test_logging_noted", None)


# Handshakes ------------------------------------------------------------------------------

SECRETS = [
    (b"cookie", b"session=s3cret-cookie"),
    (b"authorization", b"Bearer s3cret-token"),
]


async def handshake(
    app: WebSocketApp,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    subprotocols: tuple[str, ...] = ("budget-ws.v1",),
) -> list[dict[str, Any]]:
    """Run one handshake in-process against a server with HTTP refusals; what was sent."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {
        "type": "websocket",
        "path": "/ws",
        "query_string": b"token=s3cret-query",
        "headers": [(b"host", b"app.example"), *SECRETS, *(headers or [])],
        "subprotocols": list(subprotocols),
        "client": ("203.0.113.7", 50123),
        "extensions": {"websocket.http.response": {}},
    }
    await app(scope, receive, send)
    return sent


def refuse(handshake: Handshake) -> None:
    raise HandshakeRejected("log in first", status=401, close_code=4003)


def no_topics(handshake: Handshake, principal: Any) -> list[str]:
    raise HandshakeRejected("no budget here", status=404)


@pytest.mark.parametrize(
    ("options", "request_options", "refusal", "answer", "status", "close_code", "reason"),
    [
        ({}, {"subprotocols": ()}, "subprotocol", "http", 400, 1002, "subprotocol"),
        (
            {},
            {"headers": [(b"origin", b"http://evil.example")]},
            "origin",
            "close",
            403,
            1008,
            "origin http://evil.example not allowed",
        ),
        ({"authenticate": refuse}, {}, "authentication", "http", 401, 4003, "log in first"),
        (
            {"compatibility": Compatibility(topics=no_topics)},
            {"subprotocols": ()},
            "topics",
            "http",
            404,
            1008,
            "no budget here",
        ),
    ],
    ids=["subprotocol", "origin", "authentication", "topics"],
)
async def test_a_refused_handshake_is_one_info_line_without_secrets(
    caplog: pytest.LogCaptureFixture,
    options: dict[str, Any],
    request_options: dict[str, Any],
    refusal: str,
    answer: str,
    status: int,
    close_code: int,
    reason: str,
) -> None:
    await handshake(WebSocketApp(ConnectionManager(), **options), **request_options)
    record = line(caplog, "handshake_refused")
    assert (record.name, record.levelno, record.exc_info) == (
        "budget_ws.adapters",
        logging.INFO,
        None,
    )
    assert fields(record) == {
        "budget_ws_event": "handshake_refused",
        "budget_ws_refusal": refusal,
        "budget_ws_answer": answer,
        "budget_ws_status": status,
        "budget_ws_close_code": close_code,
        "budget_ws_reason": record.budget_ws_reason,
        "budget_ws_client": "203.0.113.7:50123",
        "budget_ws_path": "/ws",
    }
    assert reason in record.budget_ws_reason
    assert record.getMessage().startswith(
        f"budget_ws: handshake from 203.0.113.7:50123 refused ({refusal})"
    )
    assert "s3cret" not in caplog.text
    assert all("s3cret" not in str(value) for value in fields(record).values())


async def test_a_crashing_authenticate_is_an_error_with_its_traceback_then_a_refusal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def authenticate(handshake: Handshake) -> Any:
        raise RuntimeError("bug in authenticate")

    await handshake(WebSocketApp(ConnectionManager(), authenticate=authenticate))
    crash = line(caplog, "authenticate_failed")
    assert (crash.name, crash.levelno) == ("budget_ws.adapters", logging.ERROR)
    assert crash.exc_info is not None
    assert (crash.budget_ws_client, crash.budget_ws_path) == ("203.0.113.7:50123", "/ws")
    refused = line(caplog, "handshake_refused")
    assert (refused.budget_ws_refusal, refused.budget_ws_status) == ("authentication", 403)
    assert refused.exc_info is None


async def test_a_crashing_topics_hook_is_an_error_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def topics(handshake: Handshake, principal: Any) -> list[str]:
        raise RuntimeError("bug in the hook")

    app = WebSocketApp(ConnectionManager(), compatibility=Compatibility(topics=topics))
    await handshake(app, subprotocols=())
    crash = line(caplog, "topics_hook_failed")
    assert (crash.name, crash.levelno) == ("budget_ws.adapters", logging.ERROR)
    assert crash.exc_info is not None
    assert line(caplog, "handshake_refused").budget_ws_status == 500


async def test_a_manager_that_is_not_running_is_one_error_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent = await handshake(WebSocketApp(ConnectionManager()))
    assert sent[-1] == {"type": "websocket.close", "code": 1011, "reason": "server not ready"}
    record = line(caplog, "manager_not_running")
    assert (record.name, record.levelno, record.exc_info) == (
        "budget_ws.adapters",
        logging.ERROR,
        None,
    )


# Backends and background tasks -----------------------------------------------------------


async def test_a_failing_listener_of_the_memory_backend_is_an_error_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(RecordingListener):
        def deliver(self, topic: str, position: Any, payload: bytes) -> None:
            raise RuntimeError("broken listener")

    async with MemoryBackend() as backend:
        await backend.subscribe("t", Broken())
        await backend.publish("t", b"1")
    record = line(caplog, "listener_failed")
    assert (record.name, record.levelno) == ("budget_ws.backend.memory", logging.ERROR)
    assert record.exc_info is not None
    assert record.budget_ws_topic == "t"


async def test_a_failing_background_task_is_an_error_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from budget_ws._runtime import BackgroundTask  # what runs the heartbeats

    async def broken() -> None:
        raise RuntimeError("bug in the task")

    task = BackgroundTask(broken, "test_logging task")
    task.start()
    with anyio.fail_after(5):
        await task.stop()
    record = line(caplog, "task_failed")
    assert (record.name, record.levelno) == ("budget_ws.runtime", logging.ERROR)
    assert record.exc_info is not None
    assert record.budget_ws_task == "test_logging task"


# The docs' JSON formatter ----------------------------------------------------------------


def documented_formatter() -> type[logging.Formatter]:
    """The formatter class of the docs page's stdlib-only JSON example, run as written."""
    page = LOGGING_PAGE.read_text()
    [code] = re.findall(r'```python title="json_logs.py"\n(.*?)```', page, re.DOTALL)
    namespace: dict[str, Any] = {}
    exec(compile(code, str(LOGGING_PAGE), "exec"), namespace)
    formatter: type[logging.Formatter] = namespace["JSONFormatter"]
    return formatter


async def test_the_documented_json_formatter_emits_every_field(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with ConnectionManager(limits=Limits(max_frame_bytes=100)) as manager:
        async with connect(manager) as client:
            await client.send_raw("x" * 101)
            await closed_with(client)
    record = line(caplog, "frame_too_big")
    document = json.loads(documented_formatter()().format(record))
    assert document["logger"] == "budget_ws.connection"
    assert document["level"] == "INFO"
    assert document["message"] == record.getMessage()
    assert {key: document[key] for key in fields(record)} == fields(record)
    crash = logging.LogRecord("budget_ws.manager", logging.ERROR, "p", 1, "m", (), None)
    try:
        raise RuntimeError("bug")
    except RuntimeError:
        crash.exc_info = sys.exc_info()
    assert "RuntimeError: bug" in json.loads(documented_formatter()().format(crash))["traceback"]
