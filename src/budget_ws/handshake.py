"""What a client sent when it opened its WebSocket, and the checks run before accepting it."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .errors import HandshakeRejected

__all__ = ["Authenticate", "Handshake", "HandshakeRejected", "origin_allowed"]


@dataclass(frozen=True)
class Handshake:
    """The opening request of a WebSocket, as every adapter describes it.

    Passed to ``authenticate`` so it can read cookies, headers, the query string or the
    client's address without knowing the web framework.
    """

    path: str
    """The request path, e.g. ``/ws``."""
    headers: Mapping[str, str]
    """Request headers, names in lower case; repeated headers joined with ``", "``."""
    query: Mapping[str, str] = field(default_factory=dict)
    """Query parameters (the first value of each)."""
    cookies: Mapping[str, str] = field(default_factory=dict)
    """Cookies sent with the request."""
    client: tuple[str, int] | None = None
    """The client's address and port, as the server saw them."""
    subprotocols: tuple[str, ...] = ()
    """The subprotocols the client offered, in its order."""
    scheme: str = "ws"
    """``ws`` or ``wss``."""
    scope: Mapping[str, Any] = field(default_factory=dict, repr=False)
    """The raw ASGI scope, for anything else."""

    @property
    def origin(self) -> str | None:
        """The ``Origin`` header, sent by every browser; None for most other clients."""
        return self.headers.get("origin")

    @classmethod
    def from_asgi(cls, scope: Mapping[str, Any]) -> Handshake:
        """Describe an ASGI ``websocket`` scope."""
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope.get("headers", ()):
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        client = scope.get("client")
        return cls.of_request(
            path=scope.get("path", "/"),
            headers=headers,
            query_string=scope.get("query_string", b"").decode("latin-1"),
            client=(client[0], client[1]) if client else None,
            subprotocols=tuple(scope.get("subprotocols", ())),
            scheme=scope.get("scheme", "ws"),
            scope=scope,
        )

    @classmethod
    def of_request(
        cls,
        *,
        path: str,
        headers: dict[str, str],
        query_string: str,
        client: tuple[str, int] | None,
        subprotocols: tuple[str, ...],
        scheme: str,
        scope: Mapping[str, Any],
    ) -> Handshake:
        """Describe a request whose headers a server has already read: names in lower case,
        repeated ones joined with ``", "`` (the native server's, without an ASGI scope to
        read them from again)."""
        query: dict[str, str] = {}
        if query_string:
            for name, value in parse_qsl(query_string):
                query.setdefault(name, value)
        cookies: dict[str, str] = {}
        if "cookie" in headers:
            jar: SimpleCookie = SimpleCookie()
            with contextlib.suppress(CookieError):
                jar.load(headers["cookie"])
            cookies = {name: morsel.value for name, morsel in jar.items()}
        return cls(
            path=path,
            headers=headers,
            query=query,
            cookies=cookies,
            client=client,
            subprotocols=subprotocols,
            scheme=scheme,
            scope=scope,
        )


Authenticate = Callable[[Handshake], "Any | Awaitable[Any]"]
"""``authenticate(handshake) -> principal``: may be async; raise
:class:`HandshakeRejected` to refuse the connection."""

_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def _normalise(origin: str) -> str | None:
    # A client controls the header: anything urlsplit refuses ("http://[", a bad port)
    # is simply not an allowed origin.
    try:
        parts = urlsplit(origin.strip().lower())
        if not parts.scheme or not parts.hostname:
            return None
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    return f"{parts.scheme}://{parts.hostname}:{port}"


def _same_origin(origin: str, host: str | None) -> bool:
    # Compare host names, and ports where the Host header names one. The scheme is left
    # out: behind a TLS-terminating proxy an https page reaches the app over plain ws.
    if host is None:
        return False
    try:
        page = urlsplit(origin.strip().lower())
        target = urlsplit("//" + host.strip().lower())
        if page.hostname is None or page.hostname != target.hostname:
            return False
        if target.port is None:
            return True
        return (page.port or _DEFAULT_PORTS.get(page.scheme)) == target.port
    except ValueError:
        return False


def origin_allowed(handshake: Handshake, allowed_origins: Sequence[str] | None) -> bool:
    """Whether the handshake's ``Origin`` may open a WebSocket (against cross-site hijacking).

    Args:
        handshake: The opening request.
        allowed_origins: ``None`` allows only the page's own origin (the ``Origin``
            header must name the ``Host`` the request was sent to); ``["*"]`` allows any;
            otherwise the exact origins allowed, e.g. ``["https://app.example.com"]``.

    A request without an ``Origin`` header is allowed: browsers always send one, so it
    does not come from a web page another site controls.
    """
    origin = handshake.origin
    if origin is None:
        return True
    if allowed_origins is not None and "*" in allowed_origins:
        return True
    normalised = _normalise(origin)
    if normalised is None:
        return False
    if allowed_origins is None:
        return _same_origin(origin, handshake.headers.get("host"))
    return normalised in {_normalise(allowed) for allowed in allowed_origins}
