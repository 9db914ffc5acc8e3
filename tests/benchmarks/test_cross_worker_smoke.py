"""The cross-worker benchmark runs end to end on a tiny load; no timing is asserted.

Two uvicorn workers, 10 clients, 20 events in one second. budget_ws must deliver every
event to every client and cost exactly one Redis round trip (one EVALSHA) per publish.
The run uses a redis-server of its own (``--private-redis``), so that other tests using
the shared Redis on 127.0.0.1:6379 cannot show up in its ``INFO commandstats``.

encode/broadcaster is measured too when it is installed (``pip install
'broadcaster[redis]'``; it is not a project dependency); without it those checks are
skipped, the budget_ws ones never are.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `benchmarks` lives beside `src`, not in the package
    sys.path.insert(0, str(ROOT))

cross_worker = importlib.import_module("benchmarks.cross_worker")

pytestmark = [
    pytest.mark.redis,
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

CLIENTS = 10
EVENTS = 20
HAVE_BROADCASTER = importlib.util.find_spec("broadcaster") is not None


def run_benchmark(capsys: pytest.CaptureFixture[str], *contenders: str) -> dict[str, Any]:
    options = f"--scenario rate --clients {CLIENTS} --rate {EVENTS} --duration 1"
    options += " --client-processes 2 --private-redis --json"
    code = cross_worker.main([*options.split(), "--contenders", *contenders])
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    report["exit_code"] = code
    return report


def test_budget_ws_delivers_everything_with_one_round_trip_per_publish(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = run_benchmark(capsys, "budget_ws")

    [run] = report["runs"]
    assert run["error"] is None
    assert run["published"] == EVENTS
    assert run["expected"] == CLIENTS * EVENTS
    assert run["delivered"] == CLIENTS * EVENTS, run
    assert run["complete_clients"] == CLIENTS
    assert run["delivered_by_worker"] == {"A": CLIENTS * EVENTS // 2, "B": CLIENTS * EVENTS // 2}
    # Server side: one script call per publish, which publishes once.
    calls = run["redis_calls"]
    assert calls.get("evalsha", 0) + calls.get("eval", 0) == EVENTS, calls
    assert calls.get("publish", 0) == EVENTS, calls
    assert "script|load" not in calls  # loaded during the warm-up, not per publish
    # Publisher side: the only command sent per publish is that script call.
    setup = {"PING", "HELLO", "CLIENT", "AUTH", "SELECT"}  # health checks, new connections
    trips = {name: count for name, count in run["round_trips"].items() if name not in setup}
    assert sum(trips.values()) == EVENTS, trips
    assert trips.get("EVALSHA", 0) + trips.get("EVAL", 0) == EVENTS, trips
    assert run["round_trips_per_event"] == 1
    assert run["latency_ms"]["p50"] > 0
    assert run["deliveries_per_second"] > 0
    assert report["exit_code"] == 0


@pytest.mark.skipif(not HAVE_BROADCASTER, reason="broadcaster is not installed")
def test_broadcaster_runs_on_the_same_app_shape(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_benchmark(capsys, "broadcaster", "broadcaster-primed")

    plain, primed = report["runs"]
    for run in (plain, primed):
        assert run["error"] is None
        assert run["published"] == EVENTS
        assert run["redis_calls"].get("publish") == EVENTS
        assert run["round_trips"].get("PUBLISH") == EVENTS
    # The README pattern loses events to races (a whole worker, or early subscribers);
    # only the primed variant is expected to deliver everything.
    assert 0 <= plain["delivered"] <= plain["expected"]
    assert primed["delivered"] == primed["expected"] == CLIENTS * EVENTS, primed


def test_two_native_workers_share_one_port_and_deliver_everything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = run_benchmark(capsys, "native")

    [run] = report["runs"]
    assert run["error"] is None
    assert run["published"] == EVENTS
    assert run["delivered"] == run["expected"] == CLIENTS * EVENTS, run
    assert run["complete_clients"] == CLIENTS
    # One port: the clients cannot tell the workers apart; the workers count their own.
    assert run["delivered_by_worker"] == {"A+B": CLIENTS * EVENTS}
    assert set(run["connections_by_worker"]) == {"A", "B"}
    assert sum(run["connections_by_worker"].values()) == CLIENTS
    assert run["round_trips_per_event"] == 1
    assert run["latency_ms"]["p50"] > 0
    assert run["worker_cpu_us_per_delivery"] > 0
    assert report["ratios_native_to_budget_ws"] == []  # budget_ws did not run
    assert report["exit_code"] == 0
