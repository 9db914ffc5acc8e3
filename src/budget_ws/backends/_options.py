"""Strict parsing of backend options: from a URL's query string, or from arguments.

A misspelt or malformed option must fail when the backend is created, naming the option
and what it accepts, not surface later as "could not connect" after a timeout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from ..errors import InvalidBackendOption

__all__ = [
    "Option",
    "check",
    "check_link_arguments",
    "choice",
    "flag",
    "is_seconds",
    "parse_query",
    "refuse",
    "seconds",
    "seconds_range",
    "text",
    "whole",
]


@dataclass(frozen=True)
class Option:
    """How to read one option, and what to say when a value is refused."""

    parse: Callable[[str], Any]
    """Turns the URL's text into the value; raises ``ValueError`` to refuse it."""
    accepted: str
    """What the option accepts, in words, for the error message."""


def whole(minimum: int) -> Option:
    def parse(value: str) -> int:
        number = int(value)
        if number < minimum:
            raise ValueError
        return number

    return Option(parse, f"a whole number >= {minimum}")


def is_seconds(value: object) -> bool:
    """Whether ``value`` is a usable duration: a finite number above zero."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _seconds(value: str) -> float:
    number = float(value)
    if not is_seconds(number):
        raise ValueError
    return number


def seconds() -> Option:
    return Option(_seconds, "a number of seconds > 0")


def seconds_range() -> Option:
    def parse(value: str) -> tuple[float, float]:
        low, high = (_seconds(part) for part in value.split(","))
        if low > high:
            raise ValueError
        return low, high

    return Option(parse, "two numbers of seconds LOW,HIGH with 0 < LOW <= HIGH")


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def flag() -> Option:
    def parse(value: str) -> bool:
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError

    return Option(parse, f"one of {', '.join(_TRUE + _FALSE)}")


def text() -> Option:
    def parse(value: str) -> str:
        if not value:
            raise ValueError
        return value

    return Option(parse, "a non-empty string")


def choice(*values: str) -> Option:
    def parse(value: str) -> str:
        if value not in values:
            raise ValueError
        return value

    return Option(parse, f"one of {', '.join(values)}")


def parse_query(scheme: str, query: str, options: Mapping[str, Option]) -> dict[str, Any]:
    """Read every option of a URL's query string; refuse unknown, repeated or bad ones.

    Raises:
        InvalidBackendOption: naming the option and what it accepts.
    """
    known = ", ".join(sorted(options))
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise InvalidBackendOption(
            f"{scheme}:// query string {query!r} is not a list of name=value options",
            option=query,
            accepted=known,
        ) from None
    values: dict[str, Any] = {}
    for name, value in pairs:
        option = options.get(name)
        if option is None:
            raise InvalidBackendOption(
                f"{scheme}:// has no option {name!r}; known options: {known}",
                option=name,
                accepted=known,
            )
        if name in values:
            raise InvalidBackendOption(
                f"{scheme}:// option {name!r} is given twice", option=name, accepted=option.accepted
            )
        values[name] = check(scheme, name, value, option)
    return values


def check(scheme: str, name: str, value: str, option: Option) -> Any:
    """One option's value, or :class:`InvalidBackendOption` saying what it accepts."""
    try:
        return option.parse(value)
    except ValueError:
        raise refuse(f"{scheme}:// option", name, value, option.accepted) from None


def check_link_arguments(
    owner: str,
    *,
    durations: Mapping[str, object],
    reconnect_delay: tuple[float, float],
    max_connections: object,
) -> None:
    """Check what every networked backend's constructor takes alike, naming the first bad one.

    Args:
        owner: The class, for the message (``"RedisBackend"``).
        durations: Arguments that are numbers of seconds, by name.
        reconnect_delay: ``(LOW, HIGH)`` seconds of reconnection backoff.
        max_connections: The size of its connection pool.

    Raises:
        InvalidBackendOption: naming the argument and what it accepts.
    """
    for name, value in durations.items():
        if not is_seconds(value):
            raise refuse(owner, name, value, "a number of seconds > 0")
    low, high = reconnect_delay
    if not (is_seconds(low) and is_seconds(high) and low <= high):
        accepted = "(LOW, HIGH) seconds with 0 < LOW <= HIGH"
        raise refuse(owner, "reconnect_delay", reconnect_delay, accepted)
    if not isinstance(max_connections, int) or max_connections < 1:
        raise refuse(owner, "max_connections", max_connections, "a whole number >= 1")


def refuse(owner: str, name: str, value: object, accepted: str) -> InvalidBackendOption:
    """The error for a value ``name`` does not accept, e.g. ``refuse("RedisBackend", ...)``."""
    return InvalidBackendOption(
        f"{owner} {name}={value!r} is invalid: {name} accepts {accepted}",
        option=name,
        accepted=accepted,
    )
