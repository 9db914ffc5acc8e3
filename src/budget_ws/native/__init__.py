"""The native transport: a WebSocket server of budget_ws's own, beside or instead of ASGI.

Needs ``budget-ws[native]`` (the ``websockets`` library, for its sans-I/O protocol).
See ``docs/how-to/native.md``.
"""

from __future__ import annotations

try:
    import websockets  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "budget_ws.native needs the websockets library: pip install 'budget-ws[native]'"
    ) from exc

from .server import NativeServer

__all__ = ["NativeServer"]
