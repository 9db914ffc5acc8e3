"""Users, presence and revocation across uvicorn workers that share a Redis server.

Each worker is a uvicorn process of its own (``users_workers_app.py``) with its own
``ConnectionManager``: users come from the handshake's ``?user=``, presence is tracked with
a short TTL, and an allow-list in the test's own Redis keys decides who may subscribe.
Clients are ``websockets`` clients speaking ``budget-ws.v1``, one per browser "tab"; a
task per tab keeps every frame with the time it arrived. The app is driven through its
HTTP routes, and what it says (``GET /presence``) is compared with a model the test keeps
of which tab holds which topic.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import httpx
import pytest
from tests.backends.conftest import RedisServer
from tests.support.servers import UvicornWorker
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent
REDIS_URL = "redis://127.0.0.1:6379/0"
SUBPROTOCOL = "budget-ws.v1"
ANONYMOUS = "~anonymous"  # who an anonymous client is in the app's allow-list

TTL = 3.0
INTERVAL = 0.2
CRASH_BOUND = TTL + 2 * INTERVAL + 1.0
"""A killed worker's users are gone from the others' presence within this (s)."""
RESTART_BOUND = TTL + 5.0
"""After Redis restarted empty, presence is exact again within this: a renewal (TTL/3)
finds the worker unknown and writes it whole, after the reconnection's backoff."""
SIGNAL_BOUND = 1.0
"""A revocation or a disconnection reaches every tab on every worker within this (s)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # uvicorn, the websockets client and redis-py run on asyncio only


# Workers ----------------------------------------------------------------------------------


def make_worker(name: str, backend_url: str, grants_key: str) -> UvicornWorker:
    """A worker of ``users_workers_app`` on ``backend_url``, its grants at ``grants_key``."""
    environment = {
        "USERS_WORKERS_BACKEND": backend_url,
        "USERS_WORKERS_GRANTS": REDIS_URL,
        "USERS_WORKERS_GRANTS_KEY": grants_key,
        "USERS_WORKERS_TTL": str(TTL),
        "USERS_WORKERS_INTERVAL": str(INTERVAL),
    }
    return UvicornWorker(name, "users_workers_app", HERE, environment)


class Workers:
    """Starts workers on the test's key prefix; the fixture stops those still running."""

    def __init__(self, key_prefix: str) -> None:
        self.key_prefix = key_prefix
        self.started: list[UvicornWorker] = []

    def start(self, names: str, redis_url: str = REDIS_URL) -> list[UvicornWorker]:
        """One worker per letter of ``names``, all on the Redis server at ``redis_url``."""
        backend = (
            f"{redis_url}?key_prefix={self.key_prefix}&history_size=100&topic_ttl=300"
            "&reconnect_delay=0.05,0.5"
        )
        group = [make_worker(name, backend, f"{self.key_prefix}:grants") for name in names]
        self.started += group
        for worker in group:
            worker.launch()
        for worker in group:
            worker.wait_listening()
        return group


@pytest.fixture
def workers(key_prefix: str) -> Iterator[Workers]:
    launched = Workers(key_prefix)
    yield launched
    for worker in launched.started:
        worker.stop()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, without persistence: a restart empties it."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        yield client


async def call(
    http: httpx.AsyncClient, worker: UvicornWorker, route: str, **params: str | int
) -> dict[str, Any]:
    """POST to one of the app's routes; its JSON answer."""
    response = await http.post(f"{worker.http}/{route}", params=params)
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer


async def grant(
    http: httpx.AsyncClient, worker: UvicornWorker, pairs: Iterable[tuple[str, str]]
) -> None:
    """Let each ``(user, topic)`` subscribe and see presence (the allow-list is shared)."""
    response = await http.post(f"{worker.http}/grant", json={"grants": [list(p) for p in pairs]})
    response.raise_for_status()


async def presence_of(
    http: httpx.AsyncClient, worker: UvicornWorker, topic: str
) -> dict[str, int] | None:
    """``manager.presence(topic)`` on ``worker``, as user -> connections (None: a 503)."""
    response = await http.get(f"{worker.http}/presence", params={"topic": topic})
    if response.status_code == 503:
        return None
    response.raise_for_status()
    body = response.json()
    members = {member["user"]: member["connections"] for member in body["members"]}
    assert body["topic"] == topic
    assert body["count"] == len(members), body
    assert body["truncated"] is False, body
    assert all(m["info"] == {"name": m["user"].upper()} for m in body["members"]), body
    return members


async def presence_settles(
    http: httpx.AsyncClient,
    worker: UvicornWorker,
    topic: str,
    expected: dict[str, int],
    *,
    within: float,
    since: float | None = None,
) -> float:
    """Poll ``worker``'s presence of ``topic`` until it is ``expected``; the seconds that
    took (from ``since``)."""
    started = time.monotonic() if since is None else since
    while True:
        seen = await presence_of(http, worker, topic)
        if seen == expected:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            assert seen == expected, f"presence of {topic} on {worker.name} after {within} s"
        await anyio.sleep(0.05)


# Tabs -------------------------------------------------------------------------------------

ABSENT = object()
"""A field that a frame must not have, in :meth:`Tab.expect`."""


def frame_is(frame: dict[str, Any], op: str, fields: dict[str, Any]) -> bool:
    if frame.get("op") != op:
        return False
    for name, value in fields.items():
        if value is ABSENT:
            if name in frame:
                return False
        elif frame.get(name) != value:
            return False
    return True


class Tab:
    """One browser tab: a connection whose frames a task keeps, with their arrival times.

    ``topics`` is the test's model of what the tab holds: set when the server confirmed
    a subscription, emptied when the tab (or its worker) goes away.
    """

    def __init__(
        self, name: str, worker: UvicornWorker, user: str | None, connection: ClientConnection
    ):
        self.name = name
        self.worker = worker
        self.user = user
        self.connection = connection
        self.arrivals: list[tuple[float, dict[str, Any]]] = []
        self.topics: set[str] = set()
        self.closed_at: float | None = None
        self._news = anyio.Event()
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"<Tab {self.name} {self.user} on {self.worker.name}>"

    @property
    def frames(self) -> list[dict[str, Any]]:
        return [frame for _, frame in self.arrivals]

    def events(self, topic: str) -> list[int]:
        """The ``n`` of the event frames of ``topic``, in the order they arrived."""
        return [f["data"]["n"] for f in self.frames if "event" in f and f["topic"] == topic]

    async def read(self) -> None:
        try:
            async for message in self.connection:
                text = message.decode() if isinstance(message, bytes) else message
                now = time.monotonic()
                self.arrivals += [(now, json.loads(line)) for line in text.split("\n") if line]
                self._tell()
        except ConnectionClosed:
            pass
        finally:
            self.closed_at = time.monotonic()
            self._tell()

    def _tell(self) -> None:
        news, self._news = self._news, anyio.Event()
        news.set()

    async def wait_until(self, condition: Callable[[], bool], what: str, within: float) -> None:
        with anyio.move_on_after(within):
            while not condition():
                await self._news.wait()
            return
        raise AssertionError(f"{self!r}: no {what} within {within} s; frames: {self.frames}")

    async def expect(self, op: str, within: float = 5.0, **fields: Any) -> dict[str, Any]:
        """The first frame ``op`` with these fields; waits for it."""
        await self.wait_until(
            lambda: any(frame_is(f, op, fields) for f in self.frames), f"{op} {fields}", within
        )
        return next(f for f in self.frames if frame_is(f, op, fields))

    def arrived(self, op: str, **fields: Any) -> float:
        """When the first frame ``op`` with these fields arrived."""
        return next(at for at, f in self.arrivals if frame_is(f, op, fields))

    async def wait_events(self, topic: str, count: int, within: float = 5.0) -> list[int]:
        """Wait until ``count`` events of ``topic`` arrived; the ``n`` of all that did."""
        await self.wait_until(
            lambda: len(self.events(topic)) >= count, f"{count} events of {topic}", within
        )
        return self.events(topic)

    async def closure(self, within: float = 5.0) -> float:
        """When the connection ended; waits for it."""
        await self.wait_until(lambda: self.closed_at is not None, "close", within)
        assert self.closed_at is not None
        return self.closed_at

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send ``frame`` with a new id; the server's answer to it."""
        request_id = next(self._ids)
        await self.connection.send(json.dumps({**frame, "id": request_id}))
        await self.wait_until(
            lambda: any(f.get("id") == request_id for f in self.frames), f"answer {frame}", 5.0
        )
        return next(f for f in self.frames if f.get("id") == request_id)

    async def subscribe(
        self, topic: str, *, presence: bool = False, position: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Subscribe; the answer, ``subscribed`` or ``error``."""
        frame: dict[str, Any] = {"op": "subscribe", "topic": topic}
        if presence:
            frame["presence"] = True
        if position is not None:
            frame["position"] = position
        answer = await self.request(frame)
        if answer["op"] == "subscribed":
            self.topics.add(topic)
        return answer

    async def subscribed(self, topic: str, *, presence: bool = False) -> None:
        answer = await self.subscribe(topic, presence=presence)
        assert answer["op"] == "subscribed", answer

    async def unsubscribe(self, topic: str) -> None:
        answer = await self.request({"op": "unsubscribe", "topic": topic})
        assert answer["op"] == "unsubscribed", answer
        self.topics.discard(topic)


class Browser:
    """Opens tabs, each read by a task of its own."""

    def __init__(self, task_group: anyio.abc.TaskGroup) -> None:
        self._task_group = task_group
        self.tabs: list[Tab] = []

    async def open(self, worker: UvicornWorker, user: str | None = None) -> Tab:
        """A new tab on ``worker``, once welcomed (and subscribed to its user's stream)."""
        url = worker.ws if user is None else f"{worker.ws}?user={user}"
        connection = await connect(
            url, subprotocols=[Subprotocol(SUBPROTOCOL)], compression=None, proxy=None
        )
        tab = Tab(f"tab{len(self.tabs)}", worker, user, connection)
        self.tabs.append(tab)
        self._task_group.start_soon(tab.read)
        welcome = await tab.expect("welcome")
        assert welcome.get("user") == user, welcome
        if user is not None:
            await tab.expect("subscribed", topic=f"~user:{user}", id=ABSENT)
        return tab

    async def close(self, tab: Tab, *, abort: bool = False) -> None:
        """Close ``tab``; with ``abort``, drop its TCP connection without a close frame."""
        tab.topics.clear()
        if abort:
            tab.connection.transport.abort()
        else:
            await tab.connection.close()

    def lost(self, worker: UvicornWorker) -> None:
        """``worker`` died: its tabs hold nothing any more."""
        for tab in self.tabs:
            if tab.worker is worker:
                tab.topics.clear()

    def present(self, topic: str, tabs: Iterable[Tab] | None = None) -> dict[str, int]:
        """The model: each user's tabs holding ``topic`` (of ``tabs``, by default all),
        on every worker."""
        chosen = self.tabs if tabs is None else tabs
        return dict(Counter(t.user for t in chosen if t.user is not None and topic in t.topics))


@asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    """A :class:`Browser` whose tabs are all closed when the block ends."""
    async with anyio.create_task_group() as task_group:
        opened = Browser(task_group)
        try:
            yield opened
        finally:
            with anyio.move_on_after(5, shield=True):
                async with anyio.create_task_group() as closing:
                    for tab in opened.tabs:
                        closing.start_soon(tab.connection.close)
            for tab in opened.tabs:  # a test that failed may leave unread frames behind
                tab.connection.transport.abort()
            task_group.cancel_scope.cancel()


def presence_seen(tab: Tab, topic: str) -> tuple[dict[str, int] | None, float | None]:
    """What ``tab``'s presence frames of ``topic`` add up to (user -> connections), and
    when the last frame that changed it arrived; each frame is checked on the way."""
    members: dict[str, int] | None = None
    changed_at: float | None = None
    for at, frame in tab.arrivals:
        if frame.get("topic") != topic or frame.get("op") not in ("presence", "presence_diff"):
            continue
        if frame["op"] == "presence":
            assert frame["truncated"] is False, frame
            listed = frame["members"]
            now = {member["user"]: member["connections"] for member in listed}
        else:
            assert members is not None, f"a presence_diff before the presence: {frame}"
            assert frame["joins"] or frame["leaves"], f"a diff that says nothing: {frame}"
            listed = frame["joins"]
            now = dict(members)
            for user in frame["leaves"]:
                assert user in now, f"{user} left without having been present: {frame}"
                del now[user]
            now.update({member["user"]: member["connections"] for member in listed})
        assert all(m["info"] == {"name": m["user"].upper()} for m in listed), frame
        assert frame["count"] == len(now), (frame, now)
        if now != members:
            changed_at = at
        members = now
    return members, changed_at


async def presence_settled(tab: Tab, topic: str, expected: dict[str, int], within: float) -> float:
    """Wait until ``tab``'s presence frames add up to ``expected``; when that frame arrived."""
    await tab.wait_until(
        lambda: presence_seen(tab, topic)[0] == expected, f"presence {expected}", within
    )
    changed_at = presence_seen(tab, topic)[1]
    assert changed_at is not None
    return changed_at


# Presence ---------------------------------------------------------------------------------

STORM_SEED = 11
STORM_OPERATIONS = 150
STORM_LANES = 5
STORM_TOPICS = ["budget:1", "budget:2"]
STORM_USERS = [f"u{k}" for k in range(10)]


async def storm_step(
    rng: random.Random, tabs: Browser, storm: list[Tab], workers: list[UvicornWorker]
) -> str:
    """One random operation: open a tab (maybe anonymous), close one (maybe dropping its
    TCP connection), or subscribe or unsubscribe one; says which it was."""
    roll = rng.random()
    if not storm or roll < 0.35:
        user = None if rng.random() < 0.15 else rng.choice(STORM_USERS)
        tab = await tabs.open(rng.choice(workers), user)
        for topic in rng.sample(STORM_TOPICS, rng.randint(1, 2)):
            await tab.subscribed(topic)
        storm.append(tab)
        return "open" if user else "open anonymous"
    if roll < 0.6:
        tab = storm.pop(rng.randrange(len(storm)))
        abort = rng.random() < 0.5
        await tabs.close(tab, abort=abort)
        return "abort" if abort else "close"
    tab = rng.choice(storm)
    if roll < 0.85:
        topic = rng.choice(STORM_TOPICS)
        held = topic in tab.topics  # subscribing again restarts the subscription
        await tab.subscribed(topic)
        return "subscribe again" if held else "subscribe"
    if tab.topics:
        await tab.unsubscribe(rng.choice(sorted(tab.topics)))
    return "unsubscribe"


async def test_presence_is_exact_on_every_worker_after_a_storm_of_connects_and_disconnects(
    workers: Workers, http: httpx.AsyncClient
) -> None:
    pair = workers.start("AB")
    worker_a = pair[0]
    users = [*STORM_USERS, "watcher", ANONYMOUS]
    await grant(http, worker_a, [(user, topic) for user in users for topic in STORM_TOPICS])
    async with browser() as tabs:
        # A presence client on each worker, for both topics.
        watchers = [await tabs.open(worker, "watcher") for worker in pair]
        for watcher in watchers:
            for topic in STORM_TOPICS:
                await watcher.subscribed(topic, presence=True)
        operations: Counter[str] = Counter()
        changes: Counter[str] = Counter()

        async def lane(seed: int, count: int) -> None:
            # Each lane works on tabs of its own, so the final state does not depend on
            # how the lanes interleave; several at once keep every worker's writes busy.
            rng = random.Random(seed)
            storm: list[Tab] = []
            for _ in range(count):
                before = {topic: tabs.present(topic, storm) for topic in STORM_TOPICS}
                operations[await storm_step(rng, tabs, storm, pair)] += 1
                changes.update(t for t in STORM_TOPICS if tabs.present(t, storm) != before[t])

        started = time.monotonic()
        async with anyio.create_task_group() as task_group:
            for index in range(STORM_LANES):
                task_group.start_soon(lane, STORM_SEED + index, STORM_OPERATIONS // STORM_LANES)
        storm_seconds = time.monotonic() - started
        assert len(operations) == 7, f"the seeds try every kind of operation: {operations}"
        assert min(operations.values()) >= 3, operations
        print(f"storm: {dict(operations)} in {storm_seconds:.2f} s")

        for topic in STORM_TOPICS:
            expected = tabs.present(topic)
            assert len(expected) > 3, "the storm leaves some users behind"
            for worker in pair:
                await presence_settles(http, worker, topic, expected, within=5)
            for watcher in watchers:
                await presence_settled(watcher, topic, expected, within=5)
                # One snapshot, then at most one diff per interval, however many changes.
                diffs = [
                    at
                    for at, f in watcher.arrivals
                    if f.get("op") == "presence_diff" and f["topic"] == topic
                ]
                assert diffs, "the storm changed the presence"
                assert 1 + len(diffs) < changes[topic] / 2, (len(diffs), changes[topic])
                assert len(diffs) <= (diffs[-1] - diffs[0]) / INTERVAL + 2, diffs
                print(
                    f"storm {topic}: {changes[topic]} changes, "
                    f"{len(diffs)} diffs to the watcher on {watcher.worker.name}"
                )


async def test_a_killed_workers_users_leave_the_presence_of_the_others_within_the_ttl(
    workers: Workers, http: httpx.AsyncClient
) -> None:
    worker_a, worker_b = workers.start("AB")
    topic = "budget:1"
    placed = [(worker_a, "ann"), (worker_b, "ben"), (worker_b, "bea"), (worker_a, "cid")]
    placed.append((worker_b, "cid"))  # on both workers: stays, with one connection less
    await grant(http, worker_a, [(user, topic) for user in ("ann", "ben", "bea", "cid", "watcher")])
    async with browser() as tabs:
        watcher = await tabs.open(worker_a, "watcher")
        await watcher.subscribed(topic, presence=True)
        for worker, user in placed:
            await (await tabs.open(worker, user)).subscribed(topic)
        everyone = tabs.present(topic)
        assert everyone == {"watcher": 1, "ann": 1, "ben": 1, "bea": 1, "cid": 2}
        await presence_settles(http, worker_a, topic, everyone, within=5)
        await presence_settled(watcher, topic, everyone, within=5)

        worker_b.kill()
        killed = time.monotonic()
        tabs.lost(worker_b)
        survivors = tabs.present(topic)
        assert survivors == {"watcher": 1, "ann": 1, "cid": 1}
        api_delay = await presence_settles(
            http, worker_a, topic, survivors, within=CRASH_BOUND + 3, since=killed
        )
        frame_delay = await presence_settled(watcher, topic, survivors, CRASH_BOUND + 3) - killed
        print(
            f"killed worker: presence() after {api_delay:.2f} s, frames after {frame_delay:.2f} s"
        )
        assert api_delay <= CRASH_BOUND
        assert frame_delay <= CRASH_BOUND
        leaves = {
            user for f in watcher.frames if f.get("op") == "presence_diff" for user in f["leaves"]
        }
        assert leaves == {"ben", "bea"}


async def test_presence_comes_back_exact_after_redis_restarts_empty(
    private_redis: RedisServer, workers: Workers, http: httpx.AsyncClient
) -> None:
    worker_a, worker_b, worker_c = workers.start("ABC", redis_url=private_redis.url)
    topic = "budget:1"
    await grant(http, worker_a, [(user, topic) for user in ("ann", "amy", "ben", "cat", "watcher")])
    async with browser() as tabs:
        watchers = [await tabs.open(worker, "watcher") for worker in (worker_a, worker_b)]
        for watcher in watchers:
            await watcher.subscribed(topic, presence=True)
        placed = {}
        for worker, user in [(worker_a, "ann"), (worker_a, "amy"), (worker_b, "ben"),
                             (worker_b, "ann"), (worker_c, "cat"), (worker_c, "ben")]:  # fmt: skip
            placed[worker.name, user] = tab = await tabs.open(worker, user)
            await tab.subscribed(topic)
        before = tabs.present(topic)
        for worker in (worker_a, worker_b):
            await presence_settles(http, worker, topic, before, within=5)
        for watcher in watchers:
            await presence_settled(watcher, topic, before, within=5)

        # The outage: tabs leave, a worker crashes, nothing reaches Redis meanwhile.
        await anyio.to_thread.run_sync(private_redis.stop)
        await tabs.close(placed["A", "amy"])
        await tabs.close(placed["B", "ann"], abort=True)
        worker_c.kill()
        tabs.lost(worker_c)
        await anyio.sleep(1.5)  # writes and signals fail for a while
        await anyio.to_thread.run_sync(private_redis.start)
        restarted = time.monotonic()

        after = tabs.present(topic)
        assert after == {"watcher": 2, "ann": 1, "ben": 1}
        delays = {}
        for worker in (worker_a, worker_b):
            delays[f"presence() on {worker.name}"] = await presence_settles(
                http, worker, topic, after, within=RESTART_BOUND + 3, since=restarted
            )
        for watcher in watchers:
            settled = await presence_settled(watcher, topic, after, RESTART_BOUND + 3)
            delays[f"frames on {watcher.worker.name}"] = settled - restarted
        print("Redis restarted: " + ", ".join(f"{k} after {v:.2f} s" for k, v in delays.items()))
        assert max(delays.values()) <= RESTART_BOUND, delays

        # And it stays so through the next renewals: nothing of the dead worker comes back.
        await anyio.sleep(TTL / 3 + 2 * INTERVAL)
        for worker in (worker_a, worker_b):
            assert await presence_of(http, worker, topic) == after
        for watcher in watchers:
            assert presence_seen(watcher, topic)[0] == after


# User streams ------------------------------------------------------------------------------


async def test_every_tab_of_a_user_gets_its_events_and_a_reopened_tab_resumes_its_stream(
    workers: Workers, http: httpx.AsyncClient
) -> None:
    worker_a, worker_b = workers.start("AB")
    stream = "~user:carol"

    async def to_carol(worker: UvicornWorker, n: int) -> dict[str, Any]:
        return await call(http, worker, "publish_to_user", user="carol", n=n)

    async with browser() as tabs:
        carol = [await tabs.open(worker, "carol") for worker in (worker_a, worker_a, worker_b)]
        leaving = await tabs.open(worker_b, "carol")
        dave = await tabs.open(worker_a, "dave")
        first = await to_carol(worker_a, 1)
        assert await leaving.wait_events(stream, 1) == [1]
        last = next(f for f in leaving.frames if "event" in f)
        position = {"offset": last["offset"], "epoch": last["epoch"]}
        assert position == first
        await tabs.close(leaving)

        missed = [await to_carol(worker_b, 2), await to_carol(worker_a, 3)]
        assert [p["offset"] for p in missed] == [first["offset"] + 1, first["offset"] + 2]
        for tab in carol:
            await tab.wait_events(stream, 3)

        # Back on the other worker: subscribed by the server at once, then resumed.
        back = await tabs.open(worker_a, "carol")
        server_side = await back.expect("subscribed", topic=stream, id=ABSENT)
        assert server_side["recovered"] is False
        assert server_side["position"] == missed[-1]
        answer = await back.subscribe(stream, position=position)
        assert answer["op"] == "subscribed", answer
        assert answer["recovered"] is True
        assert answer["position"] == missed[-1]
        assert await back.wait_events(stream, 2) == [2, 3], "the missed events"

        await to_carol(worker_b, 4)
        for tab in carol:
            assert await tab.wait_events(stream, 4) == [1, 2, 3, 4]
        assert await back.wait_events(stream, 3) == [2, 3, 4], "then live ones, none twice"

        # Nobody else hears carol's stream, nor may subscribe to it.
        assert [f for f in dave.frames if "event" in f] == []
        refused = await dave.subscribe(stream)
        assert refused["op"] == "error", refused
        assert refused["code"] == "forbidden", refused


# Revocation ---------------------------------------------------------------------------------


async def test_a_revoked_topic_leaves_every_tab_of_the_user_on_every_worker_at_once(
    workers: Workers, http: httpx.AsyncClient
) -> None:
    worker_a, worker_b = workers.start("AB")
    revoked, kept = "budget:1", "budget:2"
    await grant(http, worker_a, [("alice", revoked), ("alice", kept), ("bob", revoked)])
    async with browser() as tabs:
        alice = [await tabs.open(worker, "alice") for worker in (worker_a, worker_b, worker_b)]
        bob = [await tabs.open(worker, "bob") for worker in (worker_a, worker_b)]
        for tab in alice:
            await tab.subscribed(revoked)
            await tab.subscribed(kept)
        for tab in bob:
            await tab.subscribed(revoked)
        await presence_settles(http, worker_a, revoked, {"alice": 3, "bob": 2}, within=5)

        requested = time.monotonic()
        await call(http, worker_a, "revoke", user="alice", topic=revoked)
        arrivals = []
        for tab in alice:
            frame = await tab.expect("unsubscribed", topic=revoked, id=ABSENT)
            assert frame["reason"] == "revoked", frame
            arrivals.append(tab.arrived("unsubscribed", topic=revoked) - requested)
        print(f"revocation: last tab told after {max(arrivals) * 1000:.0f} ms")
        assert max(arrivals) < SIGNAL_BOUND, arrivals

        # alice hears no more of the topic and may not come back; the rest goes on.
        published = await call(http, worker_b, "publish", topic=revoked, n=1)
        await call(http, worker_b, "publish", topic=kept, n=2)
        for tab in alice:
            assert await tab.wait_events(kept, 1) == [2]
            assert tab.events(revoked) == []
        for tab in bob:
            assert await tab.wait_events(revoked, 1) == [1]
            assert not any(f.get("op") == "unsubscribed" for f in tab.frames)
        assert published["offset"] == 1
        for tab in alice:
            refused = await tab.subscribe(revoked)
            assert refused["op"] == "error", refused
            assert refused["code"] == "forbidden", refused
        await presence_settles(http, worker_b, revoked, {"bob": 2}, within=5)


async def test_disconnect_user_closes_every_tab_of_the_user_on_every_worker_at_once(
    workers: Workers, http: httpx.AsyncClient
) -> None:
    worker_a, worker_b = workers.start("AB")
    async with browser() as tabs:
        alice = [await tabs.open(worker, "alice") for worker in (worker_a, worker_a, worker_b)]
        bob = [await tabs.open(worker, "bob") for worker in (worker_a, worker_b)]

        requested = time.monotonic()
        await call(http, worker_b, "disconnect_user", user="alice", code=4010, reason="logged out")
        delays = [await tab.closure() - requested for tab in alice]
        print(f"disconnect_user: last tab closed after {max(delays) * 1000:.0f} ms")
        assert max(delays) < SIGNAL_BOUND, delays
        for tab in alice:
            assert tab.connection.close_code == 4010
            assert tab.connection.close_reason == "logged out"

        await call(http, worker_a, "publish_to_user", user="bob", n=1)
        for tab in bob:
            assert await tab.wait_events("~user:bob", 1) == [1]
            assert tab.closed_at is None
