"""``python -m budget_ws serve`` run in this process (``test_cli.py`` runs it as a
process of its own): the whole command, from its arguments to its shutdown on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import threading
from typing import Any

import pytest
from tests.support.servers import free_port, wait_listening
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from budget_ws.__main__ import main

APP = "tests.native.reuse_port_app"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_serves_until_sigterm_then_closes_clients_with_1012(loop: str) -> None:
    port = free_port()
    seen: dict[str, Any] = {}

    def client() -> None:
        try:
            wait_listening(port)
            url = f"ws://127.0.0.1:{port}/ws"
            with connect(url, subprotocols=["budget-ws.v1"], open_timeout=5) as socket:  # type: ignore[list-item]
                seen["welcome"] = json.loads(socket.recv(timeout=5))
                os.kill(os.getpid(), signal.SIGTERM)  # what an orchestrator sends
                try:
                    while True:
                        socket.recv(timeout=5)
                except ConnectionClosed as closed:
                    seen["close"] = closed.rcvd
        finally:
            seen.setdefault("close", None)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        status = main(
            ["serve", f"{APP}:make_manager", "--port", str(port), "--reuse-port", "--loop", loop]
        )
    finally:
        thread.join(10)
    assert status == 0
    assert seen["welcome"]["op"] == "welcome"
    assert seen["close"] is not None
    assert (seen["close"].code, seen["close"].reason) == (1012, "server shutting down")


@pytest.mark.parametrize(
    "target",
    [f"{APP}:not_a_manager", f"{APP}:missing", "no_such_module_here:app", f"{APP}"],
)
def test_a_target_that_is_not_a_manager_exits_with_2(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", target, "--port", str(free_port())])
    assert exited.value.code == 2
    assert "serve" in capsys.readouterr().err
