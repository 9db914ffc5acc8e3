"""The hostile-client benchmark (``benchmarks/hostile.py``) runs end to end on a tiny load.

A real server, two healthy clients and one hostile client in other processes, a couple of
seconds per phase: every figure must be produced, the hostile client must have been
closed by the server (or still be within its byte burst), and the page's table must
render from the file. No timing, ratio or verdict outcome is asserted: the real runs are
not tests (``benchmarks/README.md``).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `benchmarks` lives beside `src`, not in the package
    sys.path.insert(0, str(ROOT))

hostile = importlib.import_module("benchmarks.hostile")
tables = importlib.import_module("benchmarks.tables")

from budget_ws import Limits  # noqa: E402


def test_healthy_and_hostile_phases_produce_every_figure(tmp_path: Path) -> None:
    output = tmp_path / "hostile.json"
    options = [
        "--healthy", "2", "--hostile", "1", "--duration", "2", "--rate", "50",
        "--lead", "0.3", "--max-connects", "3", "--drain", "10", "--max-wait", "0",
        "--json-file", str(output),
    ]  # fmt: skip
    assert hostile.main(options) == 0
    document = json.loads(output.read_text())
    run = document["run"]
    assert run["error"] is None, run
    assert run["library"].endswith("budget_ws/__init__.py")
    assert run["frame_bytes"] > Limits().byte_burst // 10
    assert set(run["rss_kib"]) == {"start", "peak", "end", "released"}
    assert all(value > 0 for value in run["rss_kib"].values()), run["rss_kib"]
    for name in ("quiet", "hostile"):
        phase = run[name]
        assert phase["expected"] == 2 * 100, phase
        assert phase["delivered"] == phase["expected"], phase
        assert phase["latency_ms"]["p99"] >= phase["latency_ms"]["p50"] > 0, phase
        assert phase["cpu_seconds"] > 0, phase
        assert phase["wall_seconds"] > 0, phase
        assert phase["rss_kib"]["peak"] >= phase["rss_kib"]["before"] > 0, phase
        assert len(phase["load"]) == 3, phase
    assert run["quiet"]["hostile_clients"] == []
    (client,) = run["hostile"]["hostile_clients"]
    assert 1 <= client["connects"] <= 3, client
    assert client["frames_sent"] == sum(a["frames_sent"] for a in client["attempts"]) > 0
    within = Limits().byte_burst // run["frame_bytes"] + 1
    for attempt in client["attempts"]:
        # Closed by the server (4029: bytes beyond the burst), or not yet past the burst.
        assert attempt["close_code"] == 4029 or attempt["frames_sent"] <= within, attempt
    assert client["attempts"][0]["close_code"] == 4029, client
    assert document["ratios_hostile_to_quiet"]["p99"] > 0
    environment = document["environment"]
    assert environment["benchmark"] == "hostile"
    assert len(environment["load_before"]) == len(environment["load_after"]) == 3
    checks = [verdict["check"] for verdict in document["verdicts"]]
    assert len(checks) == 4, checks
    assert any("<= 2 x" in check for check in checks), checks
    assert all(isinstance(verdict["met"], bool) for verdict in document["verdicts"])

    text = tables.hostile(tables.Results(hostile=[("hostile", document)]))
    assert "| `hostile` |" in text
    assert "4029 (more than" in text
