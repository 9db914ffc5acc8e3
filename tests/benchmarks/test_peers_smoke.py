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


NATIVE_CONTENDERS = ["budget_ws", "websockets", "native"]
if importlib.util.find_spec("picows") is not None:
    NATIVE_CONTENDERS.append("picows")


@pytest.mark.timeout(120)
def test_the_native_server_and_picows_deliver_everything_and_are_compared(
    tmp_path: Path,
) -> None:
    output = tmp_path / "peers.json"
    options = [
        "--contenders", *NATIVE_CONTENDERS, "--scenarios", "fanout", "idle", "--connections",
        "20", "--payload-bytes", "200", "--events", "5", "--idle-connections", "20",
        "--drain", "20", "--json-file", str(output),
    ]  # fmt: skip
    assert peers.main(options) == 0
    report = json.loads(output.read_text())
    results = report["results"]
    seen = {(r["scenario"], r["contender"], r["mode"]) for r in results}
    for contender in NATIVE_CONTENDERS:
        for scenario, mode in (("fanout", "burst"), ("fanout", "steady"), ("idle", "idle")):
            assert (scenario, contender, mode) in seen
    parameters = report["environment"]["parameters"]
    assert parameters["loop"] == "asyncio"
    assert "native" in parameters["loop_contenders"]
    for result in results:
        assert result["error"] is None, result
        assert result["connect_ms"]["p99"] >= result["handshake_ms"]["p99"] > 0, result
        if result["contender"] in ("native", "websockets", "picows"):
            assert result["server_loop"].startswith("asyncio."), result
        if result["scenario"] == "fanout":
            assert result["delivered"] == result["expected"] > 0, result
            assert result["cpu_us_per_delivery"] > 0, result
    # native / each of its peers, in every configuration, with the figures of the targets.
    entries = report["ratios_native_to"]
    assert {(e["against"], e["mode"]) for e in entries} == {
        (peer, mode) for peer in NATIVE_CONTENDERS if peer != "native"
        for mode in ("burst", "steady", "idle")
    }  # fmt: skip
    for entry in entries:
        figures = ("cpu",) if entry["mode"] != "idle" else ("rss", "connect_p99", "handshake_p99")
        assert all(entry[figure] is not None for figure in figures), entry
    checks = [v["check"] for v in report["verdicts"] if v["check"].startswith("native")]
    assert any("x websockets <= 1" in check for check in checks), checks
    assert any("x budget_ws on uvicorn <= 0.5" in check for check in checks), checks
    assert any("x budget_ws on uvicorn <= 1" in check for check in checks), checks
    assert any("KiB/connection <= 16" in check for check in checks), checks
    assert any("connect + subscribe p99" in check for check in checks), checks


@pytest.mark.timeout(60)
def test_the_servers_without_uvicorn_run_on_uvloop(tmp_path: Path) -> None:
    pytest.importorskip("uvloop")
    contenders = [name for name in NATIVE_CONTENDERS if name != "budget_ws"]
    output = tmp_path / "peers.json"
    options = [
        "--contenders", *contenders, "--scenarios", "fanout", "--connections", "20",
        "--payload-bytes", "200", "--events", "5", "--steady-rate", "0", "--loop", "uvloop",
        "--drain", "10", "--json-file", str(output),
    ]  # fmt: skip
    assert peers.main(options) == 0
    report = json.loads(output.read_text())
    assert report["environment"]["parameters"]["loop"] == "uvloop"
    assert {r["contender"] for r in report["results"]} == set(contenders)
    for result in report["results"]:
        assert result["server_loop"].startswith("uvloop."), result
        assert result["delivered"] == result["expected"] > 0, result


def test_native_and_picows_refuse_deflate() -> None:
    with pytest.raises(SystemExit) as exit_info:
        peers.main(["--contenders", "native", "--deflate", "--scenarios", "idle"])
    assert exit_info.value.code == 2
