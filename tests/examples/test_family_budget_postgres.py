"""The family-budget demo on PostgreSQL: a change and its event are one transaction.

One demo process (``python -m family_budget --backend postgresql://…``) serves the
module's tests, on two schemas of the module's own (budget_ws's and the demo's data),
dropped afterwards. Each test subscribes afresh and counts offsets from where it
subscribed, so the order of the tests does not matter.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from tests.examples.test_family_budget import (
    EXAMPLES,
    HTMX,
    add_fact,
    bob_shares_alices_budget,
    client_for,
    fact_ids,
    members,
    open_socket,
    remove_member,
)
from tests.support.postgres import POSTGRES_DSN, url_of
from tests.support.servers import free_port, stop, wait_listening

REFUSED = "666.66"
"""An amount the :func:`refused_at_commit` constraint refuses when the transaction commits."""


def on_database(method: str, sql: str, *arguments: Any) -> Any:
    """Call an asyncpg connection's ``method`` on the test database, outside the demo."""

    async def run() -> Any:
        connection = await asyncpg.connect(POSTGRES_DSN)
        try:
            return await getattr(connection, method)(sql, *arguments)
        finally:
            await connection.close()

    return asyncio.run(run())


def query(sql: str, *arguments: Any) -> list[asyncpg.Record]:
    """The rows of one statement."""
    return list(on_database("fetch", sql, *arguments))


def execute(script: str) -> None:
    """Run statements (one or several, without arguments)."""
    on_database("execute", script)


def drop_schemas(*schemas: str) -> None:
    execute(f"DROP SCHEMA IF EXISTS {', '.join(schemas)} CASCADE")


def demo_env(backend_schema: str, **extra: str) -> dict[str, str]:
    """The environment of a demo process on the module's schemas (no SQLite file set)."""
    return {
        **os.environ,
        "BUDGET_DEMO_DB": "",
        "BUDGET_DEMO_SCHEMA": f"{backend_schema}_data",
        **extra,
    }


@dataclass
class Demo:
    url: str
    schema: str
    """budget_ws's schema."""
    data: str
    """The demo's own schema: its tables."""
    output: Path
    errors: Path


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    schema = f"test_{uuid.uuid4().hex[:12]}"
    directory = tmp_path_factory.mktemp("demo")
    port = free_port()
    running = Demo(
        f"http://127.0.0.1:{port}",
        schema,
        f"{schema}_data",
        directory / "stdout",
        directory / "stderr",
    )
    command = [
        sys.executable, "-m", "family_budget", "--port", str(port), "--backend", url_of(schema),
    ]  # fmt: skip
    try:
        with (
            running.output.open("w") as stdout,
            running.errors.open("w") as stderr,
            subprocess.Popen(
                command, cwd=EXAMPLES, env=demo_env(schema), stdout=stdout, stderr=stderr
            ) as process,
        ):
            try:
                wait_listening(port, process, timeout=30)
                yield running
            finally:
                stop(process)
    finally:
        drop_schemas(running.schema, running.data)


@pytest.fixture(scope="module")
def alice(demo: Demo) -> Iterator[httpx.Client]:
    with client_for(demo.url, "alice") as client:
        yield client


@pytest.fixture
def refused_at_commit(demo: Demo) -> Iterator[str]:
    """Facts of 666.66 break a constraint PostgreSQL checks at COMMIT, after the publish.

    A deferred constraint trigger, as a real app's deferred foreign key or exclusion
    constraint would: the transaction has written the fact and published its event when
    it fails. Its message says the offset the topic had reached inside the transaction.
    """
    execute(f"""
        CREATE FUNCTION {demo.data}.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.amount_cents = 66666 THEN
                RAISE EXCEPTION 'refused at commit, with budget:% at offset %',
                    NEW.budget_id,
                    (SELECT last_offset FROM {demo.schema}.topics
                     WHERE topic = 'budget:' || NEW.budget_id)
                    USING ERRCODE = 'check_violation';
            END IF;
            RETURN NULL;
        END
        $$;
        CREATE CONSTRAINT TRIGGER refuse AFTER INSERT OR UPDATE ON {demo.data}.facts
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {demo.data}.refuse();
    """)
    yield REFUSED
    execute(f"DROP FUNCTION {demo.data}.refuse() CASCADE")


def amount_cents(demo: Demo, fact_id: int) -> int | None:
    rows = query(f"SELECT amount_cents FROM {demo.data}.facts WHERE id = $1", fact_id)
    return rows[0]["amount_cents"] if rows else None


def kept_offsets(demo: Demo, after: int) -> list[int]:
    """The offsets budget:1's history table holds after ``after``."""
    rows = query(
        f'SELECT "offset" FROM {demo.schema}.events WHERE topic = $1 AND "offset" > $2'
        ' ORDER BY "offset"',
        "budget:1",
        after,
    )
    return [row["offset"] for row in rows]


# Running it ---------------------------------------------------------------------------------


def test_the_demo_runs_budget_ws_migration_step_and_says_so(demo: Demo) -> None:
    output = demo.output.read_text()
    assert "database: PostgreSQL, schema " + demo.data in output
    assert "Running budget_ws's migration step first, `python -m budget_ws migrate URL`" in output
    assert f"schema={demo.schema!r}): schema at version 2" in output
    tables = query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", demo.data
    )
    assert {row["table_name"] for row in tables} == {
        "budgets",
        "users",
        "members",
        "articles",
        "financial_centers",
        "facts",
    }


def test_the_backend_url_may_come_from_the_environment() -> None:
    schema = f"test_{uuid.uuid4().hex[:12]}"
    port = free_port()
    env = demo_env(schema, BUDGET_WS_BACKEND=url_of(schema), PORT=str(port))
    try:
        with subprocess.Popen(
            [sys.executable, "-m", "family_budget"],
            cwd=EXAMPLES,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        ) as process:
            try:
                assert process.stdout is not None
                banner = [process.stdout.readline() for _ in range(4)]
                assert f"backend: {url_of(schema)}" in banner[3]
                wait_listening(port, process, timeout=30)
                with client_for(f"http://127.0.0.1:{port}", "alice") as client:
                    assert "Smith family" in client.get("/budgets/1").text
            finally:
                stop(process)
    finally:
        drop_schemas(schema, f"{schema}_data")


def test_without_budget_ws_schema_the_app_does_not_start() -> None:
    """``uvicorn --factory`` runs no migration: the app stops, and says what to run."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    command = [
        sys.executable, "-m", "uvicorn", "family_budget.app:app_factory", "--factory",
        "--app-dir", str(EXAMPLES), "--port", str(free_port()), "--log-level", "warning",
    ]  # fmt: skip
    try:
        env = demo_env(schema, BUDGET_WS_BACKEND=url_of(schema))
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    finally:
        drop_schemas(schema, f"{schema}_data")
    assert done.returncode != 0
    assert "SchemaNotReady" in done.stderr
    assert "python -m budget_ws migrate" in done.stderr


@pytest.mark.parametrize(
    ("options", "env", "given"),
    [(["--db", "budget.sqlite3"], {}, "--db"), ([], {"BUDGET_DEMO_DB": "x"}, "$BUDGET_DEMO_DB")],
)
def test_a_sqlite_file_is_refused_on_postgresql(
    options: list[str], env: dict[str, str], given: str
) -> None:
    command = [sys.executable, "-m", "family_budget", *options, "--backend", url_of("unused")]
    done = subprocess.run(
        command,
        cwd=EXAMPLES,
        env={**demo_env("unused"), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert f"error: {given} is for SQLite only: on PostgreSQL" in done.stderr


# Changes and their events -------------------------------------------------------------------


def test_every_change_reaches_a_subscriber_with_the_next_offset(
    demo: Demo, alice: httpx.Client
) -> None:
    with open_socket(demo.url, "alice") as socket:
        start = socket.subscribe("budget:1")["position"]["offset"]

        form = {"amount": "7.25", "article_id": "1", "financial_center_id": "2"}
        assert alice.post("/budgets/1/facts", data=form, headers=HTMX).status_code == 200
        created = socket.event()
        assert created["event"] == "budget_fact_created"
        assert created["offset"] == start + 1
        fact_id = created["data"]["id"]
        assert created["data"]["amount"] == "7.25"
        assert amount_cents(demo, fact_id) == 725

        alice.post(f"/budgets/1/facts/{fact_id}", data={**form, "amount": "9"}, headers=HTMX)
        updated = socket.event()
        assert (updated["event"], updated["offset"]) == ("budget_fact_updated", start + 2)
        assert amount_cents(demo, fact_id) == 900

        alice.post(f"/budgets/1/facts/{fact_id}/delete", headers=HTMX)
        deleted = socket.event()
        assert (deleted["event"], deleted["offset"]) == ("budget_fact_deleted", start + 3)
        assert amount_cents(demo, fact_id) is None

        try:
            alice.post("/budgets/1/articles/3", data={"name": "Travel"}, headers=HTMX)
            renamed = socket.event()
            assert (renamed["event"], renamed["offset"]) == ("article_updated", start + 4)
            assert renamed["data"] == {"id": 3, "name": "Travel", "author": "alice"}
        finally:
            alice.post("/budgets/1/articles/3", data={"name": "Transport"})
        assert socket.event()["offset"] == start + 5
    assert kept_offsets(demo, start) == [start + 1, start + 2, start + 3, start + 4, start + 5]


def test_a_change_refused_at_commit_delivers_nothing_and_leaves_no_gap(
    demo: Demo, alice: httpx.Client, refused_at_commit: str
) -> None:
    with open_socket(demo.url, "alice") as socket:
        start = socket.subscribe("budget:1")["position"]["offset"]
        kept = add_fact(alice, "1.00")
        assert socket.event()["offset"] == start + 1
        ledger = fact_ids(alice.get("/budgets/1/ledger").text)

        form = {"amount": refused_at_commit, "article_id": "1", "financial_center_id": "1"}
        for path in ("/budgets/1/facts", f"/budgets/1/facts/{kept}"):  # a new fact, an edit
            refused = alice.post(path, data=form, headers=HTMX)
            assert refused.status_code == 500
            assert refused.headers["HX-Retarget"] == "#flash"
            assert "nothing was saved, and no tab was told" in refused.text
        # Inside each refused transaction the event had been published, at the next offset.
        assert demo.errors.read_text().count(f"with budget:1 at offset {start + 2}") == 2
        assert fact_ids(alice.get("/budgets/1/ledger").text) == ledger
        assert amount_cents(demo, kept) == 100

        # The rolled-back offset is the next event's, and that event is the next to arrive.
        after = add_fact(alice, "2.00")
        event = socket.event()
        assert (event["offset"], event["data"]["id"]) == (start + 2, after)
    assert kept_offsets(demo, start) == [start + 1, start + 2]


def test_a_fact_is_in_the_table_if_and_only_if_its_event_was_delivered(
    demo: Demo, alice: httpx.Client, refused_at_commit: str
) -> None:
    """Concurrent posts, a third of them refused at commit: offsets and rows agree."""
    amounts = [refused_at_commit if n % 3 == 0 else f"{n}.{n:02d}" for n in range(1, 25)]
    (highest,) = query(f"SELECT max(id) AS id FROM {demo.data}.facts")

    def post(amount: str) -> int:
        form = {"amount": amount, "article_id": "2", "financial_center_id": "3"}
        with client_for(demo.url, "alice") as client:
            return client.post("/budgets/1/facts", data=form, headers=HTMX).status_code

    with open_socket(demo.url, "alice") as socket:
        start = socket.subscribe("budget:1")["position"]["offset"]
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(post, amounts))
        assert sorted(statuses) == [200] * 16 + [500] * 8
        last = add_fact(alice, "0.01")  # whatever came before it has come
        events = [socket.event() for _ in range(17)]

    assert [event["offset"] for event in events] == list(range(start + 1, start + 18))
    assert events[-1]["data"]["id"] == last
    rows = query(f"SELECT id, amount_cents FROM {demo.data}.facts WHERE id > $1", highest["id"])
    in_table = {(row["id"], row["amount_cents"]) for row in rows}
    delivered = {
        (event["data"]["id"], int(event["data"]["amount"].replace(".", ""))) for event in events
    }
    assert delivered == in_table
    saved = {amount for amount, status in zip(amounts, statuses) if status == 200}
    assert {event["data"]["amount"] for event in events[:-1]} == saved
    assert kept_offsets(demo, start) == list(range(start + 1, start + 18))


# Members ------------------------------------------------------------------------------------


def test_a_member_removed_loses_the_budget_at_once(demo: Demo, alice: httpx.Client) -> None:
    """On PostgreSQL the revocation reaches every worker through the backend's signals."""

    def stored() -> list[tuple[int, str]]:
        rows = query(f"SELECT budget_id, name FROM {demo.data}.members ORDER BY budget_id, name")
        return [(row["budget_id"], row["name"]) for row in rows]

    with client_for(demo.url, "bob") as bob, open_socket(demo.url, "bob") as bobs:
        with bob_shares_alices_budget(alice):
            assert stored() == [(1, "bob")]
            assert members(bob.get("/budgets/1/members").text) == ["alice", "bob"]
            assert bobs.subscribe("budget:1", presence=True)["op"] == "subscribed"

            assert remove_member(alice, "bob").status_code == 200
            assert stored() == []
            frames = []
            while (frame := bobs.frame()).get("event") != "removed_from_budget":
                frames.append(frame)
            assert frame["topic"] == "~user:bob"
            assert {"op": "unsubscribed", "topic": "budget:1", "reason": "revoked"} in frames
            refused = bobs.subscribe("budget:1")
            assert (refused["op"], refused["code"]) == ("error", "forbidden")
            assert bob.get("/budgets/1").status_code == 403
