"""The app's handlers of events, resyncs and error frames, called in order, failures logged."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..protocol import excerpt
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
            logger.warning(
                "budget_ws: error frame from the server, and no error handler: %s: %s",
                frame.code,
                excerpt(frame.message, 200),
                extra={
                    "budget_ws_event": "client_error_frame",
                    "budget_ws_error_code": frame.code,
                    "budget_ws_error_message": excerpt(frame.message, 200),
                    "budget_ws_topic": frame.topic,
                },
            )
        for handler in list(self._errors):
            await _call(handler, frame)


async def _call(handler: Callable[[Any], Awaitable[None]], argument: Any) -> None:
    try:
        await handler(argument)
    except Exception:
        # Its qualified name, not its repr: a bound method's repr holds its object's.
        name = getattr(handler, "__qualname__", type(handler).__qualname__)
        event_name = argument.name if isinstance(argument, EventReceived) else None
        logger.exception(
            "budget_ws: handler %s failed (%s)",
            name,
            event_name or ("resync" if isinstance(argument, Resync) else "error frame"),
            extra={
                "budget_ws_event": "client_handler_failed",
                "budget_ws_handler": name,
                "budget_ws_event_name": event_name,
                "budget_ws_topic": argument.topic,
            },
        )
