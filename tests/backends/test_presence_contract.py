"""What every backend with signals and presence must do (SignalBackend, PresenceBackend).

Two workers are two backends on one store (Redis key prefix, PostgreSQL schema); in
memory, one process, they share the backend itself.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable

import anyio
import pytest
from tests.backends.conftest import backend_url
from tests.support.postgres import migrated_schema, url_of
from tests.support.signals import Signals

from budget_ws import Backend, create_backend
from budget_ws.backends import PresenceBackend, PresenceRow, SignalBackend
from budget_ws.testing import RecordingListener

pytestmark = pytest.mark.anyio

TTL = 30.0
"""Long enough that no worker of a test expires unless the test wants it to."""


@pytest.fixture
def anyio_backend(contract_anyio_backend: str) -> str:
    """Each backend runs on the event loops it supports (see conftest.CASES)."""
    return contract_anyio_backend


@pytest.fixture
async def workers(
    backend_case: tuple[str, str], request: pytest.FixtureRequest
) -> AsyncIterator[tuple[PresenceBackend, PresenceBackend]]:
    """Two workers' backends sharing one store."""
    name = backend_case[0]
    if name == "memory":
        async with create_backend(backend_url(name, request)) as shared:
            yield presence_of(shared), presence_of(shared)
        return
    if name == "postgres":
        async with migrated_schema() as schema:
            url = url_of(schema, history_size=100)
            async with create_backend(url) as first, create_backend(url) as second:
                yield presence_of(first), presence_of(second)
        return
    url = backend_url(name, request)
    async with create_backend(url) as first, create_backend(url) as second:
        yield presence_of(first), presence_of(second)


def presence_of(backend: Backend) -> PresenceBackend:
    assert isinstance(backend, PresenceBackend), f"{backend!r} has no presence"
    return backend


def worker_id() -> str:
    return uuid.uuid4().hex


def fresh_topic() -> str:
    return f"presence:{uuid.uuid4().hex}"


def stored(rows: Iterable[PresenceRow]) -> set[tuple[str, str, str, int, bytes]]:
    """Rows as comparable tuples, in no order: a backend returns them in any."""
    return {(row.topic, row.worker, row.user, row.connections, row.info) for row in rows}


async def test_the_backend_offers_signals_and_presence(backend: Backend) -> None:
    assert isinstance(backend, SignalBackend)
    assert isinstance(backend, PresenceBackend)


async def test_a_signal_reaches_every_worker_in_order_and_no_topic(
    workers: tuple[PresenceBackend, PresenceBackend],
) -> None:
    first, second = workers
    on_first, on_second = Signals(), Signals()
    await first.listen_signals(on_first)
    await first.listen_signals(on_first)  # twice is once
    await second.listen_signals(on_second)
    # A topic of the same name is another thing.
    topic_listeners = [RecordingListener(), RecordingListener()]
    await first.subscribe("signals", topic_listeners[0])
    await second.subscribe("signals", topic_listeners[1])
    payloads = [b"0", b"with spaces and \x00 and \xff", b"", b'{"op":"x"}', b"4"]
    for payload in payloads:
        await first.signal(payload)  # returns once sent: the sender gets it too
    await second.signal(b"from the second")
    for signals in (on_first, on_second):
        await signals.wait_for(len(payloads) + 1)
        assert signals.received[: len(payloads)] == payloads
        assert signals.received[len(payloads) :] == [b"from the second"]
    marker = await first.publish("signals", b"an event")
    for topic_listener in topic_listeners:
        with anyio.fail_after(5):
            await topic_listener.wait_for(1)
        assert topic_listener.delivered == [("signals", marker, b"an event")]
    assert len(on_first.received) == len(payloads) + 1


async def test_rows_are_written_read_replaced_and_forgotten(backend: Backend) -> None:
    store = presence_of(backend)
    worker, topic, other = worker_id(), fresh_topic(), fresh_topic()
    alice = PresenceRow(topic, worker, "alice", 2, b'{"name":"Alice"}')
    bob = PresenceRow(topic, worker, "bob", 1)
    elsewhere = PresenceRow(other, worker, "alice", 1, b'{"name":"Alice"}')
    assert (
        await store.presence_write(worker, 1, TTL, [alice, bob, elsewhere], replace=False) is False
    )
    snapshot = await store.presence_read(topic)
    assert stored(snapshot.rows) == stored([alice, bob])
    assert snapshot.seqs[worker] == 1
    assert stored((await store.presence_read(other)).rows) == stored([elsewhere])

    # A change of one row leaves the others as they are.
    alice_again = PresenceRow(topic, worker, "alice", 3, b'{"name":"Alice B."}')
    assert await store.presence_write(worker, 2, TTL, [alice_again], replace=False) is True
    snapshot = await store.presence_read(topic)
    assert stored(snapshot.rows) == stored([alice_again, bob])
    assert snapshot.seqs[worker] == 2

    # Replace: the rows given are the worker's whole state, on every topic.
    carol = PresenceRow(topic, worker, "carol", 1, b"{}")
    assert await store.presence_write(worker, 3, TTL, [carol], replace=True) is True
    assert stored((await store.presence_read(topic)).rows) == stored([carol])
    assert list((await store.presence_read(other)).rows) == []

    await store.presence_forget(worker)
    await store.presence_forget(worker)  # twice is harmless
    await store.presence_forget(worker_id())  # and so is an unknown worker
    snapshot = await store.presence_read(topic)
    assert (list(snapshot.rows), worker in snapshot.seqs) == ([], False)
    # Forgotten, it is unknown: its next write says so.
    assert await store.presence_write(worker, 4, TTL, [], replace=False) is False
    await store.presence_forget(worker)


async def test_zero_connections_delete_a_row(backend: Backend) -> None:
    store = presence_of(backend)
    worker, topic = worker_id(), fresh_topic()
    rows = [PresenceRow(topic, worker, user, 1) for user in ("alice", "bob")]
    await store.presence_write(worker, 1, TTL, rows, replace=False)
    await store.presence_write(
        worker, 2, TTL, [PresenceRow(topic, worker, "alice", 0)], replace=False
    )
    assert [row.user for row in (await store.presence_read(topic)).rows] == ["bob"]
    await store.presence_write(
        worker, 3, TTL, [PresenceRow(topic, worker, "bob", 0)], replace=False
    )
    snapshot = await store.presence_read(topic)
    assert list(snapshot.rows) == []
    assert snapshot.seqs[worker] == 3  # alive without rows
    # A row that never was, deleted: nothing happens.
    await store.presence_write(worker, 4, TTL, [PresenceRow(topic, worker, "x", 0)], replace=True)
    assert list((await store.presence_read(topic)).rows) == []
    await store.presence_forget(worker)


async def test_two_workers_share_a_topic_and_topics_are_apart(
    workers: tuple[PresenceBackend, PresenceBackend],
) -> None:
    first, second = workers
    one, two = worker_id(), worker_id()
    topic, other = fresh_topic(), fresh_topic()
    # The same user through both workers: a row each.
    on_one = [PresenceRow(topic, one, "alice", 1, b'{"n":1}'), PresenceRow(other, one, "bob", 1)]
    on_two = [PresenceRow(topic, two, "alice", 2, b'{"n":2}')]
    await first.presence_write(one, 10, TTL, on_one, replace=False)
    await second.presence_write(two, 20, TTL, on_two, replace=False)
    for backend in (first, second):
        snapshot = await backend.presence_read(topic)
        assert stored(snapshot.rows) == stored([on_one[0], *on_two])
        assert (snapshot.seqs[one], snapshot.seqs[two]) == (10, 20)
        assert stored((await backend.presence_read(other)).rows) == stored([on_one[1]])
        assert list((await backend.presence_read(fresh_topic())).rows) == []
    # One worker's replace leaves the other's rows alone.
    await second.presence_write(two, 21, TTL, [], replace=True)
    assert stored((await first.presence_read(topic)).rows) == stored([on_one[0]])
    await first.presence_forget(one)
    await second.presence_forget(two)


async def test_a_worker_that_stops_writing_expires_and_is_swept(
    workers: tuple[PresenceBackend, PresenceBackend],
) -> None:
    first, second = workers
    mortal, lasting, topic = worker_id(), worker_id(), fresh_topic()
    gone = PresenceRow(topic, mortal, "alice", 1)
    kept = PresenceRow(topic, lasting, "bob", 1)
    assert await first.presence_write(mortal, 1, 0.3, [gone], replace=False) is False
    assert await first.presence_write(mortal, 2, 0.3, [], replace=False) is True
    await second.presence_write(lasting, 1, TTL, [kept], replace=False)
    assert stored((await second.presence_read(topic)).rows) == stored([gone, kept])
    await anyio.sleep(0.6)
    snapshot = await second.presence_read(topic)
    assert stored(snapshot.rows) == stored([kept])
    assert mortal not in snapshot.seqs
    assert snapshot.seqs[lasting] == 1
    # Another worker's write sweeps the expired one's rows; the expired worker, writing
    # again, is told it was not alive, and its old rows stay gone.
    assert await second.presence_write(lasting, 2, TTL, [], replace=False) is True
    assert await first.presence_write(mortal, 3, TTL, [], replace=False) is False
    snapshot = await first.presence_read(topic)
    assert stored(snapshot.rows) == stored([kept])
    assert (snapshot.seqs[mortal], snapshot.seqs[lasting]) == (3, 2)
    await first.presence_forget(mortal)
    await second.presence_forget(lasting)


async def test_an_expired_worker_gets_none_of_its_old_rows_back(backend: Backend) -> None:
    store = presence_of(backend)
    worker, topic = worker_id(), fresh_topic()
    await store.presence_write(
        worker, 1, 0.2, [PresenceRow(topic, worker, "alice", 1)], replace=False
    )
    await anyio.sleep(0.4)
    # No other write swept it: its own write, telling it was not alive, drops the old rows.
    bob = PresenceRow(topic, worker, "bob", 1)
    assert await store.presence_write(worker, 2, TTL, [bob], replace=False) is False
    assert stored((await store.presence_read(topic)).rows) == stored([bob])
    await store.presence_forget(worker)


@pytest.mark.parametrize(
    "info",
    [b"{}", '{"name":"Zoë 🙂","note":"a b\\u0000c"}'.encode(), b'{"nested":{"list":[1,2]}}'],
)
async def test_info_is_kept_as_given(backend: Backend, info: bytes) -> None:
    store = presence_of(backend)
    worker, topic = worker_id(), fresh_topic()
    row = PresenceRow(topic, worker, "user.name@example.org/+=-~_:1", 7, info)
    await store.presence_write(worker, 1, TTL, [row], replace=False)
    assert list((await store.presence_read(topic)).rows) == [row]
    await store.presence_forget(worker)
