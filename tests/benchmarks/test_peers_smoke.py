"""The real-socket comparison (``benchmarks/peers.py``) runs end to end on a tiny load.

Every contender's server really runs (uvicorn, or a plain ``websockets`` server) with
real clients in other processes; each scenario must deliver every event to every
healthy client and produce its figures: a steady row beside each burst row, the stalled
clients' endings, the provenance of the run. No timing or ratio is asserted: the real
runs are not tests (``benchmarks/README.md``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `benchmarks` lives beside `src`, not in the package
    sys.path.insert(0, str(ROOT))

measure = importlib.import_module("benchmarks.measure")
peers = importlib.import_module("benchmarks.peers")

pytestmark = pytest.mark.timeout(300)

CONTENDERS = ["budget_ws", "naive", "websockets", "floor"]
if importlib.util.find_spec("broadcaster") is not None:
    CONTENDERS.append("broadcaster")


def test_every_scenario_delivers_everything_for_every_contender(tmp_path: Path) -> None:
    output = tmp_path / "peers.json"
    options = [
        "--contenders", *CONTENDERS, "--connections", "20", "--payload-bytes", "200", "2048",
        "--events", "5", "--stalled-connections", "10", "--stalled-events", "30",
        "--idle-connections", "20", "--drain", "20", "--json-file", str(output),
    ]  # fmt: skip
    assert peers.main(options) == 0
    report = json.loads(output.read_text())
    results = report["results"]
    seen = {(r["scenario"], r["contender"], r["payload_bytes"], r["stalled"], r["mode"])
            for r in results}  # fmt: skip
    for contender in CONTENDERS:
        for key in [("fanout", contender, 200, 0, "burst"), ("fanout", contender, 200, 0, "steady"),
                    ("fanout", contender, 2048, 0, "burst"),
                    ("fanout", contender, 2048, 0, "steady"),
                    ("stalled", contender, 2048, 0, "steady"),
                    ("stalled", contender, 2048, 5, "steady"),
                    ("idle", contender, 0, 0, "idle")]:  # fmt: skip
            assert key in seen, key
    environment = report["environment"]
    for part in ("harness", "library"):
        assert environment[part]["commit"], environment
    assert environment["machine"]["cpus"] > 0
    assert len(environment["load_before"]) == len(environment["load_after"]) == 3
    assert environment["parameters"]["steady_rate"] == 50
    for result in results:
        assert result["error"] is None, result
        assert result["rss_idle_kib_per_connection"] > 0, result
        assert result["connect_ms"]["p99"] > 0, result
        if result["scenario"] == "idle":
            continue
        assert result["delivered"] == result["expected"] > 0, result
        assert result["cpu_seconds"] > 0, result
        # The one definition: CPU time over the deliveries made.
        expected_cpu = measure.cpu_us_per_delivery(result["cpu_seconds"], result["delivered"])
        assert result["cpu_us_per_delivery"] == expected_cpu, result
        assert result["messages"] > 0, result
        assert result["latency_ms"]["p99"] >= result["latency_ms"]["p50"] > 0, result
        assert result["wall_seconds"] > 0, result
    for result in results:
        if result["scenario"] == "stalled" and result["stalled"]:
            assert len(result["stalled_clients"]) == result["stalled"], result
            for client in result["stalled_clients"]:
                assert client["bytes_read"] > 0, client
                assert set(client) == {"bytes_read", "events", "close_code", "close_reason",
                                       "closed"}, client  # fmt: skip
    assert report["verdicts"]
    assert all(isinstance(verdict["met"], bool) for verdict in report["verdicts"])
    fanout_ratios = [r for r in report["ratios_budget_ws_to"] if r["scenario"] == "fanout"]
    assert {r["against"] for r in fanout_ratios} == set(CONTENDERS) - {"budget_ws"}
    for entry in fanout_ratios:
        assert all(entry[figure] is not None for figure in ("cpu", "p99", "wall", "rss")), entry
