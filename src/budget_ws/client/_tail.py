"""``python -m budget_ws tail URL --topic T``: print a server's events as JSON lines.

For operators and for debugging: one JSON object per line on standard output, the event
frame as received (``event``, ``data``, and ``topic``, ``offset``, ``epoch`` when it has a
position, ``traceparent`` when it carries one), and ``{"op": "resync", ...}`` when the
state of a topic went stale. Reconnects and resumes like
:class:`~budget_ws.client.Client`; connection notices go to standard error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TextIO

from ..errors import BudgetWSError, ClientClosed, InvalidLimit, InvalidURL, SubscriptionRefused
from ..events import EventRegistry
from ..position import Position
from ._client import Client
from ._items import EventReceived, Item

__all__ = ["item_json", "run"]


def run(arguments: argparse.Namespace, error: Callable[[str], NoReturn]) -> int:
    """Run ``tail`` with parsed arguments; returns the exit status.

    Args:
        arguments: ``url``, ``topic``, ``position``, ``header``, ``cookie``, ``count``,
            ``max_attempts`` and ``quiet``, as ``python -m budget_ws`` parses them.
        error: Reports a usage error and exits (``ArgumentParser.error``).
    """
    if len(arguments.position) > len(arguments.topic):
        error("give at most one --position per --topic (they pair up in order)")
    try:
        positions = [_position(text) for text in arguments.position]
        headers = [_header(text) for text in arguments.header]
        cookies = dict(_cookie(text) for text in arguments.cookie)
        client = Client(
            arguments.url,
            registry=EventRegistry(),  # print what arrives; validate nothing
            headers=headers,
            cookies=cookies,
            max_attempts=arguments.max_attempts,
        )
    except (ValueError, InvalidURL, InvalidLimit) as exc:
        error(str(exc))
    padded: list[Position | None] = [*positions, *[None] * (len(arguments.topic) - len(positions))]
    topics = list(zip(arguments.topic, padded, strict=True))
    try:
        with _notices(enabled=not arguments.quiet):
            asyncio.run(_tail(client, topics, arguments.count, sys.stdout))
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # e.g. `python -m budget_ws tail ... | head`
        sys.stderr.close()
        return 0
    except (ClientClosed, SubscriptionRefused) as exc:
        print(f"python -m budget_ws tail: {exc}", file=sys.stderr)
        return 1
    except BudgetWSError as exc:  # pragma: no cover - a bug: say it, without a traceback
        print(f"python -m budget_ws tail: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _tail(
    client: Client, topics: list[tuple[str, Position | None]], count: int | None, out: TextIO
) -> None:
    printed = 0
    async with client:
        for topic, position in topics:
            await client.subscribe(topic, position=position)
        if count == 0:
            return
        async for item in client:
            out.write(item_json(item) + "\n")
            out.flush()
            if isinstance(item, EventReceived):
                printed += 1
                if count is not None and printed >= count:
                    return


def item_json(item: Item) -> str:
    """One line of ``tail``'s output."""
    frame: dict[str, Any]
    if isinstance(item, EventReceived):
        frame = {"event": item.name, "data": item.data}
        if item.topic is not None:
            frame["topic"] = item.topic
        if item.position is not None:
            frame["offset"] = item.position.offset
            frame["epoch"] = item.position.epoch
        if item.traceparent is not None:
            frame["traceparent"] = item.traceparent
    else:
        frame = {
            "op": "resync",
            "topic": item.topic,
            "position": {"offset": item.position.offset, "epoch": item.position.epoch},
            "why": item.why,
        }
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def _position(text: str) -> Position:
    offset, separator, epoch = text.partition(":")
    if not separator or not epoch or not offset.isdigit():
        raise ValueError(f"--position {text!r}: expected OFFSET:EPOCH, e.g. 17:9f2c4a1b")
    return Position(int(offset), epoch)


def _header(text: str) -> tuple[str, str]:
    name, separator, value = text.partition(":")
    if not separator or not name.strip():
        raise ValueError(f"--header {text!r}: expected 'Name: value'")
    return name.strip(), value.strip()


def _cookie(text: str) -> tuple[str, str]:
    name, separator, value = text.partition("=")
    if not separator or not name.strip():
        raise ValueError(f"--cookie {text!r}: expected name=value")
    return name.strip(), value


class _NoticeFormatter(logging.Formatter):
    """The command names itself: without the lines' own ``budget_ws: `` prefix."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).replace("tail: budget_ws: ", "tail: ", 1)


@contextlib.contextmanager
def _notices(enabled: bool) -> Iterator[None]:
    """The client's connection notices on standard error, while the command runs."""
    if not enabled:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_NoticeFormatter("python -m budget_ws tail: %(message)s"))
    logger = logging.getLogger("budget_ws.client")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)  # every reconnect attempt, not only the first
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
