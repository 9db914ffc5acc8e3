"""Step 3: the page on the bundled browser client; compatibility mode is off.

``step1_compat.py`` without ``compatibility=``: every client now speaks ``budget-ws.v1``,
and one that does not is refused. The events, the hooks and the routes that publish are
``budget.py``'s, as in steps 1 and 2. The page (``step3/index.html``) loads the client
that budget_ws serves, keeps the original page's handlers, and subscribes from the
position it was rendered at: a page that reconnects gets what it missed, or is told to
reload. The backend comes from ``BUDGET_WS_BACKEND``, Redis on 127.0.0.1:6379 unless set.
Run it from ``examples/migration``::

    uvicorn step3_client:app --workers 2 --ws-per-message-deflate false

The guide: ``docs/how-to/migrate.md``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

from budget import authenticate, authorize, budget_routes, budget_topic
from fastapi import Cookie, FastAPI
from fastapi.responses import HTMLResponse

from budget_ws import ConnectionManager
from budget_ws.adapters import client_url
from budget_ws.adapters.fastapi import create_router, lifespan

PAGE = Path(__file__).resolve().parent / "step3" / "index.html"

backend = os.environ.get("BUDGET_WS_BACKEND", "redis://127.0.0.1:6379/0")
manager = ConnectionManager(backend, authorize=authorize)
app = FastAPI(lifespan=lifespan(manager))
app.include_router(create_router(manager, authenticate=authenticate))
app.include_router(budget_routes)


@app.get("/", response_class=HTMLResponse)
async def page(budget_id: Annotated[int, Cookie()] = 1) -> str:
    # Read before the data a page shows (this one shows none yet): the client subscribes
    # from this position, and the server replays what was published since.
    position = await manager.position(budget_topic(budget_id))
    return (
        PAGE.read_text(encoding="utf-8")
        .replace("{{ client_url }}", client_url())
        .replace("{{ topic }}", budget_topic(budget_id))
        .replace("{{ position }}", json.dumps({"offset": position.offset, "epoch": position.epoch}))
    )
