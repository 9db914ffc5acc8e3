"""Reconnect delays: exponential backoff with full jitter, at the cap too."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from ..errors import InvalidLimit

__all__ = ["Backoff"]

# 2**60 seconds is beyond any cap; stops the exponent from growing without end.
_MAX_EXPONENT = 60


class Backoff:
    """Delays before reconnect attempts: ``uniform(0, min(cap, base * 2**attempt))``.

    Full jitter over the whole range, at the cap too: clients that lost the same server
    must not come back in lockstep (socket.io-client's jitter dies at its maximum, so after
    a restart every client retries at once). Reset once a connection gets its welcome.

    Args:
        base: The range of the first delay, in seconds.
        cap: The largest range, in seconds.
        random: Returns a float in ``[0, 1)``; replaced in tests.
    """

    def __init__(
        self, base: float = 1.0, cap: float = 20.0, random: Callable[[], float] = random.random
    ) -> None:
        if base <= 0 or cap < base:
            raise InvalidLimit("backoff needs 0 < min_delay <= max_delay")
        self.base = base
        self.cap = cap
        self.attempt = 0
        """Delays handed out since the last reset."""
        self._random = random

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds; each call widens the range."""
        limit = min(self.cap, math.ldexp(self.base, min(self.attempt, _MAX_EXPONENT)))
        self.attempt += 1
        return self._random() * limit

    def reset(self) -> None:
        """A connection succeeded: the next outage starts from ``base`` again."""
        self.attempt = 0
