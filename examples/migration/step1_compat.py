"""Steps 1 and 2: the server on budget_ws in compatibility mode; the page is unchanged.

The same routes and the same page as ``step0_original.py``; the events, the hooks and
the routes that publish are in ``budget.py``. The pages still connect without a
subprotocol and never subscribe: ``Compatibility(topics=...)`` subscribes each of them to
its budget's topic and sends it one ``{"event", "data"}`` object per message, as before.
What changes is the server: ``publish()`` encodes an event once and never waits on a
client; a client that falls behind is closed (4000) instead of stalling the others.

The backend comes from ``BUDGET_WS_BACKEND``. Step 1 keeps the default, in memory, so one
worker. Run it from ``examples/migration``::

    uvicorn step1_compat:app --ws-per-message-deflate false

Step 2 is the same app on Redis (127.0.0.1:6379 here), with several workers::

    BUDGET_WS_BACKEND=redis://127.0.0.1:6379/0 uvicorn step1_compat:app --workers 2 \\
        --ws-per-message-deflate false

(A PostgreSQL backend is planned, not available yet.) The guide: ``docs/how-to/migrate.md``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from budget import authenticate, authorize, budget_routes, budget_topic
from fastapi import FastAPI
from fastapi.responses import FileResponse

from budget_ws import ConnectionManager, Handshake
from budget_ws.adapters.fastapi import create_router, lifespan
from budget_ws.compat import Compatibility, CompatTransport

ORIGINAL = Path(__file__).resolve().parent / "original"


def compat_topics(handshake: Handshake, budget_id: int) -> list[str]:
    # Asked for pages that never subscribe (budget_socket.js), instead of authorize.
    return [budget_topic(budget_id)]


backend = os.environ.get("BUDGET_WS_BACKEND", "memory://")
manager = ConnectionManager(backend, authorize=authorize)
app = FastAPI(lifespan=lifespan(manager))
app.include_router(
    create_router(
        manager,
        authenticate=authenticate,
        compatibility=Compatibility(topics=compat_topics),
    )
)
app.include_router(budget_routes)


@app.get("/")
async def page() -> FileResponse:
    return FileResponse(ORIGINAL / "index.html")


@app.get("/budget_socket.js")
async def budget_socket() -> FileResponse:
    return FileResponse(ORIGINAL / "budget_socket.js")


@app.get("/compat-clients")
async def compat_clients() -> dict[str, int]:
    """Pages still on budget_socket.js that this worker serves, by topic."""
    legacy = [c for c in manager.connections.values() if isinstance(c.transport, CompatTransport)]
    return dict(Counter(topic for connection in legacy for topic in connection.topics))
