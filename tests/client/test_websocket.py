"""URLs and handshake headers of the client."""

from __future__ import annotations

import pytest

from budget_ws import InvalidURL
from budget_ws.client._websocket import client_url, handshake_headers


@pytest.mark.parametrize(
    ("url", "query", "expected"),
    [
        ("ws://127.0.0.1:8000/ws", None, "ws://127.0.0.1:8000/ws"),
        ("http://127.0.0.1:8000/ws", None, "ws://127.0.0.1:8000/ws"),
        ("HTTPS://example.test/ws", None, "wss://example.test/ws"),
        ("wss://example.test", None, "wss://example.test/"),
        ("ws://h/ws?a=1%202", None, "ws://h/ws?a=1%202"),
        ("ws://h/ws?a=1", {"token": "x y"}, "ws://h/ws?a=1&token=x+y"),
        ("ws://h/ws", {"token": "t"}, "ws://h/ws?token=t"),
    ],
)
def test_urls(url: str, query: dict[str, str] | None, expected: str) -> None:
    assert client_url(url, query) == expected


@pytest.mark.parametrize(
    "url",
    [
        "ftp://h/ws",
        "/ws",
        "ws:///ws",
        "ws://h/ws#top",
        "ws://h:99999/ws",
        "nonsense",
        "ws://user@h/ws",  # a user without a password: websockets refuses it
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidURL):
        client_url(url)


def test_headers_and_cookies() -> None:
    assert handshake_headers(None, None) == []
    assert handshake_headers({"Authorization": "Bearer x"}, {"a": "1", "b": "2"}) == [
        ("Authorization", "Bearer x"),
        ("Cookie", "a=1; b=2"),
    ]
    assert handshake_headers([("X-A", "1"), ("X-A", "2")], None) == [("X-A", "1"), ("X-A", "2")]
