"""Step 0: the family budget's live updates before budget_ws, as the app had them.

A dict of WebSockets per budget, and for every change ``await send_json(...)`` to each
client in turn: the slowest client sets the pace for all of them, every client costs one
JSON encoding, and the dict lives in one process, so only one worker can run. The page
(``original/index.html`` and ``original/budget_socket.js``) is served as it was.

Saving to a database is left out: each request names the fact or article it changed,
and the app tells the pages of that budget. Run it from ``examples/migration``::

    uvicorn step0_original:app

open http://127.0.0.1:8000/ and add a fact from another terminal::

    curl -X POST http://127.0.0.1:8000/budgets/1/facts \\
        -H 'content-type: application/json' -d '{"id": 7, "amount": "12.50"}'

The guide that walks from here to budget_ws is ``docs/how-to/migrate.md``.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from fastapi import Cookie, FastAPI, WebSocket
from fastapi.responses import FileResponse
from pydantic import BaseModel

ORIGINAL = Path(__file__).resolve().parent / "original"


class ConnectionManager:
    """The open WebSockets of each budget, in this process only."""

    def __init__(self) -> None:
        self.active: dict[int, list[WebSocket]] = {}

    async def connect(self, websocket: WebSocket, budget_id: int) -> None:
        await websocket.accept()
        self.active.setdefault(budget_id, []).append(websocket)

    def disconnect(self, websocket: WebSocket, budget_id: int) -> None:
        self.active[budget_id].remove(websocket)

    async def broadcast(self, budget_id: int, event: str, data: dict[str, Any]) -> None:
        for websocket in self.active.get(budget_id, []):
            await websocket.send_json({"event": event, "data": data})


manager = ConnectionManager()
app = FastAPI()


class FactIn(BaseModel):
    id: int
    amount: Decimal


class AmountIn(BaseModel):
    amount: Decimal


class ArticleIn(BaseModel):
    name: str


@app.get("/")
async def page() -> FileResponse:
    return FileResponse(ORIGINAL / "index.html")


@app.get("/budget_socket.js")
async def budget_socket() -> FileResponse:
    return FileResponse(ORIGINAL / "budget_socket.js")


@app.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket, budget_id: Annotated[int, Cookie()] = 1) -> None:
    # The budget the page shows; the app's login set the cookie.
    await manager.connect(websocket, budget_id)
    try:
        async for _ in websocket.iter_text():  # the page sends nothing; wait until it leaves
            pass
    finally:
        manager.disconnect(websocket, budget_id)


@app.post("/budgets/{budget_id}/facts")
async def create_fact(budget_id: int, fact: FactIn) -> None:
    await manager.broadcast(budget_id, "budget_fact_created", fact.model_dump(mode="json"))


@app.post("/budgets/{budget_id}/facts/{fact_id}")
async def update_fact(budget_id: int, fact_id: int, change: AmountIn) -> None:
    data = {"id": fact_id, "amount": str(change.amount)}
    await manager.broadcast(budget_id, "budget_fact_updated", data)


@app.post("/budgets/{budget_id}/facts/{fact_id}/delete")
async def delete_fact(budget_id: int, fact_id: int) -> None:
    await manager.broadcast(budget_id, "budget_fact_deleted", {"id": fact_id})


@app.post("/budgets/{budget_id}/articles/{article_id}")
async def rename_article(budget_id: int, article_id: int, article: ArticleIn) -> None:
    data = {"id": article_id, "name": article.name}
    await manager.broadcast(budget_id, "article_updated", data)
