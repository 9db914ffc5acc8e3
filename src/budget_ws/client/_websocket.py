"""Opening one WebSocket to a budget_ws server: the URL, the handshake, its failures."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websocket_connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from ..errors import HandshakeRefused, InvalidURL, ServerProtocolError
from ..protocol import SUBPROTOCOL, CloseCode, excerpt

__all__ = ["Unreachable", "client_url", "handshake_headers", "open_websocket"]

_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}
# 4xx statuses that say "not now" rather than "never".
_RETRIED_STATUSES = frozenset({408, 429})


class Unreachable(Exception):
    """An attempt to connect failed in a way that retrying may cure (internal)."""


def client_url(url: str, query: Mapping[str, str] | None = None) -> str:
    """``url`` checked and given ``query``; ``http(s)://`` becomes ``ws(s)://``.

    Raises:
        InvalidURL: Not a ws, wss, http or https URL with a host, or with a fragment.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise InvalidURL(f"{url!r} is not a valid URL: {exc}") from None
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise InvalidURL(f"{url!r} is not a ws:// or wss:// URL with a host")
    if parts.fragment:
        raise InvalidURL(f"{url!r} has a fragment (#...), which a WebSocket URL cannot have")
    search = "&".join(part for part in (parts.query, urlencode(dict(query or {}))) if part)
    result = urlunsplit((scheme, parts.netloc, parts.path or "/", search, ""))
    try:
        parse_uri(result)  # what websockets will check when connecting
    except InvalidURI as exc:
        raise InvalidURL(str(exc)) from None
    return result


def handshake_headers(
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None,
    cookies: Mapping[str, str] | None,
) -> list[tuple[str, str]]:
    """The handshake's extra headers: ``headers``, then one ``Cookie`` header if any."""
    items = list(headers.items() if isinstance(headers, Mapping) else headers or ())
    if cookies:
        items.append(("Cookie", "; ".join(f"{name}={value}" for name, value in cookies.items())))
    return items


async def open_websocket(
    url: str,
    headers: list[tuple[str, str]],
    *,
    open_timeout: float,
    close_timeout: float,
    max_message_size: int | None,
) -> ClientConnection:
    """Open a WebSocket speaking ``budget-ws.v1``.

    The ``websockets`` library's own keepalive is off: the protocol's heartbeat watches
    the link.

    Raises:
        Unreachable: Refused, timed out, reset, or an HTTP status worth retrying.
        HandshakeRefused: An HTTP status that retrying cannot change (401, 403, ...).
        ServerProtocolError: The server does not speak ``budget-ws.v1``.
    """
    try:
        websocket = await websocket_connect(
            url,
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            additional_headers=headers,
            open_timeout=open_timeout,
            close_timeout=close_timeout,
            ping_interval=None,
            max_size=max_message_size,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        body = excerpt(exc.response.body.decode("utf-8", "replace").strip(), 200)
        if 400 <= status < 500 and status not in _RETRIED_STATUSES:
            raise HandshakeRefused(status, body) from None
        raise Unreachable(f"HTTP {status}") from None
    except (OSError, asyncio.TimeoutError, InvalidHandshake) as exc:
        raise Unreachable(str(exc) or type(exc).__name__) from None
    if websocket.subprotocol != SUBPROTOCOL:
        await websocket.close(CloseCode.PROTOCOL_ERROR, f"{SUBPROTOCOL} required")
        raise ServerProtocolError(f"the server did not accept the {SUBPROTOCOL} subprotocol")
    return websocket
