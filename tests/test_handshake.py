"""Handshake description and the origin check (cross-site WebSocket hijacking)."""

from __future__ import annotations

from typing import Any

import pytest

from budget_ws import Handshake, origin_allowed


def handshake(origin: str | None, host: str = "app.example:8000", **scope: Any) -> Handshake:
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return Handshake.from_asgi({"type": "websocket", "headers": headers, **scope})


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (None, "app.example", True),  # not a browser
        ("http://app.example:8000", "app.example:8000", True),
        ("https://app.example", "app.example", True),  # TLS ended at a proxy
        ("https://app.example", "app.example:443", True),
        ("http://app.example", "app.example:8000", False),
        ("http://evil.example:8000", "app.example:8000", False),
        ("http://app.example.evil.example", "app.example", False),
        ("null", "app.example", False),
        ("http://[::1]:8000", "[::1]:8000", True),
        ("http://app.example:notaport", "app.example", False),
        ("http://app.example", "app.example:notaport", False),  # a Host header gone wrong
    ],
)
def test_same_origin_by_default(origin: str | None, host: str, allowed: bool) -> None:
    assert origin_allowed(handshake(origin, host), None) is allowed


@pytest.mark.parametrize(
    "origin", ["http://[", "https://a]b", "http://[::1", "http://a:99999", "http://a:-1", "//", ""]
)
@pytest.mark.parametrize("allowed_origins", [None, ["https://shop.example"]])
def test_a_malformed_origin_is_refused_not_raised(
    origin: str, allowed_origins: list[str] | None
) -> None:
    assert origin_allowed(handshake(origin), allowed_origins) is False


def test_same_origin_needs_a_host_header() -> None:
    bare = Handshake.from_asgi({"headers": [(b"origin", b"http://a.example")]})
    assert not origin_allowed(bare, None)


def test_allow_lists() -> None:
    request = handshake("https://Shop.Example")
    assert origin_allowed(request, ["https://shop.example"])
    assert origin_allowed(request, ["https://shop.example:443/"])
    assert not origin_allowed(request, ["http://shop.example"])
    assert not origin_allowed(request, [])
    assert origin_allowed(request, ["*"])
    assert not origin_allowed(handshake("garbage"), ["https://shop.example"])


def test_from_asgi_reads_everything_an_authenticate_hook_needs() -> None:
    scope = {
        "type": "websocket",
        "path": "/ws",
        "scheme": "wss",
        "query_string": b"token=abc&token=def&x=1",
        "client": ["10.0.0.1", 5000],
        "subprotocols": ["budget-ws.v1", "other"],
        "headers": [
            (b"Cookie", b"session=s1; theme=dark"),
            (b"X-Forwarded-For", b"1.2.3.4"),
            (b"x-forwarded-for", b"5.6.7.8"),
        ],
    }
    described = Handshake.from_asgi(scope)
    assert described.path == "/ws"
    assert described.scheme == "wss"
    assert described.query == {"token": "abc", "x": "1"}
    assert described.cookies == {"session": "s1", "theme": "dark"}
    assert described.headers["x-forwarded-for"] == "1.2.3.4, 5.6.7.8"
    assert described.client == ("10.0.0.1", 5000)
    assert described.subprotocols == ("budget-ws.v1", "other")
    assert described.origin is None
    assert described.scope is scope


def test_malformed_cookies_are_ignored() -> None:
    described = Handshake.from_asgi({"headers": [(b"cookie", b'a="unterminated')]})
    assert described.cookies == {}
