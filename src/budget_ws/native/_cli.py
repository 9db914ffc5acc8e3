"""``python -m budget_ws serve MODULE:ATTR``: the native server as a process of its own.

Its arguments are declared in ``budget_ws.__main__``, which needs no ``websockets``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from ..adapters.asgi import WebSocketApp
from ..manager import ConnectionManager
from .server import NativeServer

__all__ = ["run"]


def _target(spec: str) -> ConnectionManager | WebSocketApp:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{spec!r} is not MODULE:ATTR")
    sys.path.insert(0, "")
    value: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        value = getattr(value, part)
    if not isinstance(value, (ConnectionManager, WebSocketApp)) and callable(value):
        value = value()
    if not isinstance(value, (ConnectionManager, WebSocketApp)):
        raise TypeError(
            f"{spec} is {type(value).__name__}, not a ConnectionManager or WebSocketApp"
        )
    return value


async def _serve(server: NativeServer) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows' loop
            loop.add_signal_handler(number, stop.set)
    async with server.manager, server:
        print(f"budget_ws: serving {server.url}", file=sys.stderr, flush=True)
        await stop.wait()
        print("budget_ws: shutting down", file=sys.stderr, flush=True)


def run(arguments: argparse.Namespace, error: Callable[[str], NoReturn]) -> int:
    """Serve until SIGINT or SIGTERM, then close every client with 1012."""
    try:
        target = _target(arguments.target)
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        error(str(exc))  # exits with 2
    server = NativeServer(
        target,
        host=arguments.host,
        port=arguments.port,
        path=arguments.path or None,
        reuse_port=arguments.reuse_port,
    )
    if arguments.loop == "uvloop":
        try:
            import uvloop
        except ImportError:  # pragma: no cover - depends on the environment
            error("--loop uvloop needs the uvloop package: pip install uvloop")
        uvloop.run(_serve(server))
    else:
        asyncio.run(_serve(server))
    return 0
