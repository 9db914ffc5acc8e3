"""Command line: ``python -m budget_ws schema|typescript myapp.events``,
``python -m budget_ws tail ws://host/ws --topic budget:1`` (needs ``budget-ws[client]``),
``python -m budget_ws migrate postgresql://...`` (creates the backend's schema), and
``python -m budget_ws serve myapp:manager --port 8001`` (the native server; needs
``budget-ws[native]``)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import sys
from collections.abc import Sequence

from .backends import create_backend
from .errors import BudgetWSError
from .events import EventRegistry, default_registry
from .typescript import typescript_declarations


def _load_registry(modules: Sequence[str], registry_path: str | None) -> EventRegistry:
    for module in modules:
        importlib.import_module(module)
    if registry_path is None:
        return default_registry
    module_name, _, attribute = registry_path.partition(":")
    registry = getattr(importlib.import_module(module_name), attribute or "registry", None)
    if not isinstance(registry, EventRegistry):
        raise SystemExit(f"{registry_path} is not a budget_ws.EventRegistry")
    return registry


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` command's arguments."""
    parser.add_argument(
        "target",
        metavar="MODULE:ATTR",
        help="a ConnectionManager, a WebSocketApp (its handshake settings apply), or a "
        "callable taking no arguments that returns one",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8001, help="port to listen on (8001)")
    parser.add_argument("--path", default="/ws", help="request path clients connect to (/ws)")
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="set SO_REUSEPORT: run several processes on one port, the kernel spreads "
        "connections among them",
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop (asyncio); uvloop needs the uvloop package",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m budget_ws", description=__doc__)
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument(
        "modules", nargs="*", help="modules to import first, so their events register"
    )
    source.add_argument(
        "--registry",
        metavar="MODULE:NAME",
        help="use this EventRegistry instead of the default registry",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    schema = commands.add_parser(
        "schema", parents=[source], help="print the JSON Schema of every registered event"
    )
    schema.add_argument(
        "--mode",
        choices=["serialization", "validation"],
        default="serialization",
        help="describe what the server sends (default) or what it accepts",
    )
    typescript = commands.add_parser(
        "typescript",
        parents=[source],
        help="print TypeScript declarations of every registered event, for the browser client",
    )
    typescript.add_argument(
        "-o", "--output", metavar="FILE", help="write to FILE instead of standard output"
    )
    tail = commands.add_parser(
        "tail",
        help="print the events of topics as JSON lines, reconnecting and resuming "
        "(needs budget-ws[client])",
        description="Follow topics of a budget_ws server and print each event as one JSON "
        "line (the frame as received); a topic whose state went stale prints "
        '{"op": "resync", ...}. Connection notices go to standard error.',
    )
    tail.add_argument("url", help="the server's WebSocket URL, e.g. ws://127.0.0.1:8000/ws")
    tail.add_argument(
        "--topic", action="append", required=True, help="a topic to follow (repeatable)"
    )
    tail.add_argument(
        "--position",
        action="append",
        default=[],
        metavar="OFFSET:EPOCH",
        help="resume after this position; the first --position goes with the first --topic, "
        "and so on",
    )
    tail.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a handshake header, e.g. 'Authorization: Bearer ...' (repeatable)",
    )
    tail.add_argument(
        "--cookie",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a cookie sent with the handshake (repeatable)",
    )
    tail.add_argument("--count", type=int, metavar="N", help="exit after N events")
    tail.add_argument(
        "--max-attempts",
        type=int,
        metavar="N",
        help="give up after N failed connection attempts in a row (default: never)",
    )
    tail.add_argument(
        "-q", "--quiet", action="store_true", help="no connection notices on standard error"
    )
    migrate = commands.add_parser(
        "migrate",
        help="create or upgrade the schema a backend keeps in its database (PostgreSQL)",
        description="Create or upgrade budget_ws's tables and functions in the database "
        "the URL names, e.g. postgresql://app@db:5432/budget?schema=budget_ws. Safe to run "
        "again and from several hosts at once; run it before starting workers.",
    )
    migrate.add_argument("url", help="the backend URL the workers use")
    serve = commands.add_parser(
        "serve",
        help="serve WebSockets with the native server (needs budget-ws[native])",
        description="Serve a ConnectionManager's clients with budget_ws's native server, "
        "without ASGI, until SIGINT or SIGTERM; then stop listening and close every client "
        "with 1012 so it reconnects elsewhere.",
    )
    _serve_arguments(serve)
    arguments = parser.parse_args(argv)
    if arguments.command == "serve":
        try:
            from .native._cli import run as serve_native  # websockets only for this command
        except ImportError as exc:
            parser.error(str(exc))
        return serve_native(arguments, serve.error)
    if arguments.command == "migrate":
        return _migrate(arguments.url)
    if arguments.command == "tail":
        try:
            from .client._tail import run  # websockets only for this command
        except ImportError as exc:
            parser.error(str(exc))
        return run(arguments, tail.error)
    sys.path.insert(0, "")
    try:
        registry = _load_registry(arguments.modules, arguments.registry)
    except ImportError as exc:
        parser.error(str(exc))
    try:
        _write(arguments, registry)
    except BrokenPipeError:  # e.g. `python -m budget_ws schema app | head`
        sys.stderr.close()
    return 0


def _migrate(url: str) -> int:
    try:
        backend = create_backend(url)
    except BudgetWSError as exc:
        print(f"python -m budget_ws migrate: {exc}", file=sys.stderr)
        return 2
    migrate = getattr(backend, "migrate", None)
    if migrate is None or not inspect.iscoroutinefunction(migrate):
        print(f"{backend!r} keeps no schema: nothing to migrate", file=sys.stderr)
        return 0
    try:
        version = asyncio.run(migrate())
    except BudgetWSError as exc:
        print(f"python -m budget_ws migrate: {exc}", file=sys.stderr)
        return 1
    print(f"{backend!r}: schema at version {version}")
    return 0


def _write(arguments: argparse.Namespace, registry: EventRegistry) -> None:
    if arguments.command == "typescript":
        declarations = typescript_declarations(registry)
        if arguments.output:
            with open(arguments.output, "w", encoding="utf-8") as output:
                output.write(declarations)
        else:
            sys.stdout.write(declarations)
            sys.stdout.flush()
        return
    json.dump(registry.json_schema(arguments.mode), sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
