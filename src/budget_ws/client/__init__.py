"""A Python client for budget_ws servers: follow topics from services, CLIs and tests.

::

    from budget_ws.client import connect

    async with connect("ws://127.0.0.1:8000/ws", headers={"Authorization": "..."}) as client:
        async with client.subscribe("budget:1", position=saved) as subscription:
            async for item in subscription:  # EventReceived | Resync, in order, once each
                ...

Runs on asyncio (the ``websockets`` library it is built on is asyncio-only). Needs the
``client`` extra: ``pip install 'budget-ws[client]'``.

.. versionadded:: 0.1
"""

try:
    import websockets  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "budget_ws.client needs the websockets library: pip install 'budget-ws[client]'"
    ) from exc

from ..server_frames import (
    ErrorFrame,
)
from ._client import Client, connect
from ._handlers import ErrorHandler, EventHandler, ResyncHandler
from ._items import EventReceived, Item, Resync
from ._ordering import ResyncReason
from ._subscription import Subscription

__all__ = [
    "Client",
    "ErrorFrame",
    "ErrorHandler",
    "EventHandler",
    "EventReceived",
    "Item",
    "Resync",
    "ResyncHandler",
    "ResyncReason",
    "Subscription",
    "connect",
]
