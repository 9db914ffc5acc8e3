"""A signal listener for backend tests: keeps what it is given, and can be waited on."""

from __future__ import annotations

import anyio


class Signals:
    """Pass it to ``backend.listen_signals``; ``received`` holds every payload, in order."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self._changed = anyio.Event()

    def __call__(self, payload: bytes) -> None:
        self.received.append(payload)
        self._changed.set()

    async def wait_for(self, count: int) -> None:
        """Wait until ``count`` signals have arrived (at most 5 s)."""
        with anyio.fail_after(5):
            while len(self.received) < count:
                await self._changed.wait()
                self._changed = anyio.Event()

    async def wait_for_payload(self, payload: bytes) -> None:
        """Wait until ``payload`` has arrived (at most 5 s)."""
        with anyio.fail_after(5):
            while payload not in self.received:
                await self._changed.wait()
                self._changed = anyio.Event()
