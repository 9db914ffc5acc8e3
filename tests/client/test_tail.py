"""``python -m budget_ws tail``: events as JSON lines, end to end against a real server."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from tests.client.app import REGISTRY, TOKEN, Tick, authenticate_token, running, wait_until

from budget_ws import ConnectionManager, MemoryBackend, Position
from budget_ws.__main__ import main

pytestmark = pytest.mark.anyio


def manager() -> ConnectionManager:
    return ConnectionManager(MemoryBackend(), registry=REGISTRY, shutdown_timeout=1)


@asynccontextmanager
async def tail(*arguments: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m budget_ws tail ...`` in a subprocess, killed if still running after."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "budget_ws", "tail", *arguments,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def finished(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    async with asyncio.timeout(20):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def subscribed(running_manager: ConnectionManager, topic: str) -> bool:
    return bool(list(running_manager.topic_connections(topic)))


async def test_tail_prints_events_as_json_lines_and_stops_after_count() -> None:
    async with running(manager()) as server:
        async with tail(server.url, "--topic", "budget:1", "--count", "3") as process:
            await wait_until(lambda: subscribed(server.manager, "budget:1"), timeout=20)
            for n in (1, 2, 3, 4):
                await server.manager.publish(Tick(n=n), topic="budget:1")
            status, stdout, stderr = await finished(process)
        epoch = (await server.manager.position("budget:1")).epoch
    assert status == 0, stderr
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert lines == [
        {"event": "client_test_tick", "data": {"n": n}, "topic": "budget:1", "offset": n,
         "epoch": epoch}
        for n in (1, 2, 3)
    ]  # fmt: skip
    assert "connected to" in stderr


async def test_tail_reports_a_refused_connection_without_a_traceback() -> None:
    async with running(manager(), authenticate=authenticate_token) as server:
        async with tail(server.url, "--topic", "t") as process:
            status, stdout, stderr = await finished(process)
    assert status == 1
    assert stdout == ""
    assert "refused the WebSocket handshake: HTTP 403 (bad token)" in stderr
    assert "Traceback" not in stderr


async def test_ctrl_c_exits_quietly() -> None:
    async with running(manager()) as server:
        async with tail(server.url, "--topic", "t") as process:
            await wait_until(lambda: subscribed(server.manager, "t"), timeout=20)
            process.send_signal(signal.SIGINT)
            status, _, stderr = await finished(process)
        await wait_until(lambda: not server.manager.connections)
    assert status == 0
    assert "Traceback" not in stderr
    assert "KeyboardInterrupt" not in stderr


# The same command in this process (in a thread: it runs its own event loop), where
# coverage sees it.


async def run_main(*arguments: str) -> int:
    return await asyncio.to_thread(main, ["tail", *arguments])


async def test_headers_cookies_resync_lines_and_positions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with running(manager(), authenticate=authenticate_token) as server:
        await server.manager.publish(Tick(n=1), topic="a")
        epoch = (await server.manager.position("a")).epoch
        command = asyncio.create_task(
            run_main(
                server.url,
                "--topic", "a", "--position", f"1:{epoch}",
                "--topic", "b", "--position", "5:gone",
                "--header", f"Authorization: Bearer {TOKEN}", "--cookie", "x=y",
                "--count", "2",
            )
        )  # fmt: skip
        await wait_until(lambda: subscribed(server.manager, "b"), timeout=10)
        await server.manager.publish(Tick(n=2), topic="a")
        await server.manager.publish(Tick(n=1), topic="b")
        assert await asyncio.wait_for(command, 10) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["op"] == "resync"
    assert (lines[0]["topic"], lines[0]["why"]) == ("b", "not_recovered")
    assert lines[0]["position"]["offset"] == 0
    assert sorted((line["topic"], line["offset"]) for line in lines[1:]) == [("a", 2), ("b", 1)]


async def test_count_zero_only_subscribes(capsys: pytest.CaptureFixture[str]) -> None:
    async with running(manager()) as server:
        assert await run_main(server.url, "--topic", "t", "--count", "0", "--quiet") == 0
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "")


async def test_a_refused_subscription_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    async with running(manager()) as server:
        assert await run_main(server.url, "--topic", "bad topic!", "-q") == 1
    assert "refused (invalid_topic)" in capsys.readouterr().err


async def test_giving_up_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_main("ws://127.0.0.1:9/ws", "--topic", "t", "--max-attempts", "1") == 1
    assert "gave up after 1 attempts" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["ftp://127.0.0.1/ws", "--topic", "t"], "not a ws:// or wss:// URL"),
        (["ws://h/ws", "--topic", "t", "--position", "7"], "expected OFFSET:EPOCH"),
        (["ws://h/ws", "--topic", "t", "--position", "x:e"], "expected OFFSET:EPOCH"),
        (["ws://h/ws", "--topic", "t", "--position", "1:e", "--position", "2:e"], "at most one"),
        (["ws://h/ws", "--topic", "t", "--header", "no colon"], "'Name: value'"),
        (["ws://h/ws", "--topic", "t", "--cookie", "novalue"], "name=value"),
        (["ws://h/ws", "--topic", "t", "--max-attempts", "0"], "max_attempts"),
        (["ws://h/ws"], "--topic"),
    ],
)
def test_usage_errors_exit_2(
    arguments: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["tail", *arguments])
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err


def test_item_json_of_an_event_without_a_topic() -> None:
    from budget_ws.client import EventReceived
    from budget_ws.client._tail import item_json

    item = EventReceived("e", {"é": 1}, None, None, None)
    assert item_json(item) == '{"event":"e","data":{"é":1}}'
    positioned = EventReceived("e", None, "t", Position(3, "x"), None)
    assert json.loads(item_json(positioned)) == {
        "event": "e", "data": None, "topic": "t", "offset": 3, "epoch": "x",
    }  # fmt: skip
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    traced = EventReceived("e", None, "t", Position(3, "x"), None, traceparent)
    assert json.loads(item_json(traced)) == {
        "event": "e", "data": None, "topic": "t", "offset": 3, "epoch": "x",
        "traceparent": traceparent,
    }  # fmt: skip


def test_the_other_commands_do_not_import_websockets() -> None:
    import subprocess

    code = (
        "import sys, budget_ws.__main__ as m;"
        "sys.modules['websockets'] = None;"  # as if it were not installed
        "sys.argv = ['x', 'schema'];"
        "status = m.main(['schema']);"
        "print('websockets' in sys.modules and sys.modules['websockets'] is not None)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("False")
    missing = subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.modules['websockets'] = None; import budget_ws.__main__ as m;"
         "m.main(['tail', 'ws://h/ws', '--topic', 't'])"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert missing.returncode == 2
    assert "pip install 'budget-ws[client]'" in missing.stderr
