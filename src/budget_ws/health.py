"""Health checks for orchestrators: is the process alive, and ready for new clients?

Built on the manager's public API only (``state`` and ``stats()``), so it
imports no web framework; :class:`budget_ws.adapters.HealthApp` serves it over HTTP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .manager import ConnectionManager

__all__ = ["Health", "check_health"]


# `scheme://user:password@host` in a description: only the part after the `@` is shown.
_CREDENTIALS = re.compile(r"(?<=//)[^/@\s]*@")


@dataclass(frozen=True, slots=True)
class Health:
    """What :func:`check_health` found: whether the process is alive and ready for clients.

    .. versionadded:: 0.1
    """

    live: bool
    """The process can serve: the manager is not closed. False means restart it."""
    ready: bool
    """New clients may be sent here: the manager runs, is not draining, and its backend
    is connected."""
    reasons: tuple[str, ...]
    """Why it is not ready (empty when it is), e.g. ``"shutting down (draining)"``."""
    state: str
    """The manager's state: ``"new"``, ``"running"``, ``"closing"`` or ``"closed"``."""
    connections: int
    """Connections being served now."""
    topics: int
    """Topics with at least one local subscriber."""
    backend: str
    """The backend's description (its ``repr()``, without credentials)."""
    backend_status: dict[str, Any]
    """What the backend reports of itself, e.g. ``{"connected": True, "topics": 3}``."""

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data: what :class:`~budget_ws.adapters.HealthApp` sends."""
        return {
            "live": self.live,
            "ready": self.ready,
            "reasons": list(self.reasons),
            "state": self.state,
            "connections": self.connections,
            "topics": self.topics,
            "backend": self.backend,
            "backend_status": dict(self.backend_status),
        }


def check_health(manager: ConnectionManager) -> Health:
    """Check whether a manager's process is alive and ready for new clients.

    Cheap and synchronous: it reads the manager's state and ``stats()`` and waits on
    nothing, so a probe may call it as often as it likes.

    - **Ready** when the manager runs (started, not draining) and its backend is connected
      (``stats().backend_status["connected"]``; a backend that reports no status counts as
      connected, one whose ``status()`` raised as disconnected).
    - **Live** unless the manager is closed: a manager that has not started yet, or is
      draining, still belongs to a process that works.

    .. versionadded:: 0.1

    Args:
        manager: The manager to check, in any state.

    Returns:
        The verdicts, why it is not ready, and the facts an operator wants to see.
    """
    stats = manager.stats()
    state = manager.state
    status = {key: _without_credentials(value) for key, value in stats.backend_status.items()}
    backend = _without_credentials(stats.backend)
    reasons: list[str] = []
    if state == "new":
        reasons.append("manager not started")
    elif state == "closing":
        reasons.append("shutting down (draining)")
    elif state == "closed":
        reasons.append("manager closed")
    elif "connected" in status:
        if not status["connected"]:
            reasons.append(f"backend disconnected: {backend}")
    elif status.keys() == {"error"}:  # the manager's report of a status() that raised
        reasons.append(f"backend disconnected: status() failed: {status['error']}")
    return Health(
        live=state != "closed",
        ready=not reasons,
        reasons=tuple(reasons),
        state=state,
        connections=stats.connections,
        topics=stats.topics,
        backend=backend,
        backend_status=status,
    )


def _without_credentials(value: Any) -> Any:
    return _CREDENTIALS.sub("", value) if isinstance(value, str) else value
