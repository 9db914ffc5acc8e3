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

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        """Wait until ``count`` signals have arrived."""
        with anyio.fail_after(timeout):
            while len(self.received) < count:
                await self._changed.wait()
                self._changed = anyio.Event()

    async def wait_for_payload(self, payload: bytes, timeout: float = 5.0) -> None:
        """Wait until ``payload`` has arrived."""
        with anyio.fail_after(timeout):
            while payload not in self.received:
                await self._changed.wait()
                self._changed = anyio.Event()
