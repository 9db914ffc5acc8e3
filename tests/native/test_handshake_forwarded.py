"""What the native server tells ``authenticate`` about the client: the address and scheme
a trusted proxy forwards, and ``wss`` when it serves TLS itself."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import connect

from budget_ws import ConnectionManager, Handshake
from budget_ws.native import NativeServer

pytestmark = pytest.mark.anyio

PROTOCOL: Any = "budget-ws.v1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the native server runs on asyncio only


async def _seen(server_options: dict[str, Any], headers: dict[str, str]) -> list[Handshake]:
    seen: list[Handshake] = []

    def authenticate(handshake: Handshake) -> None:
        seen.append(handshake)

    manager = ConnectionManager()
    async with manager, NativeServer(manager, authenticate=authenticate, **server_options) as s:
        async with connect(s.url, subprotocols=[PROTOCOL], additional_headers=headers) as ws:
            await ws.recv()
    return seen


async def test_a_trusted_proxy_names_the_client_and_the_scheme() -> None:
    headers = {"X-Forwarded-For": "203.0.113.7, 10.0.0.2", "X-Forwarded-Proto": "https"}
    [handshake] = await _seen({"forwarded_allow_ips": ["127.0.0.1", "10.0.0.2"]}, headers)
    assert handshake.client == ("203.0.113.7", 0)
    assert handshake.scheme == "wss"


async def test_an_untrusted_peer_cannot_claim_another_address() -> None:
    headers = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    [handshake] = await _seen({"forwarded_allow_ips": ["192.0.2.1"]}, headers)
    assert handshake.client is not None
    assert handshake.client[0] == "127.0.0.1"
    assert handshake.client[1] > 0
    assert handshake.scheme == "ws"


async def test_headers_query_and_cookies_reach_authenticate() -> None:
    manager = ConnectionManager()
    seen: list[Handshake] = []
    async with manager, NativeServer(manager, authenticate=seen.append) as server:
        url = server.url + "?token=abc&token=def"
        headers = {"Cookie": "session=s1; theme=dark", "Authorization": "Bearer t"}
        async with connect(url, subprotocols=[PROTOCOL], additional_headers=headers) as ws:
            await ws.recv()
    [handshake] = seen
    assert handshake.path == "/ws"
    assert handshake.query == {"token": "abc"}
    assert handshake.cookies == {"session": "s1", "theme": "dark"}
    assert handshake.headers["authorization"] == "Bearer t"
    assert handshake.subprotocols == ("budget-ws.v1",)


async def test_tls_is_served_as_wss(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    command = [
        *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
        *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
        *("-keyout", str(key), "-out", str(cert)),
    ]
    await anyio.run_process(command)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    manager = ConnectionManager()
    seen: list[Handshake] = []
    async with manager, NativeServer(manager, ssl=server_context, authenticate=seen.append) as s:
        assert s.url.startswith("wss://127.0.0.1:")
        async with connect(s.url, subprotocols=[PROTOCOL], ssl=client_context) as ws:
            assert '"op":"welcome"' in str(await ws.recv())
    assert seen[0].scheme == "wss"


async def test_a_trusted_proxy_that_spoke_plain_http_keeps_ws() -> None:
    headers = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "http"}
    [handshake] = await _seen({"forwarded_allow_ips": ["*"], "ssl": None}, headers)
    assert handshake.client == ("203.0.113.7", 0)
    assert handshake.scheme == "ws"
