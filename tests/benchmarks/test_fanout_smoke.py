"""The fan-out benchmark runs end to end on a tiny N and every contender delivers everything.

No timing is asserted: this only keeps ``scripts/bench`` working as the code changes.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `benchmarks` lives beside `src`, not in the package
    sys.path.insert(0, str(ROOT))

fanout = importlib.import_module("benchmarks.fanout")

CONNECTIONS = 20
EVENTS = 5


def run_benchmark(capsys: pytest.CaptureFixture[str], *arguments: str) -> dict[str, Any]:
    code = fanout.main(
        [
            "--connections",
            str(CONNECTIONS),
            "--events",
            str(EVENTS),
            "--repeat",
            "1",
            "--json",
            *arguments,
        ]
    )
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert code == 0
    return report


def test_every_contender_delivers_every_frame(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_benchmark(capsys, "--memory", "rss")

    runs = report["runs"]
    assert {(run["contender"], run["mode"]) for run in runs} == {
        (contender, mode)
        for contender in ("budget_ws", "observed", "naive")
        for mode in ("burst", "paced")
    }
    for run in runs:
        assert run["frames"] == CONNECTIONS * EVENTS, run
        assert run["complete"], run
        assert run["deliveries_per_second"] > 0
    for run in runs:
        if run["contender"] in ("budget_ws", "observed"):
            # publish() hands frames to outboxes; the writers, not the publisher, send them.
            assert run["sends_by_publish"] == 0
            assert run["suspensions_per_publish"] <= 1
        else:
            assert run["sends_by_publish"] == CONNECTIONS

    probes = {(item["contender"], item["probe"]) for item in report["memory"]}
    assert probes == {("budget_ws", "rss"), ("observed", "rss"), ("naive", "rss")}
    assert all(item["complete"] for item in report["memory"])
    for row in report["rows"]:
        if row["contender"] == "budget_ws":
            assert row["ratio_budget_ws_to_naive"] > 0
        if row["contender"] == "observed":
            assert row["cpu_ratio_to_budget_ws"] > 0
        assert row["cpu_us_per_delivery"]["median"] > 0
        assert "rss_idle_kib_per_connection" in row

    # The header every results file starts with, and this benchmark's own fields beside it.
    env = report["environment"]
    assert env["benchmark"] == "fanout"
    assert {"commit", "dirty", "digest"} <= set(env["harness"]) & set(env["library"])
    assert len(env["load_before"]) == len(env["load_after"]) == 3
    assert env["parameters"]["connections"] == [CONNECTIONS]
    assert env["parameters"]["observed_targets"] == {"paced": 1.1, "burst": 1.2}
    assert "opentelemetry-sdk" in env["versions"]
    assert env["anyio_backend"] == "asyncio"  # the keys it had before stay
    assert report["loadavg_end"] == env["load_after"]
    # One verdict per N and mode, in the shape of every results file's.
    verdicts = report["verdicts"]
    assert [verdict["label"] for verdict in verdicts] == [
        f"in-memory fanout {CONNECTIONS} x {EVENTS} events, burst",
        f"in-memory fanout {CONNECTIONS} x {EVENTS} events, steady (paced)",
    ]
    observed = [row for row in report["rows"] if row["contender"] == "observed"]
    for verdict, row in zip(verdicts, observed, strict=True):
        assert set(verdict) == {"label", "check", "met"}
        assert verdict["met"] == row["target_met"]
        assert f"<= {row['cpu_ratio_target']:g}" in verdict["check"]


def test_metrics_only_has_a_ratio_but_no_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_benchmark(capsys, "--contenders", "budget_ws", "metrics", "--memory")

    assert {row["contender"] for row in report["rows"]} == {"budget_ws", "metrics"}
    for row in report["rows"]:
        if row["contender"] == "metrics":
            assert row["cpu_ratio_to_budget_ws"] > 0
        assert "target_met" not in row
    assert report["verdicts"] == []


@pytest.mark.parametrize("contender", ["budget_ws", "naive"])
def test_traced_memory_probe(contender: str) -> None:
    probe = anyio.run(
        fanout.measure_memory, contender, CONNECTIONS, fanout.Workload(EVENTS, 200), "traced"
    )

    assert probe.complete
    assert probe.peak_per_connection >= probe.idle_per_connection > 0


def test_runs_on_trio(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_benchmark(capsys, "--anyio-backend", "trio", "--memory")

    assert report["environment"]["anyio_backend"] == "trio"
    assert report["memory"] == []
    assert [run["frames"] for run in report["runs"]] == [CONNECTIONS * EVENTS] * 6
