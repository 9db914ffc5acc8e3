"""A Starlette app with users, presence and revocation, run as several uvicorn workers by
``test_users_workers.py``.

Run as ``uvicorn users_workers_app:app_factory --factory --app-dir tests/adapters``; each
process is one worker with its own ``ConnectionManager``; the workers share events,
presence and signals through the backend, and the allow-list through a Redis set.

A client says who it is in the handshake's query string, ``/ws?user=alice`` (no ``user``:
anonymous); ``identify`` makes it the user ``alice`` with the public info
``{"name": "ALICE"}``. ``authorize`` lets a user subscribe to a topic, or see its presence,
when the allow-list holds ``"<user> <topic>"`` (anonymous clients: ``"~anonymous <topic>"``).

Routes:
    ``/ws``: the WebSocket endpoint (subprotocol ``budget-ws.v1``).
    ``POST /grant``: adds the body's ``{"grants": [[user, topic], ...]}`` to the allow-list.
    ``POST /revoke?user=U&topic=T``: removes ``U``'s grant of ``T``, then
    ``manager.unsubscribe_user(U, T)``.
    ``POST /publish?topic=T&n=N``: publishes a ``Note`` numbered ``N`` to ``T``.
    ``POST /publish_to_user?user=U&n=N``: ``manager.publish_to_user(U, Note(n=N))``.
    Both answer the event's position, ``{"offset": ..., "epoch": ...}``.
    ``GET /presence?topic=T``: ``manager.presence(T)`` as JSON; 503 if the backend failed.
    ``POST /unsubscribe_user?user=U&topic=T``: ``manager.unsubscribe_user(U, T)``.
    ``POST /disconnect_user?user=U&code=C&reason=R``: ``manager.disconnect_user(...)``.
    ``GET /stats``: the manager's ``stats()``, as JSON.

Environment:
    USERS_WORKERS_BACKEND: the backend URL (default ``memory://``).
    USERS_WORKERS_GRANTS: the Redis URL of the allow-list (default the local Redis).
    USERS_WORKERS_GRANTS_KEY: the key of the allow-list's set.
    USERS_WORKERS_TTL, USERS_WORKERS_INTERVAL: ``PresenceOptions.ttl`` and ``interval``
    in seconds (default 3 and 0.2).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from budget_ws import (
    Action,
    BackendError,
    ConnectionManager,
    Event,
    Handshake,
    Heartbeat,
    Position,
    PresenceOptions,
    User,
)
from budget_ws.adapters.starlette import websocket_route

BACKEND_VARIABLE = "USERS_WORKERS_BACKEND"
GRANTS_VARIABLE = "USERS_WORKERS_GRANTS"
GRANTS_KEY_VARIABLE = "USERS_WORKERS_GRANTS_KEY"
TTL_VARIABLE = "USERS_WORKERS_TTL"
INTERVAL_VARIABLE = "USERS_WORKERS_INTERVAL"

ANONYMOUS = "~anonymous"
"""Who an anonymous client is in the allow-list (no user id can start with ``~``)."""


class Note(Event, name="users_workers_note", register=False):
    """One published event, numbered by the test."""

    n: int


def authenticate(handshake: Handshake) -> str | None:
    """The principal is the ``user`` query parameter: the test plays every user."""
    return handshake.query.get("user") or None


def identify(principal: Any) -> User | None:
    if principal is None:
        return None
    return User(str(principal), {"name": str(principal).upper()})


class Grants:
    """The allow-list, a Redis set of ``"<user> <topic>"`` that every worker reads."""

    def __init__(self, url: str, key: str) -> None:
        self.client = redis.asyncio.Redis.from_url(url)
        self.key = key

    async def authorize(self, principal: Any, topic: str, action: Action) -> bool:
        """Subscribing and seeing presence need a grant; so would publishing (unused)."""
        who = ANONYMOUS if principal is None else str(principal)
        return bool(await self.client.sismember(self.key, f"{who} {topic}"))

    async def grant(self, pairs: list[tuple[str, str]]) -> None:
        if pairs:
            entries = [f"{user} {topic}" for user, topic in pairs]
            await self.client.sadd(self.key, *entries)

    async def revoke(self, user: str, topic: str) -> None:
        await self.client.srem(self.key, f"{user} {topic}")


def position_answer(position: Position) -> Response:
    return JSONResponse({"offset": position.offset, "epoch": position.epoch})


def app_factory() -> Starlette:
    """One worker: its manager on ``$USERS_WORKERS_BACKEND``, the shared allow-list."""
    grants = Grants(
        os.environ.get(GRANTS_VARIABLE) or "redis://127.0.0.1:6379/0",
        os.environ.get(GRANTS_KEY_VARIABLE) or "users-workers-grants",
    )
    manager = ConnectionManager(
        os.environ.get(BACKEND_VARIABLE) or "memory://",
        authorize=grants.authorize,
        identify=identify,
        presence=PresenceOptions(
            ttl=float(os.environ.get(TTL_VARIABLE) or 3),
            interval=float(os.environ.get(INTERVAL_VARIABLE) or 0.2),
        ),
        heartbeat=Heartbeat(interval=60, timeout=60),
        shutdown_timeout=2,
    )

    async def grant(request: Request) -> Response:
        body = await request.json()
        await grants.grant([(str(user), str(topic)) for user, topic in body["grants"]])
        return JSONResponse({"granted": len(body["grants"])})

    async def revoke(request: Request) -> Response:
        user, topic = request.query_params["user"], request.query_params["topic"]
        await grants.revoke(user, topic)  # first: a subscribe after this is refused
        await manager.unsubscribe_user(user, topic)
        return JSONResponse({"revoked": [user, topic]})

    async def publish(request: Request) -> Response:
        note = Note(n=int(request.query_params["n"]))
        return position_answer(await manager.publish(note, topic=request.query_params["topic"]))

    async def publish_to_user(request: Request) -> Response:
        note = Note(n=int(request.query_params["n"]))
        return position_answer(await manager.publish_to_user(request.query_params["user"], note))

    async def presence(request: Request) -> Response:
        try:
            found = await manager.presence(request.query_params["topic"])
        except BackendError as exc:  # Redis is down or restarting: the test polls again
            return JSONResponse({"error": str(exc)}, status_code=503)
        return JSONResponse(dataclasses.asdict(found))

    async def unsubscribe_user(request: Request) -> Response:
        await manager.unsubscribe_user(request.query_params["user"], request.query_params["topic"])
        return JSONResponse({})

    async def disconnect_user(request: Request) -> Response:
        query = request.query_params
        await manager.disconnect_user(
            query["user"], code=int(query.get("code", "4010")), reason=query.get("reason", "")
        )
        return JSONResponse({})

    async def stats(request: Request) -> Response:
        return JSONResponse(dataclasses.asdict(manager.stats()))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with grants.client, manager:
            yield

    return Starlette(
        routes=[
            websocket_route(manager, "/ws", authenticate=authenticate),
            Route("/grant", grant, methods=["POST"]),
            Route("/revoke", revoke, methods=["POST"]),
            Route("/publish", publish, methods=["POST"]),
            Route("/publish_to_user", publish_to_user, methods=["POST"]),
            Route("/presence", presence),
            Route("/unsubscribe_user", unsubscribe_user, methods=["POST"]),
            Route("/disconnect_user", disconnect_user, methods=["POST"]),
            Route("/stats", stats),
        ],
        lifespan=lifespan,
    )
