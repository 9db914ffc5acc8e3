"""The plain ASGI adapter over a real socket, with a real WebSocket client: under uvicorn,
and the same ``WebSocketApp`` on the native server (``serve``'s ``native`` parameter)."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Close

from budget_ws import (
    ClientMessage,
    ConnectionManager,
    Event,
    Handshake,
    HandshakeRejected,
    MemoryBackend,
)
from budget_ws import ConnectionClosed as BudgetConnectionClosed
from budget_ws.adapters import WebSocketApp
from budget_ws.adapters.asgi import ASGITransport
from budget_ws.protocol import encode_client_event

pytestmark = pytest.mark.anyio

PROTOCOL = "budget-ws.v1"


class ArticleUpdated(Event, name="test_asgi_article_updated", register=False):
    id: int
    title: str


async def frames(socket: ClientConnection, count: int) -> list[dict[str, Any]]:
    received: list[dict[str, Any]] = []
    while len(received) < count:
        message = await socket.recv()
        received.extend(json.loads(line) for line in str(message).split("\n"))
    return received


async def test_subscribe_and_receive_over_a_real_socket(serve: Any) -> None:
    manager = ConnectionManager()
    async with serve(WebSocketApp(manager)) as address:
        async with connect(f"ws://{address}/ws", subprotocols=[PROTOCOL]) as socket:  # type: ignore[list-item]
            assert socket.subprotocol == PROTOCOL
            [welcome] = await frames(socket, 1)
            assert welcome["op"] == "welcome"
            await socket.send('{"op": "subscribe", "topic": "budget:1", "id": 1}')
            [subscribed] = await frames(socket, 1)
            assert subscribed["recovered"] is False
            await manager.publish(ArticleUpdated(id=7, title="Rent"), topic="budget:1")
            [event] = await frames(socket, 1)
            assert event["event"] == "test_asgi_article_updated"
            assert event["data"] == {"id": 7, "title": "Rent"}
            assert event["offset"] == 1


async def test_garbage_before_subscribing_gets_an_error_frame(serve: Any) -> None:
    manager = ConnectionManager()
    async with serve(WebSocketApp(manager)) as address:
        async with connect(f"ws://{address}/ws", subprotocols=[PROTOCOL]) as socket:  # type: ignore[list-item]
            await frames(socket, 1)
            await socket.send(b"\x00\xff garbage")
            [error] = await frames(socket, 1)
            assert (error["op"], error["code"]) == ("error", "bad_frame")
            await socket.send('{"op": "subscribe", "topic": "t", "id": 2}')
            [subscribed] = await frames(socket, 1)
            assert subscribed["op"] == "subscribed"


@pytest.mark.parametrize(
    ("kwargs", "status", "reason"),
    [
        ({"subprotocols": None}, 400, "subprotocol budget-ws.v1 required"),
        ({"subprotocols": ["other"]}, 400, "subprotocol budget-ws.v1 required"),
    ],
)
async def test_refused_handshakes_get_an_http_answer(
    serve: Any, kwargs: dict[str, Any], status: int, reason: str
) -> None:
    manager = ConnectionManager()
    options: dict[str, Any] = {"subprotocols": [PROTOCOL], **kwargs}
    async with serve(WebSocketApp(manager)) as address:
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"ws://{address}/ws", **options):
                pass
        response = info.value.response
        assert response.status_code == status
        assert response.body.decode().strip() == reason
        assert manager.stats().connections == 0


async def refusal(address: str, origin: str) -> Close:
    """The close frame a browser at ``origin`` gets when its WebSocket is refused."""
    async with connect(
        f"ws://{address}/ws",
        subprotocols=[PROTOCOL],  # type: ignore[list-item]
        origin=origin,  # type: ignore[arg-type]
    ) as socket:
        with pytest.raises(ConnectionClosed) as info:
            await socket.recv()
    assert info.value.rcvd is not None
    return info.value.rcvd


async def test_browsers_are_refused_with_a_close_code_they_can_see(serve: Any) -> None:
    def authenticate(handshake: Handshake) -> str:
        raise HandshakeRejected("log in first", close_code=4003)

    manager = ConnectionManager()
    async with serve(WebSocketApp(manager)) as address:
        close = await refusal(address, "http://evil.example")
        assert (close.code, close.reason) == (1008, "origin http://evil.example not allowed")
    assert manager.stats().connections == 0
    other = ConnectionManager()
    async with serve(WebSocketApp(other, authenticate=authenticate)) as address:
        close = await refusal(address, f"http://{address}")
        assert (close.code, close.reason) == (4003, "log in first")


@pytest.mark.parametrize("origin", ["http://[", "https://a]b", "http://" + "x" * 300])
async def test_a_malformed_or_huge_origin_gets_the_documented_refusal(
    serve: Any, origin: str
) -> None:
    manager = ConnectionManager()
    async with serve(WebSocketApp(manager)) as address:
        close = await refusal(address, origin)
    assert close.code == 1008
    assert close.reason.startswith("origin ")
    assert close.reason.endswith(" not allowed")
    assert len(close.reason.encode()) <= 123
    assert manager.stats().connections == 0


async def test_a_long_refusal_reason_is_cut_to_fit_a_close_frame(serve: Any) -> None:
    def authenticate(handshake: Handshake) -> str:
        raise HandshakeRejected("é" * 200, close_code=4003)

    manager = ConnectionManager()
    async with serve(WebSocketApp(manager, authenticate=authenticate)) as address:
        close = await refusal(address, f"http://{address}")
    assert (close.code, close.reason) == (4003, "é" * 60 + "…")


async def test_a_connection_cut_off_by_the_server_is_closed_with_a_code_to_come_back(
    serve_uvicorn: Any,
) -> None:
    # An ASGI wrapper around the app: uvicorn only (tests/native/test_server.py cancels a
    # native connection's task instead).
    manager = ConnectionManager()
    inner = WebSocketApp(manager)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return await inner(scope, receive, send)
        # What a server going down without a graceful shutdown does to its tasks.
        with anyio.move_on_after(0.3):
            await inner(scope, receive, send)
        return None

    async with serve_uvicorn(app) as address:
        async with connect(f"ws://{address}/ws", subprotocols=[PROTOCOL]) as socket:  # type: ignore[list-item]
            await frames(socket, 1)
            with pytest.raises(ConnectionClosed) as info:
                await socket.recv()
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1012


async def test_same_origin_pages_and_listed_origins_are_allowed(serve: Any) -> None:
    manager = ConnectionManager()
    app = WebSocketApp(manager, allowed_origins=["https://app.example"])
    async with serve(app) as address:
        for origin in ["https://app.example", "https://APP.example:443"]:
            async with connect(
                f"ws://{address}/ws",
                subprotocols=[PROTOCOL],  # type: ignore[list-item]
                origin=origin,  # type: ignore[arg-type]
            ) as socket:
                assert (await frames(socket, 1))[0]["op"] == "welcome"
        async with connect(
            f"ws://{address}/ws",
            subprotocols=[PROTOCOL],  # type: ignore[list-item]
            origin=f"http://{address}",  # type: ignore[arg-type]
        ) as refused:
            with pytest.raises(ConnectionClosed):
                await refused.recv()
    async with serve(WebSocketApp(ConnectionManager())) as address:
        async with connect(
            f"ws://{address}/ws",
            subprotocols=[PROTOCOL],  # type: ignore[list-item]
            origin=f"http://{address}",  # type: ignore[arg-type]
        ) as socket:
            assert (await frames(socket, 1))[0]["op"] == "welcome"


async def test_authenticate_gives_the_principal_to_authorize(serve: Any) -> None:
    seen: list[Handshake] = []

    async def authenticate(handshake: Handshake) -> str:
        seen.append(handshake)
        user = handshake.cookies.get("session")
        if user is None:
            raise HandshakeRejected("log in first")
        return user

    def authorize(principal: Any, topic: str, action: str) -> bool:
        return topic == f"user:{principal}"

    manager = ConnectionManager(authorize=authorize)
    async with serve(WebSocketApp(manager, authenticate=authenticate)) as address:
        url = f"ws://{address}/ws?tab=2"
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, subprotocols=[PROTOCOL]):  # type: ignore[list-item]
                pass
        assert info.value.response.status_code == 403
        assert info.value.response.body == b"log in first\n"

        headers = {"Cookie": "session=ann; theme=dark"}
        async with connect(
            url,
            subprotocols=[PROTOCOL],  # type: ignore[list-item]
            additional_headers=headers,
        ) as socket:
            await frames(socket, 1)
            await socket.send('{"op": "subscribe", "topic": "user:bob", "id": 1}')
            assert (await frames(socket, 1))[0]["code"] == "forbidden"
            await socket.send('{"op": "subscribe", "topic": "user:ann", "id": 2}')
            assert (await frames(socket, 1))[0]["op"] == "subscribed"
    handshake = seen[-1]
    assert handshake.query == {"tab": "2"}
    assert handshake.cookies == {"session": "ann", "theme": "dark"}
    assert handshake.path == "/ws"
    assert handshake.client is not None
    assert handshake.client[0] == "127.0.0.1"
    assert handshake.subprotocols == (PROTOCOL,)


async def test_a_crashing_authenticate_refuses_without_details(serve: Any) -> None:
    def authenticate(handshake: Handshake) -> None:
        raise KeyError("secret detail")

    app = WebSocketApp(ConnectionManager(), authenticate=authenticate)
    async with serve(app) as address:
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"ws://{address}/ws", subprotocols=[PROTOCOL]):  # type: ignore[list-item]
                pass
        assert info.value.response.status_code == 403
        assert info.value.response.body == b"authentication failed\n"


async def test_plain_http_requests_are_told_to_upgrade(serve: Any) -> None:
    import httpx

    async with serve(WebSocketApp(ConnectionManager())) as address:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://{address}/ws")
    assert response.status_code == 426
    assert "budget-ws.v1" in response.text


async def test_server_shutdown_closes_clients_with_1012(serve: Any) -> None:
    manager = ConnectionManager()
    async with serve(WebSocketApp(manager)) as address:
        socket = await connect(f"ws://{address}/ws", subprotocols=[PROTOCOL])  # type: ignore[list-item]
        await frames(socket, 1)
        assert manager.running
    with pytest.raises(ConnectionClosed) as info:
        await socket.recv()
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1012
    assert not manager.running, "the lifespan closed the manager"


async def test_a_manager_that_was_never_started_closes_with_1011(serve: Any) -> None:
    async with serve(WebSocketApp(ConnectionManager()), lifespan="off") as address:
        async with connect(f"ws://{address}/ws", subprotocols=[PROTOCOL]) as socket:  # type: ignore[list-item]
            with pytest.raises(ConnectionClosed) as info:
                await socket.recv()
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (1011, "server not ready")


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_without_the_denial_extension_a_refusal_is_a_close_with_a_reason() -> None:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {
        "type": "websocket",
        "path": "/ws",
        "headers": [(b"host", b"a.example"), (b"origin", b"http://evil.example")],
        "subprotocols": ["budget-ws.v1"],
    }
    await WebSocketApp(ConnectionManager())(scope, receive, send)
    assert sent == [
        {"type": "websocket.accept", "subprotocol": "budget-ws.v1"},
        {
            "type": "websocket.close",
            "code": 1008,
            "reason": "origin http://evil.example not allowed",
        },
    ]


async def test_a_client_reconnecting_in_a_tight_loop_harms_nobody(serve: Any) -> None:
    manager = ConnectionManager()
    async with serve(WebSocketApp(manager)) as address:
        url = f"ws://{address}/ws"
        async with connect(url, subprotocols=[PROTOCOL]) as steady:  # type: ignore[list-item]
            await frames(steady, 1)
            await steady.send('{"op": "subscribe", "topic": "t", "id": 1}')
            await frames(steady, 1)
            for _ in range(100):
                async with connect(url, subprotocols=[PROTOCOL]) as hasty:  # type: ignore[list-item]
                    await hasty.send('{"op": "subscribe", "topic": "t", "id": 1}')
            await manager.publish(ArticleUpdated(id=1, title="still here"), topic="t")
            [event] = await frames(steady, 1)
            assert event["data"]["title"] == "still here"
            stats = manager.stats()
            assert stats.topics == 1
        assert manager.stats().connections <= 1


class Hold(Event, name="test_asgi_hold", register=False):
    pass


async def test_a_client_gone_while_the_server_writes_is_not_a_failure(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    manager = ConnectionManager()
    holding, release = anyio.Event(), anyio.Event()

    @manager.on(Hold)
    async def hold(message: ClientMessage[Hold]) -> None:
        holding.set()
        await release.wait()

    async with serve(WebSocketApp(manager)) as address:
        async with connect(f"ws://{address}/ws", subprotocols=[PROTOCOL]) as socket:  # type: ignore[list-item]
            await frames(socket, 1)
            await socket.send('{"op": "subscribe", "topic": "t", "id": 1}')
            await frames(socket, 1)
            [connection] = manager.connections.values()
            await socket.send(encode_client_event(Hold(), None))
            with anyio.fail_after(5):
                await holding.wait()  # the server's reader is busy and misses the close
        # The closing handshake is over, so the server's next write meets a closed socket
        # (uvicorn raises its ClientDisconnected, an OSError).
        await manager.publish(ArticleUpdated(id=1, title="too late"), topic="t")
        with anyio.fail_after(5):
            await connection.wait_closed()
        release.set()
    assert "sending to connection" not in caplog.text, "a vanished client is not a failure"


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_the_transport_turns_a_reset_socket_into_connection_closed() -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "websocket.disconnect", "code": 1001}

    async def send(message: Any) -> None:
        raise ConnectionResetError("reset by peer")

    transport = ASGITransport(receive, send)
    with pytest.raises(BudgetConnectionClosed) as info:
        await transport.send_text("{}")
    assert (info.value.code, info.value.reason) == (1006, "reset by peer")
    with pytest.raises(BudgetConnectionClosed) as info:
        await transport.receive()
    assert info.value.code == 1001
    await transport.close()  # closing a broken socket is not an error


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_send_after_the_server_closed_on_its_own_is_connection_closed() -> None:
    # uvicorn's wsproto, once its keepalive timeout has closed the WebSocket, refuses the
    # next send with a RuntimeError: the connection is gone, not failing.
    async def receive() -> dict[str, Any]:
        return {"type": "websocket.disconnect", "code": 1011}

    async def send(message: Any) -> None:
        raise RuntimeError(
            f"Unexpected ASGI message '{message['type']}', after sending 'websocket.close'."
        )

    transport = ASGITransport(receive, send)
    with pytest.raises(BudgetConnectionClosed) as info:
        await transport.send_text("{}")
    assert info.value.code == 1006
    assert "after sending 'websocket.close'" in info.value.reason


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_client_gone_before_the_handshake_is_left_alone() -> None:
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.disconnect", "code": 1006}

    async def send(message: Any) -> None:
        sent.append(message)

    manager = ConnectionManager()
    async with manager:
        scope = {"type": "websocket", "path": "/ws", "headers": [], "subprotocols": []}
        await WebSocketApp(manager)(scope, receive, send)
        assert sent == []
        assert manager.stats().connections == 0


class _BackendDown(MemoryBackend):
    async def __aenter__(self) -> _BackendDown:
        raise ConnectionError("backend down")


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_the_lifespan_reports_a_manager_that_cannot_start() -> None:
    sent: list[Any] = []
    messages = iter([{"type": "lifespan.startup"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: Any) -> None:
        sent.append(message)

    await WebSocketApp(ConnectionManager(_BackendDown()))({"type": "lifespan"}, receive, send)
    assert sent == [{"type": "lifespan.startup.failed", "message": "backend down"}]


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_lifespan_that_does_not_start_up_is_ignored() -> None:
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.shutdown"}

    async def send(message: Any) -> None:
        sent.append(message)

    manager = ConnectionManager()
    await WebSocketApp(manager)({"type": "lifespan"}, receive, send)
    assert sent == []
    assert not manager.running


def test_the_app_s_settings_are_its_gatekeeper_s() -> None:
    manager = ConnectionManager()

    def authenticate(handshake: Handshake) -> str:
        return "ann"

    app = WebSocketApp(
        manager,
        authenticate=authenticate,
        allowed_origins=["https://a.example"],
        require_subprotocol=False,
    )
    assert app.manager is manager is app.gatekeeper.manager
    assert app.authenticate is authenticate
    assert app.allowed_origins == ["https://a.example"]
    assert app.require_subprotocol is False
    assert app.compatibility is None
    with pytest.raises(AttributeError):
        app.manager = ConnectionManager()  # type: ignore[misc]
