"""Round trips counted on the wire, by a TCP proxy between a client and its server.

A round trip is one turn of the conversation: the client sends, then waits for the
server's answer before it sends again. The proxy counts, on every connection through it,
each time bytes come from the client after bytes went to it from the server (or first):
one client turn, however many TCP segments or protocol messages it takes. A client that
pipelines several requests in one turn counts once, as it pays once; a statement that
needs a second exchange (a prepare, then the execution; a query, then a reset of the
connection) counts twice. It knows no protocol, so it counts PostgreSQL and Redis alike.

Unsolicited bytes from the server (a ``NOTIFY`` reaching a listening connection) start
no turn; the client's next request after them does, as any request does. The proxy adds
a hop to every exchange: count with it, never time with it.
"""

from __future__ import annotations

from types import TracebackType

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from typing_extensions import Self

__all__ = ["RoundTripProxy"]


class _Turns:
    __slots__ = ("client_spoke_last",)

    def __init__(self) -> None:
        self.client_spoke_last = False


class RoundTripProxy:
    """Forwards 127.0.0.1:``port`` to ``host``:``target_port`` and counts the turns.

    Use as ``async with RoundTripProxy(host, port) as proxy:``; point the client at
    ``proxy.port``; read ``proxy.round_trips`` (and the bytes each way) before and after
    what is counted.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.target_port = port
        self.port = 0
        self.round_trips = 0
        """Client turns so far, over every connection."""
        self.connections = 0
        """Connections accepted so far."""
        self.bytes_from_clients = 0
        """Bytes relayed to the server so far, over every connection."""
        self.bytes_to_clients = 0
        """Bytes relayed from the server so far (answers, and pushes such as pub/sub)."""
        self._task_group: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> Self:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        self.port = int(listener.extra(SocketAttribute.local_port))
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._serve, listener)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        await self._task_group.__aexit__(exc_type, exc, tb)

    async def _serve(self, listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> None:
        async with listener:
            await listener.serve(self._relay)

    async def _relay(self, client: anyio.abc.SocketStream) -> None:
        self.connections += 1
        turns = _Turns()
        async with (
            client,
            await anyio.connect_tcp(self.host, self.target_port) as server,
            anyio.create_task_group() as relay,
        ):
            relay.start_soon(self._pump, client, server, turns, True, relay.cancel_scope)
            relay.start_soon(self._pump, server, client, turns, False, relay.cancel_scope)

    async def _pump(
        self,
        source: anyio.abc.SocketStream,
        sink: anyio.abc.SocketStream,
        turns: _Turns,
        from_client: bool,
        relay: anyio.CancelScope,
    ) -> None:
        try:
            async for chunk in source:
                # Counted before forwarding: no answer can come back before it is sent.
                if from_client:
                    self.bytes_from_clients += len(chunk)
                    if not turns.client_spoke_last:
                        self.round_trips += 1
                else:
                    self.bytes_to_clients += len(chunk)
                turns.client_spoke_last = from_client
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        relay.cancel()  # one side is gone: end the other too
