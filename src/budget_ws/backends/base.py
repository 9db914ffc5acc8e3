"""The contract between the manager and a backend.

A backend moves opaque bytes between processes: it gives every published payload a
:class:`Position` in its topic, delivers it to every subscriber of that topic on every
worker, and keeps a bounded history from which reconnecting clients recover what they
missed. It never looks inside a payload; all pydantic and JSON work stays in the core.

A third-party backend implements :class:`Backend`; the contract tests in
``tests/backends/test_contract.py`` show what each method must do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, runtime_checkable

from typing_extensions import Self

from ..position import Position

__all__ = [
    "Backend",
    "Listener",
    "Position",
    "PresenceBackend",
    "PresenceRow",
    "PresenceSnapshot",
    "Recovery",
    "SignalBackend",
    "TransactionalBackend",
]


@dataclass(frozen=True, slots=True)
class Recovery:
    """The answer to "what did I miss after this position?".

    All or nothing: either ``recovered`` is true and ``items`` holds *every* event after the
    asked-for position up to ``position``, in order, or ``recovered`` is false and
    ``items`` is empty. A partial replay would hide a gap from the client.
    """

    recovered: bool
    """Whether ``items`` closes the gap completely."""
    position: Position
    """The topic's latest position when history was read."""
    items: Sequence[tuple[Position, bytes]] = field(default=())
    """The missed events, oldest first, when ``recovered`` is true."""


@runtime_checkable
class Listener(Protocol):
    """Receives what a backend delivers for the topics it was subscribed to.

    Both methods are called from the backend's own task and must not block: the
    :class:`~budget_ws.ConnectionManager` only hands frames to bounded outboxes.
    """

    def deliver(self, topic: str, position: Position, payload: bytes) -> None:
        """One event published to ``topic``, in offset order."""

    def resync(self, topic: str, position: Position) -> None:
        """Events of ``topic`` may have been lost (e.g. the backend lost its server).

        ``position`` is the topic's latest position; subscribers should recover from
        history or tell their clients to reload their state.
        """


@runtime_checkable
class Backend(Protocol):
    """Moves event payloads between workers and keeps their recent history.

    Use it as an async context manager (``async with backend:``) or call
    :meth:`aclose` when done. Every method is safe to call from any task.

    A backend may also set ``in_process = True``: it delivers to its listeners inside
    :meth:`publish`, in this process, with no I/O. A tracer then records no round trip
    for it and folds the fan-out into the publish span (see :mod:`budget_ws.tracing`).
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def aclose(self) -> None:
        """Release connections and stop background tasks."""

    async def publish(self, topic: str, payload: bytes) -> Position:
        """Append ``payload`` to the topic's history and deliver it to every subscriber.

        The offset is assigned atomically with the append and the delivery, so history
        order equals delivery order on every worker.

        Returns:
            The position the event was given.
        """

    async def subscribe(self, topic: str, listener: Listener) -> None:
        """Start delivering ``topic`` to ``listener``.

        Returns only once the subscription is confirmed: every event published after the
        return reaches the listener.
        """

    async def unsubscribe(self, topic: str, listener: Listener) -> None:
        """Stop delivering ``topic`` to ``listener``; unknown pairs are ignored."""

    async def history(self, topic: str, after: Position | None, limit: int) -> Recovery:
        """Return the events published to ``topic`` after ``after``.

        Args:
            topic: The topic to read.
            after: The last position the client processed; ``None`` asks only for the
                topic's current position (``recovered`` is then false).
            limit: Recover at most this many events; a larger gap is not recovered.
        """


@runtime_checkable
class TransactionalBackend(Backend, Protocol):
    """A backend that can also publish inside the app's own database transaction.

    ``ConnectionManager.publish(..., within=transaction)`` needs one; with any other
    backend it raises :class:`~budget_ws.TransactionalPublishUnsupported`.
    """

    async def publish_within(self, transaction: object, topic: str, payload: bytes) -> Position:
        """Publish as part of ``transaction``: delivered if and only if it commits.

        Raises:
            TransactionalPublishUnsupported: ``transaction`` is not one the backend can
                publish in (e.g. not a connection of its database, or none is open).
        """


@dataclass(frozen=True, slots=True)
class PresenceRow:
    """How many connections one user has on one topic through one worker.

    The manager writes these; the backend stores them without looking inside ``info``.
    """

    topic: str
    worker: str
    """The writing manager's id, random per process."""
    user: str
    connections: int
    """How many of the user's connections on that worker hold the topic; 0 deletes the row."""
    info: bytes = b"{}"
    """The public info the app chose to show for the user (JSON, encoded by the core)."""


@dataclass(frozen=True, slots=True)
class PresenceSnapshot:
    """The presence rows of one topic, as stored, from live workers only."""

    rows: Sequence[PresenceRow]
    seqs: dict[str, int] = field(default_factory=dict)
    """Each live worker's ``seq`` of its latest write: later signals of that worker are
    news, earlier ones are already in ``rows``."""


@runtime_checkable
class SignalBackend(Backend, Protocol):
    """A backend that can also tell every worker something, once, without history.

    ``ConnectionManager.disconnect_user``/``unsubscribe_user`` and presence changes travel
    this way; a manager whose backend lacks it raises
    :class:`~budget_ws.BackendCapabilityMissing` when they are used.
    """

    async def signal(self, payload: bytes) -> None:
        """Deliver ``payload`` to the signal listener of every worker, this one included.

        At most once and in publishing order per worker; nothing is kept for a worker that
        is not listening at the time.
        """

    async def listen_signals(self, listener: Callable[[bytes], None]) -> None:
        """Hand every signal to ``listener`` (called from the backend's task, must not
        block) until the backend closes. Returns once listening is confirmed. A backend
        that loses its server and listens again delivers nothing of the gap: the manager
        notices missed signals by their sequence numbers."""


@runtime_checkable
class PresenceBackend(SignalBackend, Protocol):
    """A backend that also stores who is present on which topic, per worker, with a TTL.

    Each worker writes only its own rows and stays alive by writing within ``ttl``
    seconds; the rows of a worker that stops writing (it crashed) are not returned after
    that, and are deleted by a later write of any worker.
    """

    async def presence_write(
        self, worker: str, seq: int, ttl: float, rows: Sequence[PresenceRow], *, replace: bool
    ) -> bool:
        """Store ``worker``'s changed rows and keep it alive for ``ttl`` more seconds.

        Atomic: readers see all of the write or none of it, with ``seq`` (increasing per
        worker). With ``replace``, every other row of ``worker`` is deleted first (``rows``
        is then its whole state). Rows with ``connections == 0`` are deleted.

        Returns:
            Whether the backend still held ``worker`` as alive before this write; false
            after it lost its data (a restart) or the worker expired, so the manager
            writes its whole state again.
        """

    async def presence_read(self, topic: str) -> PresenceSnapshot:
        """The rows of ``topic`` written by workers alive now, with their ``seq``."""

    async def presence_forget(self, worker: str) -> None:
        """Delete every row of ``worker`` at once (it is shutting down)."""
