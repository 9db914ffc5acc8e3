"""Starlette: routes, lifespan and the client asset route, over a real server."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from websockets.asyncio.client import connect

from budget_ws import ConnectionManager, Event, __version__
from budget_ws.adapters import client_url
from budget_ws.adapters.starlette import client_route, lifespan, websocket_route

pytestmark = pytest.mark.anyio


class FactDeleted(Event, name="test_starlette_fact_deleted", register=False):
    id: int


def make_app(manager: ConnectionManager) -> Starlette:
    async def delete_fact(request: Request) -> JSONResponse:
        running: ConnectionManager = request.state.budget_ws_manager
        position = await running.publish(
            FactDeleted(id=int(request.path_params["id"])), topic="budget:1"
        )
        return JSONResponse({"offset": position.offset})

    return Starlette(
        routes=[
            websocket_route(manager, "/ws"),
            client_route("/budget-ws"),
            Route("/facts/{id}", delete_fact, methods=["DELETE"]),
        ],
        lifespan=lifespan(manager),
    )


async def test_a_request_handler_publishes_to_websocket_clients(serve: Any) -> None:
    manager = ConnectionManager()
    async with serve(make_app(manager)) as address:
        async with connect(f"ws://{address}/ws", subprotocols=["budget-ws.v1"]) as socket:  # type: ignore[list-item]
            await socket.recv()
            await socket.send('{"op": "subscribe", "topic": "budget:1", "id": 1}')
            await socket.recv()
            async with httpx.AsyncClient() as client:
                response = await client.delete(f"http://{address}/facts/5")
            assert response.json() == {"offset": 1}
            frame = json.loads(await socket.recv())
            assert (frame["event"], frame["data"], frame["offset"]) == (
                "test_starlette_fact_deleted",
                {"id": 5},
                1,
            )
    assert not manager.running


async def test_the_client_module_is_served_with_caching(serve: Any) -> None:
    async with serve(make_app(ConnectionManager())) as address:
        base = f"http://{address}"
        async with httpx.AsyncClient(base_url=base) as client:
            module = await client.get("/budget-ws/budget-ws.js")
            assert module.status_code == 200
            assert module.headers["content-type"] == "text/javascript; charset=utf-8"
            assert module.headers["cache-control"] == "no-cache"
            assert "export class BudgetWS" in module.text
            etag = module.headers["etag"]

            again = await client.get("/budget-ws/budget-ws.js", headers={"If-None-Match": etag})
            assert again.status_code == 304
            assert again.content == b""

            versioned = await client.get(client_url("/budget-ws"))
            assert versioned.status_code == 200
            assert "immutable" in versioned.headers["cache-control"]
            # The URL names the content, so a changed file gets a new URL, release or not.
            digest = hashlib.sha256(module.content).hexdigest()[:16]
            assert client_url() == f"/budget-ws/budget-ws.js?v={digest}"
            stale = await client.get(f"/budget-ws/budget-ws.js?v={__version__}")
            assert stale.headers["cache-control"] == "no-cache"

            types = await client.get("/budget-ws/budget-ws.d.ts")
            assert types.status_code == 200
            assert "BudgetWS" in types.text

            head = await client.head("/budget-ws/budget-ws.js")
            assert (head.status_code, head.content) == (200, b"")
            assert (await client.get("/budget-ws/secrets.py")).status_code == 404
            refused = await client.post("/budget-ws/budget-ws.js")
            assert (refused.status_code, refused.headers["allow"]) == (405, "GET, HEAD")
            other_query = await client.get("/budget-ws/budget-ws.js?nav=1")
            assert other_query.headers["cache-control"] == "no-cache"
