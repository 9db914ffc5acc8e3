"""The client's log lines: logger, level, ``budget_ws_event`` and fields, and no secrets.

What ``docs/reference/logging.md`` lists for the Python client, checked through the public
API against a scripted server (and a port nobody listens on).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.client.app import REGISTRY, Peer, ScriptedServer, Tick, wait_until
from websockets.datastructures import Headers
from websockets.http11 import Response

from budget_ws import ClientClosed, ErrorCode, Position, ServerProtocolError, SubscriptionRefused
from budget_ws.client import Client, EventReceived, connect
from budget_ws.protocol import encode_error, encode_event, position_frame

pytestmark = pytest.mark.anyio

FAST: dict[str, Any] = {"registry": REGISTRY, "min_delay": 0.01, "max_delay": 0.05}
LOGGER = "budget_ws.client"


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    async with ScriptedServer() as running:
        yield running


@pytest.fixture
def caplog(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every level of the client's logger."""
    caplog.set_level(logging.DEBUG, LOGGER)
    return caplog


async def start(
    server: ScriptedServer, url: str | None = None, **options: Any
) -> tuple[Client, Peer]:
    """A started client and the server's side of its connection."""
    client = connect(url or server.url, **{**FAST, **options})
    starting = asyncio.create_task(client.start())
    peer = await server.accept()
    await peer.welcome()
    await asyncio.wait_for(starting, 5)
    return client, peer


def lines(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [
        record for record in caplog.records if getattr(record, "budget_ws_event", None) == event
    ]


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's ``budget_ws_`` fields, without the prefix."""
    return {
        key.removeprefix("budget_ws_"): value
        for key, value in vars(record).items()
        if key.startswith("budget_ws_")
    }


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_every_client_line_is_structured(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    client, peer = await start(server)
    async with client:
        await peer.close(1012, "restart")
        await (await server.accept()).welcome()
        await wait_until(lambda: len(lines(caplog, "client_connected")) == 2)
    assert caplog.records
    for record in caplog.records:
        assert record.name == LOGGER
        assert record.getMessage().startswith("budget_ws: ")
        assert isinstance(getattr(record, "budget_ws_event", None), str)


async def test_a_connection_refused_is_one_line_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"
    client = connect(url, max_attempts=3, **FAST)
    with pytest.raises(ClientClosed, match="gave up after 3 attempts"):
        await asyncio.wait_for(client.start(), 5)
    failed = lines(caplog, "client_connect_failed")
    # The third failure gives up (the app gets the error): no "reconnecting" line for it.
    assert [(record.levelno, fields(record)["attempt"]) for record in failed] == [
        (logging.INFO, 1),
        (logging.DEBUG, 2),
    ]
    for record in failed:
        line = fields(record)
        assert line["url"] == url
        assert isinstance(line["error"], str)
        assert line["error"]
        assert isinstance(line["retry_in"], float)
        assert 0 <= line["retry_in"] <= 0.05
        assert record.exc_info is None
    assert "Traceback" not in caplog.text


async def test_a_handshake_refused_with_a_status_worth_retrying(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusals = [503]

    def process_request(connection: Any, request: Any) -> Response | None:
        return Response(refusals.pop(), "no", Headers(), b"later") if refusals else None

    async with ScriptedServer(process_request=process_request) as server:
        client, _ = await start(server)
        async with client:
            pass
    [failed] = lines(caplog, "client_connect_failed")
    assert failed.levelno == logging.INFO
    assert failed.exc_info is None
    assert fields(failed)["error"] == "HTTP 503"
    assert fields(failed)["attempt"] == 1


async def test_a_reconnect_after_the_server_closes_with_1012(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    client, peer = await start(server)
    async with client:
        await peer.close(1012, "restart")
        await (await server.accept()).welcome()
        await wait_until(lambda: len(lines(caplog, "client_connected")) == 2)
    [closed] = lines(caplog, "client_disconnected")
    assert closed.levelno == logging.INFO
    assert closed.exc_info is None
    line = fields(closed)
    assert line.pop("retry_in") <= 0.05
    assert line == {
        "event": "client_disconnected",
        "url": server.url,
        "close_code": 1012,
        "close_reason": "restart",
        "attempt": 1,
    }
    connected = lines(caplog, "client_connected")
    assert {record.levelno for record in connected} == {logging.INFO}
    assert [fields(record)["url"] for record in connected] == [server.url] * 2
    assert all(fields(record)["connection_id"].startswith("peer-") for record in connected)


async def test_a_bad_server_frame_is_a_protocol_error(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    client, peer = await start(server)
    async with client:
        await peer.send("not json")
        with pytest.raises(ServerProtocolError):
            await asyncio.wait_for(client.__anext__(), 5)
    [error] = lines(caplog, "client_protocol_error")
    assert error.levelno == logging.WARNING
    assert error.exc_info is None
    line = fields(error)
    assert (line["url"], line["close_code"]) == (server.url, 1002)
    assert isinstance(line["error"], str)
    assert line["error"]
    assert not lines(caplog, "client_loop_failed")


async def test_a_handler_that_raises_is_logged_with_its_traceback(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    client, peer = await start(server)
    async with client:

        @client.on(Tick)
        async def broken(item: EventReceived) -> None:
            raise ZeroDivisionError("a bug in the app")

        await peer.send(encode_event(Tick(n=1)).decode())
        await wait_until(lambda: lines(caplog, "client_handler_failed"))
    [failed] = lines(caplog, "client_handler_failed")
    assert failed.levelno == logging.ERROR
    assert failed.exc_info is not None
    assert failed.exc_info[0] is ZeroDivisionError
    assert fields(failed) == {
        "event": "client_handler_failed",
        "handler": broken.__qualname__,
        "event_name": "client_test_tick",
        "topic": None,
    }


async def test_topic_lines(server: ScriptedServer, caplog: pytest.LogCaptureFixture) -> None:
    client, peer = await start(server)
    async with client:
        subscribing = asyncio.ensure_future(client.subscribe("t"))
        request = await peer.receive()
        await peer.subscribed(request, Position(0, "e"))
        await asyncio.wait_for(subscribing, 5)
        await peer.send(position_frame(encode_event(Tick(n=3)), "t", Position(3, "e")))
        await peer.send('{"event":"client_test_tick","data":{"n":"many"}}')
        refused = asyncio.ensure_future(client.subscribe("secret"))
        request = await peer.receive()
        await peer.send(encode_error(ErrorCode.FORBIDDEN, "not yours", request["id"]))
        with pytest.raises(SubscriptionRefused):
            await asyncio.wait_for(refused, 5)
        await wait_until(lambda: lines(caplog, "client_event_invalid"))
    [resync] = lines(caplog, "client_resync")
    assert resync.levelno == logging.INFO
    assert fields(resync) == {"event": "client_resync", "topic": "t", "cause": "gap"}
    [invalid] = lines(caplog, "client_event_invalid")
    assert invalid.levelno == logging.WARNING
    assert invalid.exc_info is None
    assert (fields(invalid)["event_name"], fields(invalid)["topic"]) == ("client_test_tick", None)
    assert "many" not in fields(invalid)["error"]  # the error, not the payload
    [refusal] = lines(caplog, "client_subscribe_refused")
    assert refusal.levelno == logging.INFO
    assert fields(refusal) == {
        "event": "client_subscribe_refused",
        "topic": "secret",
        "error_code": "forbidden",
        "error_message": "not yours",
    }


async def test_a_heartbeat_timeout(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = connect(server.url, heartbeat_slack=0.1, **FAST)
    starting = asyncio.create_task(client.start())
    peer = await server.accept()
    await peer.welcome(interval=0.05, timeout=0.05)
    await asyncio.wait_for(starting, 5)
    async with client:
        await wait_until(lambda: lines(caplog, "client_heartbeat_timeout"))
    [timeout] = lines(caplog, "client_heartbeat_timeout")
    assert timeout.levelno == logging.INFO
    line = fields(timeout)
    assert (line["url"], line["close_code"]) == (server.url, 4001)
    assert line["silence"] == pytest.approx(0.15)


SECRETS = ("let-me-in", "hunter2", "bearer-secret")


async def test_no_token_or_password_in_any_record(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"ws://alice:hunter2@127.0.0.1:{server.port}/ws?token=let-me-in"
    client, peer = await start(
        server, url, headers={"Authorization": "Bearer bearer-secret"}, query={"q": "let-me-in"}
    )
    async with client:
        await peer.close(1012, "restart")
        await (await server.accept()).welcome()
        await wait_until(lambda: len(lines(caplog, "client_connected")) == 2)
    # Failed attempts too: the same URL on a port nobody listens on.
    closed = f"ws://alice:hunter2@127.0.0.1:{free_port()}/ws?token=let-me-in"
    with pytest.raises(ClientClosed):
        await asyncio.wait_for(connect(closed, max_attempts=2, **FAST).start(), 5)
    events = {record.budget_ws_event for record in caplog.records}  # type: ignore[attr-defined]
    assert {"client_connected", "client_disconnected", "client_connect_failed"} <= events
    for record in caplog.records:
        text = record.getMessage() + repr(vars(record))
        for secret in SECRETS:
            assert secret not in text
        assert "alice" not in text
    assert fields(lines(caplog, "client_connected")[0])["url"] == server.url
