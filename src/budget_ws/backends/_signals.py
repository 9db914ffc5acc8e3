"""The signal listeners of one backend, and handing a signal to each of them."""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["SignalListeners"]

SignalListener = Callable[[bytes], None]


class SignalListeners:
    """The listeners given to ``listen_signals``: each once, in the order given.

    Args:
        logger: The backend's logger, where a listener that raises is reported.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._listeners: list[SignalListener] = []
        self._logger = logger

    def __bool__(self) -> bool:
        return bool(self._listeners)

    def add(self, listener: SignalListener) -> bool:
        """Add ``listener``; return whether it is new (a second call adds nothing)."""
        if listener in self._listeners:
            return False
        self._listeners.append(listener)
        return True

    def discard(self, listener: SignalListener) -> None:
        """Remove ``listener`` if it is there."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def clear(self) -> None:
        """Forget every listener (the backend closes)."""
        self._listeners.clear()

    def hand_out(self, payload: bytes) -> None:
        """Give ``payload`` to every listener; one that raises is logged and the others
        still get it."""
        for listener in tuple(self._listeners):
            try:
                listener(payload)
            except Exception:
                self._logger.exception(
                    "signal listener %r failed",
                    listener,
                    extra={"budget_ws_event": "listener_failed"},
                )
