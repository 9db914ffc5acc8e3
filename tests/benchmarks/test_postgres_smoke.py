"""The PostgreSQL benchmark (``benchmarks/postgres.py``) runs end to end on small counts.

Every phase and contender runs (a fraction of a second of publishing each, a short steady
stream across two processes), then the page generator renders the results file. It
checks that every figure is produced, that the steady stream arrives whole, and the round
trips counted on the wire; it asserts nothing about speed.
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

postgres = importlib.import_module("benchmarks.postgres")
report = importlib.import_module("benchmarks.report")

pytestmark = [
    pytest.mark.redis,
    pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
    pytest.mark.skipif(importlib.util.find_spec("broadcaster") is None,
                       reason="broadcaster is not installed (pip install --group bench)"),
]  # fmt: skip

EVENTS = 25
OPTIONS = (
    "--topics 1 3 --concurrency 2 --publish-duration 0.2 --warmup 0.1 --count-calls 10 "
    "--statement-calls 10 "
    f"--rate 50 --duration {EVENTS / 50} --drain 5 --repeat 1 --json"
)


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = postgres.main(OPTIONS.split())
    found: dict[str, Any] = json.loads(out.getvalue())
    found["exit_code"] = code
    return found


def test_every_variant_publishes(document: dict[str, Any]) -> None:
    runs = document["throughput"]
    # 3 plain publishes + 2 drivers x (transaction, transaction+publish), x 2 topic counts.
    assert len(runs) == 2 * 7
    for run in runs:
        assert run["error"] is None, run
        assert run["calls"] > 0, run
        assert run["per_second"] > 0, run
        assert run["call_ms"]["p50"] > 0
    assert {(row["driver"], row["topics"]) for row in document["transactions"]} == {
        ("asyncpg", 1), ("asyncpg", 3), ("sqlalchemy", 1), ("sqlalchemy", 3)
    }  # fmt: skip
    probe = document["broadcaster_concurrent_publish"]
    assert 0 <= probe["failed"] <= probe["attempted"]


def test_round_trips_are_counted_on_the_wire(document: dict[str, Any]) -> None:
    by = {(run["contender"], run["mode"], run["driver"]): run for run in document["round_trips"]}
    for run in by.values():
        assert run["error"] is None, run
        assert run["calls"] == 10
    assert by["redis", "publish", "-"]["per_call"] == 1  # one EVALSHA
    assert by["broadcaster-postgres", "publish", "-"]["per_call"] == 1  # one SELECT pg_notify
    assert by["postgresql", "publish", "-"]["per_call"] >= 1
    for driver in ("asyncpg", "sqlalchemy"):
        # BEGIN, INSERT, COMMIT; and the publish: one statement more, one round trip.
        assert by["postgresql", "transaction", driver]["per_call"] == 3
        assert by["postgresql", "transaction+publish", driver]["per_call"] == 4


def test_the_steady_stream_crosses_workers(document: dict[str, Any]) -> None:
    runs = {run["contender"]: run for run in document["delivery"]}
    assert set(runs) == {"postgresql", "redis", "broadcaster-postgres"}
    for run in runs.values():
        assert run["error"] is None, run
        assert run["expected"] == run["received"] == EVENTS, run
        assert run["duplicates"] == 0
        assert run["latency_ms"]["p50"] > 0
        assert run["receiver_cpu_us_per_event"] > 0
    assert runs["postgresql"]["offset_gaps"] == runs["redis"]["offset_gaps"] == 0
    assert document["exit_code"] == 0
    assert set(document["statements_ms"]) == set(postgres.STATEMENTS)
    assert all(figures["p50"] > 0 for figures in document["statements_ms"].values())
    figures = {entry["figure"] for entry in document["ratios_postgresql_to"]}
    assert {"publishes/s", "latency p50", "latency p99", "receiver CPU per event"} <= figures


def test_the_page_renders_the_results(document: dict[str, Any], tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    document = {key: value for key, value in document.items() if key != "exit_code"}
    (results / "postgres.json").write_text(json.dumps(document))
    page = tmp_path / "performance.md"
    page.write_text((ROOT / "docs" / "performance.md").read_text())

    assert report.main(["--results", str(results), "--page", str(page)]) == 0
    assert report.main(["--results", str(results), "--page", str(page), "--check"]) == 0
    text = page.read_text()
    for name in ("postgres-publish", "postgres-transactions", "postgres-delivery"):
        block = text.split(f"<!-- begin: {name} -->")[1].split(f"<!-- end: {name} -->")[0]
        assert "`postgres.json`" in block, block
    assert "| `postgres.json` |" in text  # provenance
    assert "transactional publish (asyncpg)" in text  # verdicts
