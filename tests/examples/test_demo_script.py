"""The README's first command, `./scripts/demo`, is live on a fresh clone.

The demo runs from a copy of the repository with no `.venv`, so `scripts/demo` creates
and fills its own environment exactly as it does for a new user; nothing of the test
suite's environment leaks into it. A real WebSocket client then sees a fact added through
the HTML form arrive as an event, as a second tab would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.servers import free_port
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin, Subprotocol

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = "budget-ws.v1"


def fresh_clone(destination: Path) -> Path:
    """The repository's files as a clone would have them (tracked, and new unignored ones)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def frames(tab: ClientConnection) -> Iterator[dict[str, Any]]:
    """The frames ``tab`` receives, one by one: a message may carry several, one a line."""
    while True:
        for line in str(tab.recv(timeout=10)).splitlines():
            if line:
                yield json.loads(line)


def wait_for_http(url: str, demo: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if demo.poll() is not None:
            output = demo.stdout.read() if demo.stdout else ""
            raise AssertionError(f"./scripts/demo exited with {demo.returncode}:\n{output}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.3)
    raise AssertionError(f"the demo did not answer within {timeout:.0f} s")


@pytest.mark.timeout(300)
def test_scripts_demo_on_a_fresh_clone_delivers_a_live_event(tmp_path: Path) -> None:
    clone = fresh_clone(tmp_path / "clone")
    assert not (clone / ".venv").exists()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # The environment of a new user's shell: none of this test run's virtualenv.
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    environment["PATH"] = os.pathsep.join(
        entry
        for entry in environment.get("PATH", "").split(os.pathsep)
        if not entry.startswith(str(ROOT))
    )
    environment["BUDGET_DEMO_DB"] = str(tmp_path / "demo.sqlite3")
    demo = subprocess.Popen(
        [str(clone / "scripts" / "demo"), "--port", str(port)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_http(base + "/", demo, timeout=240)
        with httpx.Client(base_url=base) as browser:
            login = browser.post("/login", data={"user": "alice"})
            assert login.status_code == 303
            page = browser.get(login.headers["location"])
            assert page.status_code == 200
            topic = re.search(r'data-topic="([^"]+)"', page.text)
            budget = re.search(r'action="/budgets/(\d+)/facts"', page.text)
            article = re.search(r'name="article_id".*?<option value="(\d+)"', page.text, re.S)
            center = re.search(
                r'name="financial_center_id".*?<option value="(\d+)"', page.text, re.S
            )
            assert topic, page.text
            assert budget, page.text
            assert article, page.text
            assert center, page.text

            with connect(
                f"ws://127.0.0.1:{port}/ws",
                subprotocols=[Subprotocol(PROTOCOL)],
                origin=Origin(base),
                additional_headers={"Cookie": f"demo_user={browser.cookies['demo_user']}"},
                open_timeout=10,
            ) as tab:
                received = frames(tab)
                assert next(received)["op"] == "welcome"
                tab.send(json.dumps({"op": "subscribe", "topic": topic[1], "id": 1}))
                # Skips the server's own subscription of the tab to alice's user stream.
                answer = next(frame for frame in received if frame.get("id") == 1)
                assert answer["op"] == "subscribed"

                added = browser.post(
                    f"/budgets/{budget[1]}/facts",
                    data={
                        "amount": "12.34",
                        "article_id": article[1],
                        "financial_center_id": center[1],
                    },
                )
                assert added.status_code == 303

                frame = next(received)
                assert frame["event"] == "budget_fact_created"
                assert frame["topic"] == topic[1]
                assert frame["data"]["amount"] == "12.34"
                assert frame["data"]["author"] == "alice"
    finally:
        demo.terminate()
        output, _ = demo.communicate(timeout=20)
    assert f"http://127.0.0.1:{port}/" in output
    assert "No supported WebSocket library" not in output, output
