"""A loopback TCP proxy that can kill its connections, or stall them without a word.

``async with Proxy(target_port) as proxy:`` listens on ``127.0.0.1:proxy.port`` and forwards
every connection to ``127.0.0.1:target_port``. ``proxy.kill()`` resets the connections it
carries (both ends see the link drop at once); ``proxy.stall()`` makes them silently
swallow traffic in both directions and never close, as a dead network path (a NAT that
forgot the flow, a pulled cable) does. New connections are forwarded normally either way.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

__all__ = ["Proxy"]

_CHUNK = 65536


class _Link:
    """One proxied connection: the client's side and the upstream side."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.writers = (client, upstream)
        self.stalled = False

    def kill(self) -> None:
        for writer in self.writers:
            writer.transport.abort()


class Proxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target_port``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        """Connections accepted so far."""
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        self.kill()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        await self._server.wait_closed()

    def kill(self) -> None:
        """Reset every connection carried now."""
        for link in list(self._links):
            link.kill()
        self._links.clear()

    def stall(self) -> None:
        """Swallow the traffic of every connection carried now, in both directions."""
        for link in self._links:
            link.stalled = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, upstream_writer)
        self._links.add(link)
        for source, target in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pump(link, source, target))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, link: _Link, source: asyncio.StreamReader, target: asyncio.StreamWriter
    ) -> None:
        # Ends with the connection: at end of stream, or when a side is reset.
        with contextlib.suppress(OSError):
            while data := await source.read(_CHUNK):
                if link.stalled:
                    continue
                target.write(data)
                await target.drain()
            if not link.stalled:
                target.close()
