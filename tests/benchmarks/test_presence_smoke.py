"""The presence benchmark (``benchmarks/presence.py``) runs end to end on small counts.

Every part runs on a private redis-server: the Redis cost of 20 connections at once and 2
one at a time with presence off and on, a storm of 60 connections beside 4 observers,
presence() over connections and written rows, and revocation of 4 users of 3 tabs on two
uvicorn workers. It checks that every figure is produced, that presence adds Redis round
trips and that the storm's frames are counted, then renders the page from the file; it
asserts nothing about speed.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `benchmarks` lives beside `src`, not in the package
    sys.path.insert(0, str(ROOT))

presence = importlib.import_module("benchmarks.presence")
report = importlib.import_module("benchmarks.report")

pytestmark = [
    pytest.mark.redis,
    pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

OPTIONS = (
    "--interval 0.2 --storm-connections 20 --steady-connections 2 --steady-spacing 0.3 "
    "--members 60 --observers 2 --concurrency 20 --queries 10 --rows 40 --max-members 30 "
    "--revocation-repetitions 4 --tabs 3 --background 10 --revocation-spacing 0.05 "
    "--settle-timeout 30 --json"
)


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = presence.main(OPTIONS.split())
    found: dict[str, Any] = json.loads(out.getvalue())
    found["exit_code"] = code
    return found


def test_presence_costs_redis_round_trips(document: dict[str, Any]) -> None:
    costs = document["redis_costs"]
    assert len(costs) == 2 * 2 * 2  # off and on, storm and steady, connect and disconnect
    for cost in costs:
        assert cost["error"] is None, cost
        assert cost["failed"] == 0, cost
        assert cost["round_trips"] > 0, cost
        assert cost["bytes_to_redis"] > 0, cost
        assert cost["bytes_from_redis"] > 0, cost
        assert "info" not in cost["commands"]
    assert {(c["mode"], c["connections"]) for c in costs} == {("storm", 20), ("steady", 2)}
    added = {(diff["mode"], diff["phase"]): diff for diff in document["presence_cost"]}
    assert len(added) == 4
    # One at a time, every connect and disconnect writes its presence row and announces it.
    assert added["steady", "connect"]["round_trips"] >= 1
    assert added["steady", "disconnect"]["round_trips"] >= 1
    on = [c for c in costs if c["presence"] and c["mode"] == "steady"]
    assert all(cost["commands"].get("publish", 0) >= cost["connections"] for cost in on)


def test_the_storm_is_counted(document: dict[str, Any]) -> None:
    storm = document["storm"]
    assert storm["error"] is None
    assert storm["connect"]["failed"] == 0
    by = {(frames["group"], frames["phase"]): frames for frames in storm["frames"]}
    assert set(by) == {("observers", "join"), ("members", "join"), ("observers", "leave")}
    assert by["observers", "join"]["final_counts"] == [64]  # 60 members and 4 observers
    assert by["observers", "leave"]["final_counts"] == [4]
    assert by["members", "join"]["subscribers"] == 60
    for frames in by.values():
        assert frames["presence_frames"]["min"] >= 1, frames
        assert frames["presence_bytes"]["min"] > 0, frames
        assert frames["ticks"] >= 1
        assert frames["settled"], frames
    assert by["members", "join"]["snapshots"]["min"] == 1  # each member's own snapshot
    snapshot = document["snapshot_frame"]
    assert (snapshot["listed"], snapshot["count"], snapshot["truncated"]) == (30, 64, True)


def test_presence_queries(document: dict[str, Any]) -> None:
    queries = {(q["source"], q["max_members"]): q for q in document["queries"]}
    assert set(queries) == {("connections", 30), ("rows", 30), ("rows", 40)}
    for query in queries.values():
        assert query["error"] is None, query
        assert query["latency_ms"]["p50"] > 0
    assert queries["connections", 30]["count"] == 64
    assert queries["rows", 40]["rows"] == 40
    assert (queries["rows", 40]["listed"], queries["rows", 30]["listed"]) == (40, 30)


def test_revocation_reaches_every_tab(document: dict[str, Any]) -> None:
    runs = {run["operation"]: run for run in document["revocation"]}
    assert set(runs) == {"unsubscribe_user", "disconnect_user"}
    for run in runs.values():
        assert run["error"] is None, run
        assert run["complete"] == run["repetitions"] == 4, run
        assert run["latency_ms"]["p50"] > 0
        assert run["p99_to_target"] is not None
    assert runs["disconnect_user"]["close_codes"] == [4010]
    assert document["exit_code"] == 0


def test_the_page_renders_the_results(document: dict[str, Any], tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    document = {key: value for key, value in document.items() if key != "exit_code"}
    (results / "presence.json").write_text(json.dumps(document))
    page = tmp_path / "performance.md"
    page.write_text((ROOT / "docs" / "performance.md").read_text())

    assert report.main(["--results", str(results), "--page", str(page)]) == 0
    assert report.main(["--results", str(results), "--page", str(page), "--check"]) == 0
    text = page.read_text()
    block = text.split("<!-- begin: presence -->")[1].split("<!-- end: presence -->")[0]
    assert block.count("`presence.json`") == 4, block
    assert "| `presence.json` |" in text  # provenance
    assert "disconnect_user, 3 tabs on 2 workers" in text  # verdicts
