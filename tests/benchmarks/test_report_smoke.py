"""The page generator (``benchmarks/report.py``) runs on a tiny made-up results set.

Nothing is measured or timed: the results are built from the harness's own dataclasses,
so the test breaks when the results format and the generator drift apart, and it runs
against the real ``docs/performance.md``, so a block without its markers is caught.
"""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `benchmarks` lives beside `src`, not in the package
    sys.path.insert(0, str(ROOT))

cross_worker = importlib.import_module("benchmarks.cross_worker")
fanout = importlib.import_module("benchmarks.fanout")
instructions = importlib.import_module("benchmarks.instructions")
peers = importlib.import_module("benchmarks.peers")
presence = importlib.import_module("benchmarks.presence")
provenance = importlib.import_module("benchmarks.provenance")
report = importlib.import_module("benchmarks.report")

PAGE = ROOT / "docs" / "performance.md"
PEER_PARAMETERS = {
    "scenarios": ["fanout", "stalled", "idle"], "connections": [10], "events": 4,
    "steady_rate": 50.0, "payload_bytes": [200], "stalled_connections": 10,
    "stalled_events": 30, "stalled_rate": 500.0, "idle_connections": 10, "ws": "wsproto",
    "deflate": False, "stalled_clients": 2, "stalled_receive_buffer": 4096,
}  # fmt: skip


PEER_CPU_US = {"budget_ws": 0.5, "floor": 5.0, "websockets": 1.0, "native": 0.25, "picows": 0.2}
"""CPU µs per delivery of the made-up peers runs, burst and steady alike."""


def peer_results(contenders: dict[str, float] = PEER_CPU_US) -> list[Any]:
    results = []
    for contender, cpu in contenders.items():
        for rate in (0.0, 50.0):
            delivered = 36 if contender == "floor" and rate else 40  # a shortfall to show
            run = peers.Measurement(
                "fanout", contender, 10, 4, 200, rate=rate, expected=40, delivered=delivered,
                messages=delivered, cpu_seconds=1e-4, cpu_us_per_delivery=cpu, wall_seconds=0.1,
                latency_ms={"p50": 1.0, "p99": 2.0}, rss_growth_kib=100,
            )  # fmt: skip
            results.append(run)
        for stalled in (0, 2):
            results.append(peers.Measurement(
                "stalled", contender, 10, 30, 2048, stalled=stalled, rate=500, expected=300,
                delivered=300, messages=300, cpu_us_per_delivery=cpu,
                latency_ms={"p50": 1.0, "p99": 2.0 + stalled}, rss_growth_kib=100 + 50 * stalled,
                stalled_clients=[{"bytes_read": 70_000, "events": 30, "close_code": 4000,
                                  "close_reason": "slow consumer", "closed": True}] * stalled,
            ))  # fmt: skip
        results.append(peers.Measurement("idle", contender, 10, 0, 0,
                                         rss_idle_kib_per_connection=10.0 + 2 * cpu,
                                         connect_ms={"p99": 3.0 + cpu},
                                         handshake_ms={"p99": 1.0 + cpu}))  # fmt: skip
    return results


def peers_document(parameters: dict[str, Any], found: list[Any]) -> dict[str, Any]:
    env = provenance.environment("peers", parameters) | {"load_after": [0.1, 0.1, 0.1]}
    return {"environment": env, "results": [asdict(r) | {"mode": r.mode} for r in found],
            "ratios_budget_ws_to": peers.ratios(found),
            "ratios_native_to": peers.ratios(found, "native", peers.NATIVE_PEERS),
            "verdicts": peers.verdicts(found)}  # fmt: skip


FANOUT_CPU_US = {("budget_ws", "burst"): 1.0, ("observed", "burst"): 1.1,
                 ("metrics", "burst"): 1.05, ("tracing", "burst"): 1.02,
                 ("budget_ws", "paced"): 2.0, ("observed", "paced"): 2.5,
                 ("metrics", "paced"): 2.2, ("tracing", "paced"): 2.0}  # fmt: skip
"""CPU µs per delivery of the made-up fan-out runs: the burst within its target (+10 %
<= +20 %), the steady stream not (+25 % > +10 %)."""


def fanout_document() -> dict[str, Any]:
    connections, events = 10, 4
    runs = [
        fanout.TimedRun(
            contender, connections, mode, events, seconds=0.01,
            cpu_seconds=cpu * connections * events / 1e6, publish_loop_seconds=0.005,
            publish_call_median=1e-4, publish_call_max=2e-4, publish_alone_median=1e-4,
            suspensions_per_publish=0, sends_by_publish=0, gc_seconds=0.0,
            gc_full_collections=0, frames=connections * events,
            messages=connections * (1 if mode == "burst" else events), complete=True,
        )
        for (contender, mode), cpu in FANOUT_CPU_US.items()
    ]  # fmt: skip
    parameters = {"connections": [connections], "events": events, "payload_bytes": 200,
                  "repeat": 1, "modes": ["burst", "paced"], "anyio_backend": "asyncio",
                  "contenders": ["budget_ws", "observed", "metrics", "tracing"], "memory": [],
                  "observed_targets": fanout.OBSERVED_TARGETS}  # fmt: skip
    packages = (*provenance.PACKAGES, *fanout.OBSERVABILITY_PACKAGES)
    env = provenance.environment("fanout", parameters, packages) | {"load_after": [0.1, 0.1, 0.1]}
    settings = {"connections": [connections], "events": events, "payload_bytes": 200,
                "frame_bytes": {"budget_ws": 289, "naive": 239}, "repeat": 1,
                "modes": ["burst", "paced"]}  # fmt: skip
    return fanout.results_document(env, settings, runs, [])


INSTRUCTIONS_PER_DELIVERY = {("budget_ws", "burst"): 4000, ("observed", "burst"): 4700,
                             ("metrics", "burst"): 4100, ("tracing", "burst"): 4500,
                             ("budget_ws", "paced"): 34000, ("observed", "paced"): 38000,
                             ("metrics", "paced"): 36000, ("tracing", "paced"): 35000}  # fmt: skip
"""Instructions per delivery of the made-up callgrind runs: the burst within its target
(+17.5 % <= +20 %), the steady stream not (+11.8 % > +10 %)."""


def instructions_document() -> dict[str, Any]:
    connections, events, low, high, setup = 10, 5, 1, 3, 1_000_000_000
    runs = [
        instructions.CallgrindRun(contender, mode, connections, events, rounds,
                                  setup + per_delivery * connections * events * rounds,
                                  complete=True)
        for (contender, mode), per_delivery in INSTRUCTIONS_PER_DELIVERY.items()
        for rounds in (low, high)
    ]  # fmt: skip
    parameters = {"connections": [connections], "events": events, "rounds": [low, high],
                  "payload_bytes": 200,
                  "modes": ["burst", "paced"],
                  "contenders": ["budget_ws", "observed", "metrics", "tracing"],
                  "observed_targets": fanout.OBSERVED_TARGETS}  # fmt: skip
    env = provenance.environment("instructions", parameters) | {"load_after": [0.1, 0.1, 0.1]}
    keys = ("connections", "events", "rounds", "payload_bytes", "modes", "contenders")
    settings = {key: parameters[key] for key in keys}
    return instructions.results_document(env, settings, runs)


PRESENCE_PARAMETERS = {
    "parts": ["redis-cost", "storm", "rows", "revocation"], "interval": 1.0,
    "storm_connections": 10, "steady_connections": 2, "steady_spacing": 1.2, "members": 10,
    "observers": 2, "concurrency": 5, "queries": 5, "rows": 10, "max_members": 8,
    "revocation_repetitions": 5, "tabs": 3, "background": 10,
}  # fmt: skip


def presence_document() -> dict[str, Any]:
    """Made-up presence results: round trips 5 -> 7.5 per connection with presence on; a
    storm within one frame per interval; disconnect_user's p99 over its 1 s target."""
    costs = [
        presence.RedisCost(on, mode, phase, 10 if mode == "storm" else 2, per_connection={
            "round_trips": 7.5 if on else 5.0, "commands": 30.0 if on else 20.0,
            "bytes_to_redis": 1500.0 if on else 1000.0, "bytes_from_redis": 500.0,
            "worker_cpu_us": 3000.0, "redis_cpu_us": 100.0,
        })
        for on in (False, True) for mode in ("storm", "steady")
        for phase in ("connect", "disconnect")
    ]  # fmt: skip
    queries = [presence.Query("connections", 14, 14, 8, 5, count=14, listed=8, truncated=True,
                              latency_ms={"p50": 1.5, "p99": 3.0})]  # fmt: skip
    rows = [presence.Query("rows", 10, 10, 10, 5, count=10, listed=10,
                           latency_ms={"p50": 2.5, "p99": 4.0})]  # fmt: skip

    def frames(group: str, phase: str, most: int, expected: int) -> Any:
        return presence.StormFrames(
            group, phase, 4 if group == "observers" else 10, 10, 1.0, seconds=2.5, ticks=3,
            presence_frames={"mean": 2.0, "min": 1, "max": most},
            snapshots={"mean": 0.0, "min": 0, "max": 0}, diffs={"mean": 2.0, "min": 1, "max": 2},
            presence_bytes={"mean": 2048.0, "min": 1000, "max": 4096},
            final_counts=[expected], expected_count=expected,
        )  # fmt: skip

    storm = {
        "frames": [frames("observers", "join", 3, 14), frames("members", "join", 4, 14),
                   frames("observers", "leave", 2, 4)],
        "queries": queries, "snapshot": {"bytes": 812, "listed": 8, "count": 14,
                                         "truncated": True},
        "connect": {"join_seconds": 1.0, "leave_seconds": 0.5, "failed": 0, "errors": []},
    }  # fmt: skip
    revocations = [
        presence.Revocation("unsubscribe_user", 5, 3, 10, complete=5,
                            latency_ms={"p50": 2.0, "p99": 4.0, "max": 4.0}),
        presence.Revocation("disconnect_user", 5, 3, 10, complete=5, close_codes=[4010],
                            latency_ms={"p50": 2.0, "p99": 1200.0, "max": 1200.0}),
    ]  # fmt: skip
    env = provenance.environment("presence", PRESENCE_PARAMETERS) | {
        "load_after": [0.1, 0.1, 0.1], "redis": "7.0.15", "redis_url": "private redis-server"
    }  # fmt: skip
    found = {"redis_costs": costs, "storm": storm, "rows": rows, "revocation": revocations}
    document: dict[str, Any] = presence.results_document(env, found)
    return document


def write_results(directory: Path) -> None:
    loops = {"loop": "asyncio", "loop_contenders": ["websockets", "native", "picows"]}
    document = peers_document(PEER_PARAMETERS | loops, peer_results())
    (directory / "peers.json").write_text(json.dumps(document))
    (directory / "settings-wsproto.json").write_text(json.dumps(document))
    # The native server and its peers on uvloop (budget_ws on uvicorn, as ever), fan-out
    # and idle: half the CPU per delivery, a third more memory per connection.
    uvloop = {"loop": "uvloop", "loop_contenders": ["native", "websockets", "picows"],
              "scenarios": ["fanout", "idle"]}  # fmt: skip
    on_uvloop = {name: PEER_CPU_US[name] / (1 if name == "budget_ws" else 2)
                 for name in ("budget_ws", "native", "websockets", "picows")}  # fmt: skip
    found = [r for r in peer_results(on_uvloop) if r.scenario != "stalled"]
    (directory / "peers-uvloop.json").write_text(json.dumps(peers_document(
        PEER_PARAMETERS | uvloop, found)))  # fmt: skip
    runs = [
        cross_worker.Run("budget_ws", "burst", 10, 10_000, 1.0, published=5, expected=50,
                         delivered=50, messages=10, worker_cpu_us_per_delivery=3.0,
                         latency_ms={"p50": 1.0, "p99": 2.0}),
        cross_worker.Run("native", "burst", 10, 10_000, 1.0, published=5, expected=50,
                         delivered=50, messages=10, worker_cpu_us_per_delivery=1.5,
                         latency_ms={"p50": 0.5, "p99": 1.5}, delivered_by_worker={"A+B": 50},
                         connections_by_worker={"A": 6, "B": 4}),
    ]  # fmt: skip
    env = provenance.environment("cross_worker", {"scenario": ["burst"], "duration": 1.0,
                                                  "client_processes": 2})  # fmt: skip
    document = {"environment": env | {"load_after": [0.1, 0.1, 0.1]},
                "runs": [asdict(run) | {"complete": run.complete, "mode": run.mode}
                         for run in runs],
                "ratios_native_to_budget_ws": cross_worker.ratios(runs, "native", ["budget_ws"]),
                "verdicts": cross_worker.verdicts(runs)}  # fmt: skip
    (directory / "cross_worker.json").write_text(json.dumps(document))
    (directory / "fanout-observed.json").write_text(json.dumps(fanout_document()))
    (directory / "instructions.json").write_text(json.dumps(instructions_document()))
    (directory / "presence.json").write_text(json.dumps(presence_document()))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    directory = tmp_path / "results"
    directory.mkdir()
    write_results(directory)
    return directory


def test_the_page_is_regenerated_then_checked(results: Path, tmp_path: Path) -> None:
    page = tmp_path / "performance.md"
    page.write_text(PAGE.read_text())

    assert report.main(["--results", str(results), "--page", str(page)]) == 0
    text = page.read_text()
    assert report.main(["--results", str(results), "--page", str(page), "--check"]) == 0

    # A steady row beside the burst row, and a shortfall shown, not hidden in the ratio.
    assert "| 10 | 200 B | burst | 0.50 |" in text
    assert "| 10 | 200 B | steady 50/s | 0.50 |" in text
    assert "5.00 (90.0 % delivered)" in text
    assert "4000 (slow consumer)" in text
    assert "`peers.json`" in text
    assert "`cross_worker.json`" in text
    assert "per-message deflate off" in text  # the settings table
    # The native server and picows beside the others, and the native server's ratios.
    block = text.split("<!-- begin: fanout -->")[1].split("<!-- end: fanout")[0]
    assert (
        "| budget_ws µs | naive µs | broadcaster µs | websockets µs | floor µs | native µs "
        "| picows µs |"
    ) not in block  # only the contenders that ran have a column
    assert (
        "| budget_ws µs | websockets µs | floor µs | native µs | picows µs | ÷ broadcaster "
        "| ÷ floor | events per message (budget_ws) | native ÷ websockets | native ÷ budget_ws "
        "| native ÷ picows |"
    ) in block
    assert (
        "| 10 | 200 B | burst | 0.50 | 1.00 | 5.00 | 0.25 | 0.20 | - | 0.10 | 1.0 | 0.25 | 0.50 "
        "| 1.25 |"
    ) in block
    assert (
        "| 10 | 200 B | burst (native, websockets, picows on uvloop) | 0.50 | 0.50 | - | 0.12 "
        "| 0.10 | - | - | 1.0 | 0.25 | 0.25 | 1.25 |"
    ) in block
    block = text.split("<!-- begin: summary -->")[1].split("<!-- end: summary")[0]
    assert (
        "- In the bursts, the native server's CPU per delivery was 0.25 \N{MULTIPLICATION SIGN} "
        "the `websockets` server's, 0.50 \N{MULTIPLICATION SIGN} budget_ws's on uvicorn and "
        "1.25 \N{MULTIPLICATION SIGN} picows'"
    ) in block  # from peers.json alone: a run on uvloop is left out of the summary
    block = text.split("<!-- begin: idle -->")[1].split("<!-- end: idle")[0]
    assert (
        "| 10 idle connections | budget_ws | websockets | floor | native | picows "
        "| native (uvloop) | websockets (uvloop) | picows (uvloop) |"
    ) in block
    assert "| server RSS per connection | 11.0 KiB | 12.0 KiB | 20.0 KiB | 10.5 KiB |" in block
    assert "| connect + subscribe p99, the client's own wait left out | 1.50 ms |" in block
    assert (
        "The native server holds 10.5 KiB per idle connection (target: at most 16 KiB); its "
        "connect + subscribe p99 is 0.81 \N{MULTIPLICATION SIGN} the `websockets` server's"
    ) in block
    block = text.split("<!-- begin: stalled -->")[1].split("<!-- end: stalled")[0]
    assert "| native | 300/300, 2.00 ms | 300/300, 4.00 ms |" in block
    block = text.split("<!-- begin: redis -->")[1].split("<!-- end: redis")[0]
    assert (
        "| native µs | native ÷ budget_ws | native p50 / p99 | native: clients per worker "
        "(one port) |"
    ) in block
    assert "| 1.50 | 0.50 | 0.50 / 1.50 ms | A 6 / B 4 |" in block
    assert "native, websockets, picows on uvloop" in text  # provenance
    block = text.split("<!-- begin: verdicts -->")[1].split("<!-- end: verdicts")[0]
    assert (
        "| `peers` | fanout 10 x 200 B at 50/s | native CPU/delivery 0.25 x websockets <= 1 | yes |"
    ) in block
    assert (
        "| `peers` | fanout 10 x 200 B burst | native CPU/delivery 0.50 x budget_ws on uvicorn"
        in block
    )
    assert "| `peers` | idle 10 | native 10.5 KiB/connection <= 16 | yes |" in block
    assert (
        "| `peers-uvloop` | idle 10 | native connect + subscribe p99 3 ms <= 1 x websockets'"
        in block
    )
    # What metrics and tracing cost: burst and steady, each over budget_ws, and the target.
    block = text.split("<!-- begin: observability -->")[1].split("<!-- end: observability")[0]
    assert "`fanout-observed.json`: 4 events of 200 B" in block
    assert "median (min-max) of 1 run:" in block
    assert (
        "| 10 | burst | 4.0 | 1.00 (1.00-1.00) | 1.10 (1.10-1.10) | 1.05 (1.05-1.05) "
        "| 1.02 (1.02-1.02) | +10.0 % | +5.0 % | +2.0 % | ≤ +20 % | yes |"
    ) in block
    assert (
        "| 10 | steady | 1.0 | 2.00 (2.00-2.00) | 2.50 (2.50-2.50) | 2.20 (2.20-2.20) "
        "| 2.00 (2.00-2.00) | +25.0 % | +10.0 % | +0.0 % | ≤ +10 % | **no** |"
    ) in block
    # The same work in instructions per delivery, over budget_ws, against the same targets.
    block = text.split("<!-- begin: instructions -->")[1].split("<!-- end: instructions")[0]
    assert "`instructions.json`: 200 B events on one topic" in block
    assert (
        "with 3 fan-outs of 5 events - with 1) ÷ (connections \N{MULTIPLICATION SIGN} 5 "
        "\N{MULTIPLICATION SIGN} 2)"
    ) in block
    assert (
        "| 10 | burst | 4,000 | 4,700 | 4,100 | 4,500 | +17.5 % | +2.5 % | +12.5 % "
        "| ≤ +20 % | yes |"
    ) in block
    assert (
        "| 10 | steady | 34,000 | 38,000 | 36,000 | 35,000 | +11.8 % | +5.9 % | +2.9 % "
        "| ≤ +10 % | **no** |"
    ) in block
    assert "| `instructions.json` |" in text  # provenance
    assert (
        "in-memory fan-out under callgrind: 10 connections \N{MULTIPLICATION SIGN} 5 events "
        "\N{MULTIPLICATION SIGN} 200 B, 1 and 3 fan-outs"
    ) in text
    assert (
        "| `instructions` | in-memory fanout 10 x 5 events, burst, callgrind 1/3 rounds |" in text
    )
    assert "| `fanout-observed.json` |" in text  # provenance
    assert "in-memory fan-out in one process: 10 connections" in text
    assert "| `fanout-observed` | in-memory fanout 10 x 4 events, burst |" in text  # verdicts
    # Presence: off -> on per connection, presence() and the snapshot, the storm's frames
    # against its intervals, and revocation against its target.
    block = text.split("<!-- begin: presence -->")[1].split("<!-- end: presence")[0]
    assert (
        "| connect, all at once (10) | 5.00 → 7.50 (+2.50) | 20.0 → 30.0 (+10.0) "
        "| 1,000 → 1,500 (+500) | 500 → 500 (+0) | 3,000 → 3,000 (+0) |"
    ) in block
    assert "| disconnect, one at a time (2) | 5.00 → 7.50 (+2.50) |" in block
    assert "one at a time 1.2 s apart (presence interval 1 s)" in block
    assert "| 14 | connected to two workers | 14 | 8 | 8 | 1.50 | 3.00 |" in block
    assert "| 10 | rows written as two workers would (`presence_write`) | 10 | 10 | 10 |" in block
    assert "among 14 users: 812 B, 8 members listed (truncated)." in block
    assert "| join | observers (4) | 10 | 2.5 s | 3 | 2.0 / 3 | 2 KiB / 4 KiB | 5 | yes |" in block
    assert "| join | members (10) | 10 | 2.5 s | 3 | 2.0 / 4 | 2 KiB / 4 KiB | 5 | yes |" in block
    assert "| leave | observers (4) | 10 | 2.5 s | 3 | 2.0 / 2 |" in block
    assert (
        "| `disconnect_user` | the last tab's socket closed | 5/5 | 2.00 | 1,200 | 1,200 "
        "| 1.200 | **no** |"
    ) in block
    assert (
        "| `unsubscribe_user` | the last tab's `unsubscribed` frame | 5/5 | 2.00 | 4.00 |" in block
    )
    assert "| `presence.json` |" in text  # provenance
    assert "revocation of 5 users \N{MULTIPLICATION SIGN} 3 tabs beside 10" in text
    assert "| `presence` | disconnect_user, 3 tabs on 2 workers | p99 1200.0 ms" in text  # verdicts
    # One versions line, each package once, the fan-out's own packages included.
    versions = text.split("Versions: ")[1].split("\n")[0]
    assert versions.count("budget-ws ") == 1
    assert "opentelemetry-sdk " in versions
    # The prose outside the blocks is left as it was.
    assert (
        text.split("<!-- begin: provenance -->")[0]
        == PAGE.read_text().split("<!-- begin: provenance -->")[0]
    )

    page.write_text(text.replace("| 10 | 200 B | burst | 0.50 |", "| 10 | 200 B | burst | 0.40 |"))
    assert report.main(["--results", str(results), "--page", str(page), "--check"]) == 1


def test_a_missing_block_is_an_error(results: Path, tmp_path: Path) -> None:
    page = tmp_path / "performance.md"
    page.write_text(PAGE.read_text().replace("<!-- begin: stalled -->", ""))

    assert report.main(["--results", str(results), "--page", str(page)]) == 2


def test_no_results_is_an_error(tmp_path: Path) -> None:
    page = tmp_path / "performance.md"
    page.write_text(PAGE.read_text())

    assert report.main(["--results", str(tmp_path), "--page", str(page)]) == 2
