"""Serves the bundled browser client from the installed package, with HTTP caching."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from importlib import resources
from urllib.parse import parse_qs

from .asgi import Receive, Scope, Send

__all__ = ["CLIENT_FILES", "ClientAssets", "client_url"]

CLIENT_FILES: Mapping[str, bytes] = {
    "budget-ws.js": b"text/javascript; charset=utf-8",
    "budget-ws.d.ts": b"application/typescript; charset=utf-8",
}
"""The files of the browser client and their content types."""


def client_url(prefix: str = "/budget-ws") -> str:
    """The URL of the ES module, for ``<script type="module">`` or ``import``.

    Its query string holds a hash of the file's content, so browsers may cache it for a
    year and still fetch the new file as soon as it changes, in a release or between two
    development commits alike.
    """
    return f"{prefix.rstrip('/')}/budget-ws.js?v={_bundled()['budget-ws.js'][1]}"


@functools.cache
def _bundled() -> dict[str, tuple[bytes, str]]:
    """Each client file's content and the hash that names that content (read once)."""
    package = resources.files("budget_ws") / "static"
    files = {}
    for name in CLIENT_FILES:
        body = (package / name).read_bytes()
        files[name] = (body, hashlib.sha256(body).hexdigest()[:16])
    return files


class ClientAssets:
    """An ASGI app serving ``budget-ws.js`` and ``budget-ws.d.ts``; mount it under a prefix.

    Responses carry an ``ETag``. A request whose ``v`` query parameter is the hash of the
    file's current content (see :func:`client_url`) may be cached for a year; others are
    revalidated each time and answered ``304 Not Modified`` while unchanged.
    """

    def __init__(self) -> None:
        self._files: dict[str, tuple[bytes, bytes, bytes, str]] = {}
        for name, (body, digest) in _bundled().items():
            etag = b'"' + digest.encode() + b'"'
            self._files[name] = (body, CLIENT_FILES[name], etag, digest)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        name = str(scope["path"]).rsplit("/", 1)[-1]
        found = self._files.get(name)
        if found is None or scope["method"] not in ("GET", "HEAD"):
            status, body = (404, b"not found\n") if found is None else (405, b"use GET\n")
            headers = [(b"content-type", b"text/plain; charset=utf-8")]
            if status == 405:
                headers.append((b"allow", b"GET, HEAD"))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        body, content_type, etag, digest = found
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        # Only the URL naming this very content may be cached for good: an old hash must
        # not pin today's file under yesterday's name, nor the other way round.
        current = query.get("v") == [digest]
        cache = b"public, max-age=31536000, immutable" if current else b"no-cache"
        headers = [(b"etag", etag), (b"cache-control", cache)]
        if_none_match = dict(scope.get("headers", ())).get(b"if-none-match")
        if if_none_match is not None and etag in if_none_match:
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        headers += [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )
