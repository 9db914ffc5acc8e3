"""Presence: who is on a topic, across workers, with coalesced frames (memory backend)."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest

from budget_ws import (
    BackendCapabilityMissing,
    BackendError,
    BackendUnavailable,
    CloseCode,
    ConnectionClosed,
    ConnectionManager,
    Heartbeat,
    InvalidLimit,
    Member,
    MemoryBackend,
    OutboxLimits,
    Presence,
    PresenceOptions,
    User,
)
from budget_ws.backends import PresenceRow
from budget_ws.testing import MemoryClient, connect

from .test_users import NoSignals, by_name, next_op

pytestmark = pytest.mark.anyio

FAST = PresenceOptions(interval=0.05, ttl=0.6)


def make_manager(
    backend: MemoryBackend | None = None, options: PresenceOptions = FAST, **kwargs: Any
) -> ConnectionManager:
    return ConnectionManager(
        backend or MemoryBackend(),
        identify=kwargs.pop("identify", by_name),
        presence=options,
        heartbeat=Heartbeat(interval=60, timeout=60),
        shutdown_timeout=2,
        **kwargs,
    )


@pytest.fixture
async def manager() -> AsyncIterator[ConnectionManager]:
    async with make_manager() as running:
        yield running


async def until(
    manager: ConnectionManager, topic: str, check: Callable[[Presence], bool]
) -> Presence:
    """The topic's presence once ``check`` holds (writes are asynchronous), within 5 s."""
    with anyio.fail_after(5):
        for _ in itertools.count():
            presence = await manager.presence(topic)
            if check(presence):
                return presence
            await anyio.sleep(0.01)
    raise AssertionError("unreachable")


async def settled(manager: ConnectionManager, topic: str, count: int) -> Presence:
    """The topic's presence once it counts ``count`` users."""
    return await until(manager, topic, lambda presence: presence.count == count)


async def test_a_user_with_two_tabs_is_present_once(manager: ConnectionManager) -> None:
    async with (
        connect(manager, principal="alice") as tab1,
        connect(manager, principal="alice") as tab2,
        connect(manager, principal="bob") as bob,
    ):
        for client in (tab1, tab2, bob):
            await client.subscribe("budget:1")
        presence = await settled(manager, "budget:1", 2)
        assert presence.members == (
            Member("alice", 2, {"name": "Alice"}),
            Member("bob", 1, {"name": "Bob"}),
        )
        assert not presence.truncated
        await tab2.unsubscribe("budget:1")
        await until(manager, "budget:1", lambda p: p.members[0].connections == 1)
    await settled(manager, "budget:1", 0)


async def test_anonymous_connections_and_user_streams_are_not_present(
    manager: ConnectionManager,
) -> None:
    async with connect(manager) as anonymous, connect(manager, principal="alice") as alice:
        await anonymous.subscribe("budget:1")
        await next_op(alice, "subscribed")
        await anyio.sleep(0.1)
        assert (await manager.presence("budget:1")).count == 0
        assert (await manager.presence("other")).count == 0


async def test_a_client_that_asks_gets_a_snapshot_then_coalesced_diffs() -> None:
    # An interval long beside the 20 connects, however slow the machine: they fall in a
    # few intervals, and so in a few frames.
    async with (
        make_manager(options=PresenceOptions(interval=0.5)) as manager,
        connect(manager, principal="alice") as alice,
    ):
        await alice.subscribe("budget:1")
        await settled(manager, "budget:1", 1)
        async with connect(manager, principal="observer") as observer:
            answer = await observer.subscribe("budget:1", presence=True)
            assert answer["op"] == "subscribed"
            snapshot = await next_op(observer, "presence")
            assert snapshot["topic"] == "budget:1"
            assert not snapshot["truncated"]
            assert {m["user"] for m in snapshot["members"]} <= {"alice", "observer"}
            async with AsyncExitStack() as stack:
                started = anyio.current_time()
                clients = [
                    await stack.enter_async_context(connect(manager, principal=f"user{i}"))
                    for i in range(20)
                ]
                for client in clients:
                    await client.subscribe("budget:1")
                present = {m["user"] for m in snapshot["members"]}
                frames = 0
                with anyio.fail_after(5):
                    while len(present) < 22:
                        diff = await next_op(observer, "presence_diff")
                        frames += 1
                        present |= {m["user"] for m in diff["joins"]}
                        present -= set(diff["leaves"])
                assert diff["count"] == 22
                # At most one frame per interval (whatever the machine's pace), so far
                # fewer frames than the 21 joins.
                intervals = (anyio.current_time() - started) / 0.5
                assert frames <= intervals + 1
                assert frames < 21
            with anyio.fail_after(5):
                while len(present) > 2:
                    diff = await next_op(observer, "presence_diff")
                    present -= set(diff["leaves"])
            assert present == {"alice", "observer"}


async def test_presence_must_be_tracked_and_allowed() -> None:
    async with ConnectionManager(MemoryBackend(), identify=by_name) as untracked:
        async with connect(untracked, principal="alice") as client:
            answer = await client.subscribe("budget:1", presence=True)
            assert answer["code"] == "presence_unavailable"
        with pytest.raises(BackendCapabilityMissing, match="does not track presence"):
            await untracked.presence("budget:1")
    options = PresenceOptions(topics=lambda topic: topic.startswith("budget:"))
    verdicts = {"subscribe": True, "presence": False}
    async with make_manager(
        options=options, authorize=lambda _, __, action: verdicts[action]
    ) as manager:
        async with connect(manager, principal="alice") as client:
            answer = await client.subscribe("chat:1", presence=True)
            assert answer["code"] == "presence_unavailable"
            answer = await client.subscribe("budget:1", presence=True)
            assert answer["code"] == "forbidden"
            assert "presence" in answer["message"]
            assert (await client.subscribe("budget:1"))["op"] == "subscribed"


async def test_members_beyond_the_limit_are_counted_not_listed() -> None:
    options = PresenceOptions(interval=0.05, max_members=2)
    async with make_manager(options=options) as manager:
        async with AsyncExitStack() as stack:
            clients: dict[str, MemoryClient] = {}
            for name in ("carol", "alice", "bob"):
                clients[name] = await stack.enter_async_context(connect(manager, principal=name))
                await clients[name].subscribe("budget:1")
            presence = await settled(manager, "budget:1", 3)
            assert [m.user for m in presence.members] == ["alice", "carol"]
            assert presence.truncated
            await clients["alice"].unsubscribe("budget:1")
            presence = await settled(manager, "budget:1", 2)
            # bob, left out while two were stored, takes alice's place.
            assert [m.user for m in presence.members] == ["bob", "carol"]
            assert not presence.truncated


async def test_info_larger_than_the_limit_closes_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    options = PresenceOptions(max_info_bytes=16)
    async with make_manager(
        options=options, identify=lambda p: User(p, {"bio": "x" * 100})
    ) as manager:
        async with connect(manager, principal="alice") as client:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await client.receive()
            assert closed.value.code == CloseCode.INTERNAL_ERROR
    assert "max_info_bytes" in caplog.text


@pytest.mark.parametrize(
    "options",
    [{"ttl": 0}, {"interval": -1}, {"max_members": 0}, {"max_info_bytes": 1.5}, {"ttl": "1"}],
)
def test_options_are_checked(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidLimit):
        PresenceOptions(**options)


async def test_presence_needs_a_backend_that_stores_it() -> None:
    with pytest.raises(BackendCapabilityMissing, match="cannot store presence"):
        ConnectionManager(NoSignals(), presence=PresenceOptions())  # type: ignore[arg-type]


async def ghost_write(
    backend: MemoryBackend, seq: int, users: dict[str, int], *, announce: bool = True
) -> None:
    """Write as another worker would, through the backend contract only."""
    rows = [
        PresenceRow("budget:1", "ghost", user, count, b'{"name":"Ghost"}')
        for user, count in users.items()
    ]
    await backend.presence_write("ghost", seq, FAST.ttl, rows, replace=False)
    if announce:
        message = {
            "k": "p",
            "w": "ghost",
            "s": seq,
            "rows": [[r.topic, r.user, r.connections, {"name": "Ghost"}] for r in rows],
        }
        await backend.signal(json.dumps(message).encode())


async def test_a_worker_that_stops_writing_disappears_after_the_ttl() -> None:
    backend = MemoryBackend()
    async with make_manager(backend) as manager, connect(manager, principal="alice") as alice:
        await alice.subscribe("budget:1", presence=True)
        await next_op(alice, "presence")
        await settled(manager, "budget:1", 1)
        await ghost_write(backend, 1, {"ghost": 1})
        await settled(manager, "budget:1", 2)
        started = anyio.current_time()
        while "ghost" not in (await next_op(alice, "presence_diff"))["leaves"]:
            pass  # the ghost crashed: it writes no more
        assert anyio.current_time() - started <= FAST.ttl + 2 * FAST.interval + 0.5
        assert (await manager.presence("budget:1")).count == 1


async def test_a_missed_signal_makes_the_view_read_the_backend_again() -> None:
    backend = MemoryBackend()
    async with make_manager(backend) as manager, connect(manager, principal="alice") as alice:
        await alice.subscribe("budget:1", presence=True)
        await next_op(alice, "presence")
        await ghost_write(backend, 1, {"ghost": 1})
        await next_op(alice, "presence_diff")
        await ghost_write(backend, 2, {"ghost": 0, "ghost2": 1}, announce=False)  # lost
        await ghost_write(backend, 3, {"ghost3": 1})
        present = {"alice", "ghost"}
        with anyio.fail_after(3):
            while present != {"alice", "ghost2", "ghost3"}:
                diff = await next_op(alice, "presence_diff")
                present |= {m["user"] for m in diff["joins"]}
                present -= set(diff["leaves"])


async def test_presence_spans_managers_sharing_a_backend() -> None:
    backend = MemoryBackend()
    async with make_manager(backend) as one, make_manager(backend) as two:
        async with (
            connect(one, principal="alice") as alice,
            connect(two, principal="alice") as alice_elsewhere,
            connect(two, principal="bob") as bob,
        ):
            await bob.subscribe("budget:1", presence=True)
            await next_op(bob, "presence")
            await alice.subscribe("budget:1")
            await alice_elsewhere.subscribe("budget:1")
            presence = await settled(one, "budget:1", 2)
            assert presence.members[0] == Member("alice", 2, {"name": "Alice"})
        # A manager that closes takes its rows away at once, not after the TTL.
    async with make_manager(backend) as three:
        assert (await three.presence("budget:1")).count == 0


class FlakyBackend(MemoryBackend):
    """The memory backend, whose presence calls fail while ``failing`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.failing: type[Exception] | None = None

    def _check(self) -> None:
        if self.failing is not None:
            raise self.failing("presence store down")

    async def presence_write(
        self, worker: str, seq: int, ttl: float, rows: Any, *, replace: bool
    ) -> bool:
        self._check()
        return await super().presence_write(worker, seq, ttl, rows, replace=replace)

    async def presence_read(self, topic: str) -> Any:
        self._check()
        return await super().presence_read(topic)

    async def presence_forget(self, worker: str) -> None:
        self._check()
        await super().presence_forget(worker)


@pytest.mark.parametrize("error", [BackendUnavailable, RuntimeError])
async def test_an_outage_is_logged_once_and_presence_catches_up_after_it(
    error: type[Exception], caplog: pytest.LogCaptureFixture
) -> None:
    backend = FlakyBackend()
    async with make_manager(backend) as manager:
        backend.failing = error
        async with connect(manager, principal="alice") as alice:
            await alice.subscribe("budget:1")
            answer = await alice.subscribe("budget:2", presence=True)
            assert answer["op"] == "subscribed"  # the subscription stands...
            refusal = await next_op(alice, "error")  # ...but its presence could not be read
            assert refusal["code"] == "backend_error"
            assert refusal["topic"] == "budget:2"
            with pytest.raises(BackendError):
                await manager.presence("budget:1")
            await anyio.sleep(0.3)  # several failed writes
            backend.failing = None
            presence = await settled(manager, "budget:1", 1)
            assert presence.members == (Member("alice", 1, {"name": "Alice"}),)
    assert caplog.text.count("presence could not reach the backend") == 1


async def test_a_backend_that_lost_the_worker_is_told_everything_again() -> None:
    backend = MemoryBackend()
    options = PresenceOptions(interval=0.05, ttl=0.3)
    async with make_manager(backend, options) as manager:
        async with connect(manager, principal="alice") as alice:
            await alice.subscribe("budget:1")
            await settled(manager, "budget:1", 1)
            for worker in {row.worker for row in (await backend.presence_read("budget:1")).rows}:
                await backend.presence_forget(worker)  # as a restarted Redis would
            assert (await manager.presence("budget:1")).count == 0
            await settled(manager, "budget:1", 1)  # within a renewal: ttl / 3


async def test_a_shutdown_that_cannot_remove_the_rows_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = FlakyBackend()
    async with make_manager(backend):
        backend.failing = BackendUnavailable
    assert "could not remove this worker's presence" in caplog.text


async def test_a_worker_that_shuts_down_leaves_every_view_at_once() -> None:
    backend = MemoryBackend()
    options = PresenceOptions(interval=0.05, ttl=30)
    async with make_manager(backend, options) as staying:
        async with connect(staying, principal="alice") as alice:
            await alice.subscribe("budget:1", presence=True)
            await next_op(alice, "presence")
            async with make_manager(backend, options) as leaving:
                async with connect(leaving, principal="bob") as bob:
                    await bob.subscribe("budget:1")
                    with anyio.fail_after(5):
                        while "bob" not in {
                            m["user"] for m in (await next_op(alice, "presence_diff"))["joins"]
                        }:
                            pass
                    # The connection stays open while its manager goes away.
                    leaving_started = anyio.current_time()
            with anyio.fail_after(5):
                while "bob" not in (await next_op(alice, "presence_diff"))["leaves"]:
                    pass
            # Well within the 30 s TTL: the worker said it was gone.
            assert anyio.current_time() - leaving_started < 5


class SlowWrites(MemoryBackend):
    """Presence writes take 50 ms, as a round trip to a remote server may."""

    async def presence_write(
        self, worker: str, seq: int, ttl: float, rows: Any, *, replace: bool
    ) -> bool:
        await anyio.sleep(0.05)
        return await super().presence_write(worker, seq, ttl, rows, replace=replace)


class NotifySized(SlowWrites):
    """Refuses signals larger than PostgreSQL's NOTIFY takes, as the PostgreSQL backend does;
    its writes are slow, so that changes pile up into large batches."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    async def signal(self, payload: bytes) -> None:
        self.largest = max(self.largest, len(payload))
        if len(payload) > 7999:
            raise BackendError(f"signal of {len(payload)} bytes")
        await super().signal(payload)


async def test_many_changes_are_written_in_batches_that_fit_a_signal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    big = {"bio": "é" * 200}  # 400 bytes of UTF-8, 1,200 if every character were escaped
    backend = NotifySized()
    async with make_manager(backend, identify=lambda p: User(p, big)) as manager:
        async with AsyncExitStack() as stack:
            for index in range(40):  # 40 x ~430 bytes: more than one signal's worth
                client = await stack.enter_async_context(connect(manager, principal=f"u{index}"))
                await client.subscribe("budget:1")
            presence = await settled(manager, "budget:1", 40)
            assert presence.members[0].info == big
    assert 4000 < backend.largest < 8000  # many rows per signal, within NOTIFY
    assert "presence could not reach the backend" not in caplog.text


async def test_a_users_newest_info_is_what_others_see(manager: ConnectionManager) -> None:
    names = iter(["Alice", "Alice B."])

    def identify(principal: Any) -> User:
        return User(principal, {"name": next(names)})

    async with make_manager(identify=identify) as manager:
        async with connect(manager, principal="alice") as first:
            await first.subscribe("budget:1")
            await settled(manager, "budget:1", 1)
            async with connect(manager, principal="alice") as second:
                await next_op(second, "subscribed")
                await until(
                    manager, "budget:1", lambda p: p.members[0].info == {"name": "Alice B."}
                )


async def test_info_that_is_not_json_closes_the_connection() -> None:
    async with make_manager(identify=lambda p: User(p, {"when": object()})) as manager:
        async with connect(manager, principal="alice") as client:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await client.receive()
            assert closed.value.code == CloseCode.INTERNAL_ERROR


async def test_a_change_made_while_its_row_is_being_written_is_written_next() -> None:
    async with make_manager(SlowWrites()) as manager, connect(manager, principal="alice") as alice:
        await alice.subscribe("budget:1")
        await settled(manager, "budget:1", 1)
        await alice.unsubscribe("budget:1")  # the leave's write starts now...
        await anyio.sleep(0.01)
        await alice.subscribe("budget:1")  # ...and the user is back during it
        await anyio.sleep(0.3)  # several writes later
        assert (await manager.presence("budget:1")).count == 1


def test_bounds_whose_largest_frame_no_outbox_holds_are_refused() -> None:
    options = PresenceOptions(max_members=10_000, max_info_bytes=512)
    with pytest.raises(InvalidLimit, match=r"OutboxLimits\.max_bytes"):
        ConnectionManager(presence=options)
    # Fits once the outbox may hold it, or with less info per user.
    ConnectionManager(presence=options, outbox=OutboxLimits(max_bytes=8 * 1024 * 1024))
    ConnectionManager(presence=PresenceOptions(max_members=5_000, max_info_bytes=16))


async def test_the_largest_frame_the_bounds_allow_reaches_the_client() -> None:
    options = PresenceOptions(max_members=50, max_info_bytes=200, interval=0.05)
    outbox = OutboxLimits(max_bytes=50 * (200 + 112) + 512)
    info = {"n": "é" * 90}  # 2 bytes each as UTF-8: close to max_info_bytes
    async with make_manager(
        options=options, outbox=outbox, identify=lambda p: User(p, info)
    ) as manager:
        async with AsyncExitStack() as stack:
            for index in range(50):
                name = f"{index:02d}" + "u" * 62  # 64 characters, the longest id
                client = await stack.enter_async_context(connect(manager, principal=name))
                await client.subscribe("budget:1")
            await settled(manager, "budget:1", 50)
            observer = await stack.enter_async_context(connect(manager, principal="zz"))
            await observer.subscribe("budget:1", presence=True)
            snapshot = await next_op(observer, "presence")
            assert len(snapshot["members"]) == 50


@pytest.mark.parametrize(
    "rows",
    [
        [[["budget:1"], "x", 1, {}]],
        [["budget:1", "x", "1", {}]],
        [["budget:1", "x", 1, {}], ["budget:1"]],
        "rows",
    ],
)
async def test_a_malformed_presence_signal_changes_nothing(
    rows: Any, caplog: pytest.LogCaptureFixture
) -> None:
    backend = MemoryBackend()
    async with make_manager(backend) as manager, connect(manager, principal="alice") as alice:
        await alice.subscribe("budget:1", presence=True)
        await next_op(alice, "presence")
        message = {"k": "p", "w": "ghost", "s": 1, "rows": rows}
        await backend.signal(json.dumps(message).encode())
        await ghost_write(backend, 1, {"ghost": 1})  # the same seq, well formed: applied
        present: set[str] = set()
        with anyio.fail_after(5):
            while "ghost" not in present:
                present |= {m["user"] for m in (await next_op(alice, "presence_diff"))["joins"]}
        assert "x" not in present
    assert "ignored a signal" in caplog.text
    assert "Traceback" not in caplog.text
