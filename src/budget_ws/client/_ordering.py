"""Per-topic positions on the client side: drop duplicates, report gaps.

Pure logic, no socket: what ``docs/protocol.md`` asks of a client that keeps, per topic,
the position of the last event it handed on.
"""

from __future__ import annotations

import enum
from typing import Literal

from ..position import Position

__all__ = ["Ordering", "ResyncReason", "Verdict"]

ResyncReason = Literal["not_recovered", "gap", "server"]
"""Why a topic's state is stale: see :class:`budget_ws.client.Resync`."""


class Verdict(enum.Enum):
    """What to do with an event that carries a position."""

    DELIVER = "deliver"
    """The next event of the topic: hand it on."""
    DUPLICATE = "duplicate"
    """Already handed on (same epoch, offset not above the last one): drop it."""
    GAP = "gap"
    """Events are missing before it, or it is of another epoch: report a resync, then hand
    it on."""


class Ordering:
    """The last position handed on, per topic, and what follows from each new frame.

    Every method that returns a verdict or a reason has already adopted the new position
    when it returns, so the caller only acts on the answer.
    """

    def __init__(self) -> None:
        self._positions: dict[str, Position] = {}

    def position(self, topic: str) -> Position | None:
        """The last position handed on for ``topic`` (what a resubscribe resumes after)."""
        return self._positions.get(topic)

    @property
    def positions(self) -> dict[str, Position]:
        """A copy of every known position."""
        return dict(self._positions)

    def resume_from(self, topic: str, position: Position | None) -> None:
        """The app asks to resume after ``position``.

        Adopted unless the client already knows a later position of the same epoch (it has
        handed on more than the app remembers).
        """
        if position is None:
            return
        known = self._positions.get(topic)
        if known is None or known.epoch != position.epoch or known.offset < position.offset:
            self._positions[topic] = position

    def event(self, topic: str, position: Position) -> Verdict:
        """An event of ``topic`` at ``position`` arrived."""
        last = self._positions.get(topic)
        if last is not None and last.epoch == position.epoch and position.offset <= last.offset:
            return Verdict.DUPLICATE
        self._positions[topic] = position
        if last is not None and (last.epoch != position.epoch or position.offset > last.offset + 1):
            return Verdict.GAP
        return Verdict.DELIVER

    def subscribed(
        self, topic: str, position: Position, recovered: bool, *, requested: Position | None
    ) -> ResyncReason | None:
        """The answer to a subscribe the client sent with ``requested`` (None: fresh).

        Returns:
            ``"not_recovered"`` when the client asked to resume and the server could not
            replay; None otherwise. With ``recovered`` the replay follows and the events
            move the position; without it, the topic continues from ``position``.
        """
        if recovered:
            return None
        self._positions[topic] = position
        return "not_recovered" if requested is not None else None

    def subscribed_by_server(
        self, topic: str, position: Position, recovered: bool
    ) -> ResyncReason | None:
        """A ``subscribed`` frame without an id: the server subscribed the client itself.

        Returns:
            ``"gap"`` when the client knew another position for the topic than the one the
            subscription starts after (events in between were never handed on); else None.
        """
        if recovered:
            return None
        last = self._positions.get(topic)
        self._positions[topic] = position
        return "gap" if last is not None and last != position else None

    def resync(self, topic: str, position: Position) -> None:
        """The server said the topic lost events: continue from ``position``."""
        self._positions[topic] = position

    def forget(self, topic: str) -> None:
        """The topic was left: its position no longer matters."""
        self._positions.pop(topic, None)
