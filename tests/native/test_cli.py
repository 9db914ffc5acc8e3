"""``python -m budget_ws serve MODULE:ATTR``: what it serves, its options, its errors, and
its shutdown on SIGTERM (``tests/native/reuse_port_app.py`` holds the targets)."""

from __future__ import annotations

import json

import anyio
import pytest
from tests.support.servers import NativeProcess, free_port
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

pytestmark = pytest.mark.anyio

PROTOCOL = Subprotocol("budget-ws.v1")
APP = "tests.native.reuse_port_app"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_a_web_socket_app_is_served_with_its_settings_until_sigterm(loop: str) -> None:
    port = free_port()
    process = NativeProcess(f"{APP}:make_app", port, "--path", "/live", "--loop", loop)
    await process.start()
    try:
        assert f"budget_ws: serving ws://127.0.0.1:{port}/live".encode() in process.stderr
        with pytest.raises(InvalidStatus) as info:  # the app's authenticate
            async with connect(f"ws://127.0.0.1:{port}/live", subprotocols=[PROTOCOL]):
                pass
        assert (info.value.response.status_code, info.value.response.body) == (
            401,
            b"token required\n",
        )
        with pytest.raises(InvalidStatus) as info:  # --path
            async with connect(f"ws://127.0.0.1:{port}/ws?token=secret", subprotocols=[PROTOCOL]):
                pass
        assert info.value.response.status_code == 404
        async with connect(
            f"ws://127.0.0.1:{port}/live?token=secret", subprotocols=[PROTOCOL], ping_interval=None
        ) as ws:
            with anyio.fail_after(5):
                welcome = json.loads(str(await ws.recv()))
                worker = json.loads(str(await ws.recv()))
            assert welcome["op"] == "welcome"
            assert worker["data"] == {"pid": process.pid}
            assert await process.stop() == 0
            with pytest.raises(ConnectionClosed) as closed:
                with anyio.fail_after(5):
                    await ws.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1012, "server shutting down")
        assert b"budget_ws: shutting down" in process.stderr
    finally:
        await process.stop()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (APP, f"'{APP}' is not MODULE:ATTR"),
        (f"{APP}:not_a_manager", f"{APP}:not_a_manager is dict, not a ConnectionManager"),
        (f"{APP}:missing", "has no attribute 'missing'"),
        ("tests.native.no_such_module:manager", "No module named 'tests.native.no_such_module'"),
    ],
    ids=["no-attribute", "not-a-manager", "missing-attribute", "missing-module"],
)
async def test_a_target_that_is_not_a_manager_is_refused(target: str, message: str) -> None:
    status, stderr = await NativeProcess(target, free_port()).run()
    assert status == 2
    assert "usage: python -m budget_ws serve" in stderr
    assert message in stderr
