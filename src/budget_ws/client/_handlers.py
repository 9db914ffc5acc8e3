"""The app's handlers of events, resyncs and error frames, called in order, failures logged."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..server_frames import (
    ErrorFrame,
)
from ._items import EventReceived, Item, Resync

__all__ = ["ErrorHandler", "EventHandler", "Handlers", "ResyncHandler"]

logger = logging.getLogger("budget_ws.client")

EventHandler = Callable[[EventReceived], Awaitable[None]]
"""``async def handler(item: EventReceived) -> None``, registered with ``Client.on``."""
ResyncHandler = Callable[[Resync], Awaitable[None]]
"""``async def handler(item: Resync) -> None``, registered with ``Client.on_resync``."""
ErrorHandler = Callable[[ErrorFrame], Awaitable[None]]
"""``async def handler(frame: ErrorFrame) -> None``, registered with ``Client.on_error``."""


class Handlers:
    """Handlers by event name, of resyncs, and of error frames; in registration order.

    Awaited one at a time in the client's reader; an exception is logged and the next
    handler (and item) follows.
    """

    def __init__(self) -> None:
        self._events: dict[str, list[EventHandler]] = {}
        self._resyncs: list[ResyncHandler] = []
        self._errors: list[ErrorHandler] = []

    def add_event(self, name: str, handler: EventHandler) -> None:
        self._events.setdefault(name, []).append(handler)

    def add_resync(self, handler: ResyncHandler) -> None:
        self._resyncs.append(handler)

    def add_error(self, handler: ErrorHandler) -> None:
        self._errors.append(handler)

    async def deliver(self, item: Item) -> bool:
        """Call the handlers of ``item``; False when it has none (nothing was called)."""
        handlers: list[Callable[[Any], Awaitable[None]]]
        if isinstance(item, Resync):
            handlers = list(self._resyncs)
        else:
            handlers = list(self._events.get(item.name, ()))
        for handler in handlers:
            await _call(handler, item)
        return bool(handlers)

    async def error(self, frame: ErrorFrame) -> None:
        """Call the error handlers; without any, log the frame (never drop it silently)."""
        if not self._errors:
            logger.warning("error from the server: %s", frame)
        for handler in list(self._errors):
            await _call(handler, frame)


async def _call(handler: Callable[[Any], Awaitable[None]], argument: Any) -> None:
    try:
        await handler(argument)
    except Exception:
        logger.exception("handler %r failed", handler)
