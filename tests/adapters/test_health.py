"""Health probes over a real server: plain ASGI, Starlette and FastAPI, and a lost Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from tests.backends.conftest import RedisServer
from websockets.asyncio.client import connect as ws_connect

from budget_ws import ConnectionClosed, ConnectionManager, Event
from budget_ws.adapters import HealthApp, WebSocketApp
from budget_ws.adapters.asgi import Receive, Scope, Send
from budget_ws.adapters.fastapi import create_router, health_router
from budget_ws.adapters.fastapi import lifespan as fastapi_lifespan
from budget_ws.adapters.starlette import health_routes, lifespan, websocket_route
from budget_ws.backends.redis import RedisBackend
from budget_ws.testing import MemoryClient, connect

pytestmark = pytest.mark.anyio

PROTOCOL = "budget-ws.v1"


class Tick(Event, name="test_health_adapter_tick", register=False):
    number: int


def plain_asgi_app(manager: ConnectionManager) -> Any:
    """Probes beside the WebSocket endpoint, which also runs the manager's lifespan."""
    ready = HealthApp(manager, check="ready")
    live = HealthApp(manager, check="live")
    websocket = WebSocketApp(manager)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if path == "/health/ready":
            await ready(scope, receive, send)
        elif path == "/health/live":
            await live(scope, receive, send)
        else:
            await websocket(scope, receive, send)

    return app


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        yield client


async def test_a_running_manager_is_ready_and_live(serve: Any, http: httpx.AsyncClient) -> None:
    manager = ConnectionManager()
    async with serve(plain_asgi_app(manager)) as address:
        ready = await http.get(f"http://{address}/health/ready")
        live = await http.get(f"http://{address}/health/live")
    for response in (ready, live):
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["content-length"] == str(len(response.content))
        assert response.json() == {
            "live": True,
            "ready": True,
            "reasons": [],
            "state": "running",
            "connections": 0,
            "topics": 0,
            "backend": "MemoryBackend(history_size=1000, history_ttl=300.0)",
            "backend_status": {"connected": True, "topics": 0},
        }


async def test_head_answers_without_a_body_and_other_methods_get_405(
    serve: Any, http: httpx.AsyncClient
) -> None:
    async with serve(plain_asgi_app(ConnectionManager())) as address:
        url = f"http://{address}/health/ready"
        head = await http.head(url)
        get = await http.get(url)
        post = await http.post(url, content=b"{}")
        delete = await http.delete(f"http://{address}/health/live")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(get.content))
    assert head.headers["cache-control"] == "no-store"
    for refused in (post, delete):
        assert refused.status_code == 405
        assert refused.headers["allow"] == "GET, HEAD"
        assert refused.headers["cache-control"] == "no-store"


async def test_a_manager_that_never_started_is_live_but_not_ready(
    serve: Any, http: httpx.AsyncClient
) -> None:
    manager = ConnectionManager()
    async with serve(plain_asgi_app(manager), lifespan="off") as address:
        ready = await http.get(f"http://{address}/health/ready")
        head = await http.head(f"http://{address}/health/ready")
        live = await http.get(f"http://{address}/health/live")
    assert ready.status_code == 503
    assert head.status_code == 503
    assert head.content == b""
    assert ready.headers["cache-control"] == "no-store"
    body = ready.json()
    assert (body["ready"], body["live"]) == (False, True)
    assert body["reasons"]
    assert live.status_code == 200


async def stall(manager: ConnectionManager, client: MemoryClient) -> None:
    """Leave a message the client does not read waiting in the connection's writer."""
    await client.subscribe("t")
    for number in range(2):  # one message fills the client's buffer, one cannot be sent
        await manager.publish(Tick(number=number), topic="t")
        await anyio.wait_all_tasks_blocked()


async def test_readiness_fails_as_soon_as_draining_begins(
    serve: Any, http: httpx.AsyncClient
) -> None:
    # The test runs the manager, in uvicorn's event loop: a stalled in-memory client
    # keeps it draining while the probes are called over HTTP.
    manager = ConnectionManager(shutdown_timeout=30)
    async with serve(plain_asgi_app(manager), lifespan="off") as address:
        await manager.start()
        async with connect(manager, send_buffer=1) as stalled:
            await stall(manager, stalled)
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(manager.aclose)
                await anyio.wait_all_tasks_blocked()
                ready = await http.get(f"http://{address}/health/ready")
                live = await http.get(f"http://{address}/health/live")
                with pytest.raises(ConnectionClosed):
                    while True:
                        await stalled.receive()
        assert ready.status_code == 503
        assert ready.json()["reasons"] == ["shutting down (draining)"]
        assert ready.json()["state"] == "closing"
        assert ready.json()["connections"] == 1
        assert live.status_code == 200
        assert (await http.get(f"http://{address}/health/ready")).status_code == 503


async def test_a_closed_manager_fails_both_probes(serve: Any, http: httpx.AsyncClient) -> None:
    manager = ConnectionManager()
    async with serve(plain_asgi_app(manager), lifespan="off") as address:
        await manager.start()
        await manager.aclose()
        ready = await http.get(f"http://{address}/health/ready")
        live = await http.get(f"http://{address}/health/live")
    assert (ready.status_code, live.status_code) == (503, 503)
    assert live.json()["reasons"] == ["manager closed"]
    assert live.json()["state"] == "closed"


async def test_starlette_health_routes_beside_the_websocket_route(
    serve: Any, http: httpx.AsyncClient
) -> None:
    manager = ConnectionManager()
    app = Starlette(
        routes=[
            websocket_route(manager, "/ws"),
            *health_routes(manager),
            *health_routes(manager, "/k8s/ready", live_path="/k8s/live"),
        ],
        lifespan=lifespan(manager),
    )
    async with serve(app) as address:
        async with ws_connect(f"ws://{address}/ws", subprotocols=[PROTOCOL]) as socket:  # type: ignore[list-item]
            assert json.loads(await socket.recv())["op"] == "welcome"
            for path in ("/health/ready", "/health/live", "/k8s/ready", "/k8s/live"):
                response = await http.get(f"http://{address}{path}")
                assert response.status_code == 200, path
                assert response.json()["connections"] == 1
                assert response.headers["cache-control"] == "no-store"
            head = await http.head(f"http://{address}/health/ready")
            assert (head.status_code, head.content) == (200, b"")
            post = await http.post(f"http://{address}/health/live")
            assert post.status_code == 405
    assert [route.name for route in health_routes(manager)] == ["budget_ws_ready", "budget_ws_live"]


async def test_fastapi_health_router_beside_the_websocket_router(
    serve: Any, http: httpx.AsyncClient
) -> None:
    manager = ConnectionManager()
    app = FastAPI(lifespan=fastapi_lifespan(manager))
    app.include_router(create_router(manager))
    app.include_router(health_router(manager))
    app.include_router(health_router(manager, ready_path="/readyz", live_path="/livez"))
    async with serve(app) as address:
        async with ws_connect(f"ws://{address}/ws", subprotocols=[PROTOCOL]) as socket:  # type: ignore[list-item]
            assert json.loads(await socket.recv())["op"] == "welcome"
            for path in ("/health/ready", "/health/live", "/readyz", "/livez"):
                response = await http.get(f"http://{address}{path}")
                assert response.status_code == 200, path
                assert response.json()["ready"] is True
            head = await http.head(f"http://{address}/readyz")
            assert (head.status_code, head.content) == (200, b"")
            assert (await http.put(f"http://{address}/livez")).status_code == 405
            schema = (await http.get(f"http://{address}/openapi.json")).json()
    assert not any(path.startswith(("/health", "/readyz", "/livez")) for path in schema["paths"])


async def test_other_scopes_are_left_alone() -> None:
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("nothing to receive")

    async def send(message: Any) -> None:
        sent.append(message)

    for scope_type in ("lifespan", "websocket"):
        await HealthApp(ConnectionManager())({"type": scope_type}, receive, send)
    assert sent == []


def test_check_must_name_a_probe() -> None:
    with pytest.raises(ValueError, match='takes "ready" or "live"'):
        HealthApp(ConnectionManager(), check="alive")  # type: ignore[arg-type]


PASSWORD = "s3cret-health"


@pytest.fixture
def password_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, with a password that must never reach a body."""
    server = RedisServer(password=PASSWORD)
    server.start()
    yield server
    server.stop()


async def probe_until(
    http: httpx.AsyncClient, url: str, status: int, within: float = 15
) -> httpx.Response:
    """Call the probe until it answers ``status``; fail after ``within`` seconds."""
    with anyio.fail_after(within):
        while True:
            response = await http.get(url)
            if response.status_code == status:
                return response
            await anyio.sleep(0.05)


@pytest.mark.parametrize("ws_implementation", ["websockets-sansio"])  # HTTP only
async def test_readiness_follows_the_redis_connection(
    serve: Any, http: httpx.AsyncClient, password_redis: RedisServer
) -> None:
    backend = RedisBackend(
        password_redis.url,
        key_prefix=f"test-{uuid.uuid4().hex[:12]}",
        operation_timeout=2,
        health_check_interval=1,
        reconnect_delay=(0.05, 0.2),
    )
    manager = ConnectionManager(backend)
    port = password_redis.port
    async with serve(plain_asgi_app(manager)) as address:
        ready_url = f"http://{address}/health/ready"
        up = await http.get(ready_url)
        assert up.status_code == 200
        assert up.json()["backend_status"]["connected"] is True

        password_redis.stop()
        down = await probe_until(http, ready_url, 503)
        [reason] = down.json()["reasons"]
        assert reason == f"backend disconnected: {backend!r}"
        assert reason.startswith(f"backend disconnected: RedisBackend(redis://127.0.0.1:{port} ")
        assert down.json()["backend_status"]["connected"] is False
        live = await http.get(f"http://{address}/health/live")
        assert live.status_code == 200, "a lost Redis is no reason to restart the process"

        password_redis.start()
        back = await probe_until(http, ready_url, 200)
        assert back.json()["reasons"] == []
        assert back.json()["backend_status"]["reconnects"] >= 1
    for response in (up, down, live, back):
        assert PASSWORD not in response.text
