"""Users: identify, user streams with recovery, and revocation (memory backend)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from budget_ws import (
    BackendCapabilityMissing,
    CloseCode,
    ConnectionClosed,
    ConnectionManager,
    Event,
    Heartbeat,
    InvalidUser,
    MemoryBackend,
    Position,
    Recovery,
    User,
)
from budget_ws.backends import Listener
from budget_ws.testing import MemoryClient, connect

pytestmark = pytest.mark.anyio


class Notice(Event, name="test_users_notice", register=False):
    text: str


def by_name(principal: Any) -> User | None:
    return None if principal is None else User(principal, {"name": principal.title()})


@pytest.fixture
async def users_manager() -> AsyncIterator[ConnectionManager]:
    async with ConnectionManager(
        MemoryBackend(),
        identify=by_name,
        heartbeat=Heartbeat(interval=60, timeout=60),
        shutdown_timeout=2,
    ) as manager:
        yield manager


async def next_op(client: MemoryClient, op: str) -> dict[str, Any]:
    while True:
        frame = await client.receive()
        if frame.get("op") == op:
            return frame


async def test_an_identified_connection_is_told_its_user_and_holds_its_stream(
    users_manager: ConnectionManager,
) -> None:
    async with connect(users_manager, principal="alice") as client:
        welcome = await client.receive()
        assert welcome["op"] == "welcome"
        assert welcome["user"] == "alice"
        subscribed = await client.receive()
        assert subscribed["op"] == "subscribed"
        assert subscribed["topic"] == "~user:alice"
        assert "id" not in subscribed
        (connection,) = users_manager.connections.values()
        assert connection.user == "alice"
        assert "~user:alice" in connection.topics


async def test_an_anonymous_connection_has_no_user(users_manager: ConnectionManager) -> None:
    async with connect(users_manager) as client:
        welcome = await client.receive()
        assert "user" not in welcome
        (connection,) = users_manager.connections.values()
        assert connection.user is None
        assert not connection.topics


async def test_publish_to_user_reaches_every_connection_of_that_user_only(
    users_manager: ConnectionManager,
) -> None:
    async with (
        connect(users_manager, principal="alice") as tab1,
        connect(users_manager, principal="alice") as tab2,
        connect(users_manager, principal="bob") as bob,
    ):
        for client in (tab1, tab2, bob):
            await next_op(client, "subscribed")
        position = await users_manager.publish_to_user("alice", Notice(text="hi"))
        assert position.offset == 1
        for client in (tab1, tab2):
            frame = await client.receive_event()
            assert frame["data"] == {"text": "hi"}
            assert frame["topic"] == "~user:alice"
        await users_manager.publish_to_user("bob", Notice(text="only bob"))
        assert (await bob.receive_event())["data"] == {"text": "only bob"}


async def test_a_tab_that_was_offline_resumes_its_user_stream(
    users_manager: ConnectionManager,
) -> None:
    async with connect(users_manager, principal="alice") as tab:
        await next_op(tab, "subscribed")
        await users_manager.publish_to_user("alice", Notice(text="1"))
        await tab.receive_event()
        positions = dict(tab.positions)
    await users_manager.publish_to_user("alice", Notice(text="2"))
    await users_manager.publish_to_user("alice", Notice(text="3"))
    async with connect(users_manager, principal="alice", positions=positions) as tab:
        server_side = await next_op(tab, "subscribed")
        assert server_side["position"]["offset"] == 3
        assert not server_side["recovered"]
        answer = await tab.subscribe("~user:alice", position=positions["~user:alice"])
        assert answer["op"] == "subscribed"
        assert answer["recovered"] is True
        assert [(await tab.receive_event())["data"]["text"] for _ in range(2)] == ["2", "3"]


async def test_another_users_stream_is_forbidden(users_manager: ConnectionManager) -> None:
    async with connect(users_manager, principal="alice") as client:
        answer = await client.subscribe("~user:bob")
        assert answer["op"] == "error"
        assert answer["code"] == "forbidden"
        answer = await client.subscribe("~other")  # not a user stream: not a name at all
        assert answer["op"] == "error"
        assert answer["code"] == "invalid_topic"


async def test_a_server_side_subscription_resumes_without_authorize() -> None:
    async def on_connect(connection: Any) -> None:
        await manager.subscribe(connection, "budget:1")

    manager = ConnectionManager(
        MemoryBackend(), identify=by_name, authorize=lambda *_: False, on_connect=on_connect
    )
    async with manager:
        await manager.publish(Notice(text="1"), topic="budget:1")
        async with connect(manager, principal="alice") as client:
            answer = await client.subscribe("budget:1", position=Position(0, "x"))
            assert answer["op"] == "subscribed"  # allowed: the server gave it
            answer = await client.subscribe("budget:2")
            assert answer["code"] == "forbidden"


@pytest.mark.parametrize(
    ("identify", "expected"),
    [
        (lambda principal: "bad id!", "identify gave an unusable user"),
        (lambda principal: User("x" * 65), "identify gave an unusable user"),
        (lambda principal: 1 / 0, "identify failed"),
    ],
)
async def test_an_unusable_identify_closes_with_1011(
    identify: Any, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with ConnectionManager(MemoryBackend(), identify=identify) as manager:
        async with connect(manager, principal="alice") as client:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await client.receive()
            assert closed.value.code == CloseCode.INTERNAL_ERROR
    assert expected in caplog.text


async def test_identify_may_be_async_and_return_a_bare_id() -> None:
    async def identify(principal: Any) -> str:
        await anyio.lowlevel.checkpoint()
        return str(principal)

    async with ConnectionManager(MemoryBackend(), identify=identify) as manager:
        async with connect(manager, principal="carol") as client:
            assert (await client.receive())["user"] == "carol"


async def test_publish_to_user_refuses_a_bad_user_id(users_manager: ConnectionManager) -> None:
    with pytest.raises(InvalidUser):
        await users_manager.publish_to_user("no spaces", Notice(text="x"))


async def test_unsubscribe_user_revokes_the_topic_from_every_connection_of_the_user(
    users_manager: ConnectionManager,
) -> None:
    async with (
        connect(users_manager, principal="alice") as tab1,
        connect(users_manager, principal="alice") as tab2,
        connect(users_manager, principal="bob") as bob,
    ):
        for client in (tab1, tab2, bob):
            assert (await client.subscribe("budget:1"))["op"] == "subscribed"
        await users_manager.unsubscribe_user("alice", "budget:1")
        for client in (tab1, tab2):
            frame = await next_op(client, "unsubscribed")
            assert frame == {"op": "unsubscribed", "topic": "budget:1", "reason": "revoked"}
        await users_manager.publish(Notice(text="after"), topic="budget:1")
        assert (await bob.receive_event())["data"] == {"text": "after"}
        for connection in users_manager.connections.values():
            assert ("budget:1" in connection.topics) == (connection.user == "bob")


async def test_a_subscribe_in_flight_when_revoked_is_taken_back_once_made() -> None:
    allowed = {"budget:1"}
    asked = anyio.Event()
    answer = anyio.Event()

    async def authorize(principal: Any, topic: str, action: str) -> bool:
        asked.set()
        await answer.wait()  # the app read its data before the revocation
        return True

    manager = ConnectionManager(MemoryBackend(), identify=by_name, authorize=authorize)
    async with manager, connect(manager, principal="alice") as client:
        await next_op(client, "subscribed")  # its user stream
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(client.subscribe, "budget:1")
            await asked.wait()
            allowed.clear()
            await manager.unsubscribe_user("alice", "budget:1")
            answer.set()
        frame = await next_op(client, "unsubscribed")
        assert frame["reason"] == "revoked"
        (connection,) = manager.connections.values()
        assert "budget:1" not in connection.topics


async def test_disconnect_user_closes_every_connection_of_the_user_with_4010(
    users_manager: ConnectionManager,
) -> None:
    async with (
        connect(users_manager, principal="alice") as tab1,
        connect(users_manager, principal="alice") as tab2,
        connect(users_manager, principal="bob") as bob,
    ):
        for client in (tab1, tab2, bob):
            await next_op(client, "subscribed")
        await users_manager.disconnect_user("alice", reason="removed from the budget")
        for client in (tab1, tab2):
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await client.receive()
            assert closed.value.code == 4010
            assert closed.value.reason == "removed from the budget"
        assert [c.user for c in users_manager.connections.values()] == ["bob"]


@pytest.mark.parametrize(("code", "reason"), [(1001, ""), (5000, ""), (True, ""), (4010, "é" * 62)])
async def test_disconnect_user_refuses_what_a_close_frame_cannot_carry(
    users_manager: ConnectionManager, code: Any, reason: str
) -> None:
    with pytest.raises(ValueError, match="close"):
        await users_manager.disconnect_user("alice", code=code, reason=reason)


class NoSignals:
    """A third-party backend that only has the base contract."""

    def __init__(self) -> None:
        self.inner = MemoryBackend()

    async def __aenter__(self) -> NoSignals:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def publish(self, topic: str, payload: bytes) -> Position:
        return await self.inner.publish(topic, payload)

    async def subscribe(self, topic: str, listener: Listener) -> None:
        await self.inner.subscribe(topic, listener)

    async def unsubscribe(self, topic: str, listener: Listener) -> None:
        await self.inner.unsubscribe(topic, listener)

    async def history(self, topic: str, after: Position | None, limit: int) -> Recovery:
        return await self.inner.history(topic, after, limit)


async def test_a_backend_without_signals_refuses_revocation_clearly() -> None:
    async with ConnectionManager(NoSignals(), identify=by_name) as manager:
        with pytest.raises(BackendCapabilityMissing, match="cannot signal"):
            await manager.disconnect_user("alice")
        with pytest.raises(BackendCapabilityMissing, match="cannot signal"):
            await manager.unsubscribe_user("alice", "budget:1")
        # Users and their streams need no capability.
        async with connect(manager, principal="alice") as client:
            await next_op(client, "subscribed")
            await manager.publish_to_user("alice", Notice(text="x"))
            assert (await client.receive_event())["data"] == {"text": "x"}


async def test_a_foreign_signal_is_logged_and_ignored(
    users_manager: ConnectionManager, caplog: pytest.LogCaptureFixture
) -> None:
    backend = users_manager.backend
    assert isinstance(backend, MemoryBackend)
    with caplog.at_level(logging.WARNING):
        await backend.signal(b"not json")
        await backend.signal(b'{"no":"kind"}')
        await backend.signal(b'{"k":"u","u":"alice"}')  # no topic
        await backend.signal(b'{"k":"d","u":"alice","c":"x","r":""}')
        await backend.signal(b"[1, 2]")
    assert caplog.text.count("ignored a signal") == 5
    assert "Traceback" not in caplog.text


async def test_a_connection_still_being_identified_is_reached_by_disconnect_user() -> None:
    asked = anyio.Event()
    answer = anyio.Event()

    async def identify(principal: Any) -> str:
        asked.set()
        await answer.wait()  # the session was valid when the handshake was checked
        return str(principal)

    async with ConnectionManager(MemoryBackend(), identify=identify) as manager:
        async with connect(manager, principal="alice") as client:
            await asked.wait()
            await manager.disconnect_user("alice", reason="logged out")
            answer.set()
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await client.receive()
            assert (closed.value.code, closed.value.reason) == (4010, "logged out")
        async with connect(manager, principal="bob") as client:
            assert (await client.receive())["user"] == "bob"  # others are not affected


async def test_a_revoked_topic_without_local_subscribers_is_released(
    users_manager: ConnectionManager,
) -> None:
    async with connect(users_manager, principal="alice") as alice:
        await alice.subscribe("budget:1")
        assert users_manager.stats().topics == 2  # budget:1 and alice's stream
        await users_manager.unsubscribe_user("alice", "budget:1")
        await next_op(alice, "unsubscribed")
        with anyio.fail_after(5):
            for _ in range(500):
                if users_manager.stats().topics == 1:
                    break
                await anyio.sleep(0.01)
        assert users_manager.stats().topics == 1
