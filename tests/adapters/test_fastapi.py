"""FastAPI: the router, the manager dependency and the lifespan, over a real server."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from websockets.asyncio.client import connect

from budget_ws import ConnectionManager, Event, Handshake, ManagerClosed
from budget_ws.adapters.fastapi import Manager, create_router, current_manager, lifespan

pytestmark = pytest.mark.anyio


class FactCreated(Event, name="test_fastapi_fact_created", register=False):
    id: int
    amount: Decimal


class FactIn(BaseModel):
    amount: Decimal


def make_app(manager: ConnectionManager) -> FastAPI:
    def authenticate(handshake: Handshake) -> str:
        return handshake.query.get("user", "guest")

    app = FastAPI(lifespan=lifespan(manager))
    app.include_router(create_router(manager, authenticate=authenticate))

    @app.post("/budgets/{budget_id}/facts")
    async def create_fact(budget_id: int, fact: FactIn, manager: Manager) -> dict[str, int]:
        position = await manager.publish(
            FactCreated(id=1, amount=fact.amount), topic=f"budget:{budget_id}"
        )
        return {"offset": position.offset}

    return app


def ann_only(principal: Any, topic: str, action: str) -> bool:
    return principal == "ann"


async def test_route_handlers_get_the_manager_and_publish(serve: Any) -> None:
    manager = ConnectionManager(authorize=ann_only)
    async with serve(make_app(manager)) as address:
        url = f"ws://{address}/ws?user=ann"
        async with connect(url, subprotocols=["budget-ws.v1"]) as socket:  # type: ignore[list-item]
            await socket.recv()
            await socket.send('{"op": "subscribe", "topic": "budget:3", "id": 1}')
            assert json.loads(await socket.recv())["op"] == "subscribed"
            async with httpx.AsyncClient(base_url=f"http://{address}") as client:
                response = await client.post("/budgets/3/facts", json={"amount": "9.99"})
                assert response.json() == {"offset": 1}
                assert (await client.get("/budget-ws/budget-ws.js")).status_code == 200
            frame = json.loads(await socket.recv())
            assert frame["data"] == {"id": 1, "amount": "9.99"}

        guest = f"ws://{address}/ws"
        async with connect(guest, subprotocols=["budget-ws.v1"]) as socket:  # type: ignore[list-item]
            await socket.recv()
            await socket.send('{"op": "subscribe", "topic": "budget:3", "id": 1}')
            assert json.loads(await socket.recv())["code"] == "forbidden"


def test_the_dependency_explains_a_missing_lifespan() -> None:
    class Bare:
        state = object()

    with pytest.raises(ManagerClosed, match="lifespan"):
        current_manager(Bare())  # type: ignore[arg-type]


def test_the_router_can_leave_out_the_client_route() -> None:
    router = create_router(ConnectionManager(), path="/live", client_path=None)
    assert [route.path for route in router.routes] == ["/live"]  # type: ignore[attr-defined]
