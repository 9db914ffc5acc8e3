"""The README's first command, `./scripts/demo`, serves the web demo."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_scripts_demo_serves_the_family_budget(tmp_path: Path) -> None:
    port = free_port()
    environment = {**os.environ, "BUDGET_DEMO_DB": str(tmp_path / "demo.sqlite3")}
    demo = subprocess.Popen(
        [str(ROOT / "scripts" / "demo"), "--port", str(port)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert demo.poll() is None, demo.stdout.read() if demo.stdout else ""
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/", follow_redirects=True)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise AssertionError("the demo did not answer within 60 s")
        assert response.status_code == 200
        assert "alice" in response.text
        script = httpx.get(f"http://127.0.0.1:{port}/budget-ws/budget-ws.js")
        assert script.status_code == 200
    finally:
        demo.terminate()
        output, _ = demo.communicate(timeout=20)
    assert f"http://127.0.0.1:{port}/" in output
