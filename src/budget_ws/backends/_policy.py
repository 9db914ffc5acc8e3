"""How much history a networked backend keeps per topic, shared by Redis and PostgreSQL."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._options import is_seconds, refuse

__all__ = ["HistoryPolicy", "gather_history", "policy_for"]


@dataclass(frozen=True)
class HistoryPolicy:
    """How much of a topic's history the backend keeps for recovery."""

    size: int = 1000
    """Events kept per topic; 0 keeps none."""
    ttl: float = 300.0
    """Seconds an event stays recoverable."""

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 0:
            raise refuse("HistoryPolicy", "size", self.size, "a whole number >= 0")
        if not is_seconds(self.ttl):
            raise refuse("HistoryPolicy", "ttl", self.ttl, "a number of seconds > 0")


def policy_for(
    topic: str, default: HistoryPolicy, overrides: Mapping[str, HistoryPolicy]
) -> HistoryPolicy:
    """The policy of the first pattern ``topic`` matches (shell-style), else ``default``."""
    for pattern, policy in overrides.items():
        if fnmatch.fnmatchcase(topic, pattern):
            return policy
    return default


def gather_history(options: dict[str, Any]) -> dict[str, Any]:
    """A backend URL's options with ``history_size`` and ``history_ttl`` made into the
    ``history=HistoryPolicy(...)`` its constructor takes (when either is given)."""
    history = {
        field: options.pop(name)
        for field, name in (("size", "history_size"), ("ttl", "history_ttl"))
        if name in options
    }
    if history:
        options["history"] = HistoryPolicy(**history)
    return options
