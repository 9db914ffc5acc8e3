"""Who is present on which topic, across every worker.

Each worker knows its own connections exactly, so each one writes only its own part of
the truth: a row per topic and user, with how many of that user's connections hold the
topic here. The backend stores the rows of every worker, with a TTL the worker keeps
renewing (:class:`~budget_ws.backends.PresenceBackend`), and every write is announced to
all workers as a signal carrying its rows and the worker's sequence number. A worker
whose local clients asked for a topic's presence keeps a *view* of it: read once from the
backend, then kept current by those signals. A missed signal shows as a jump in a
worker's sequence and makes the view read the backend again; a worker that stops
writing (it crashed) drops out of every view after ``ttl``.

Clients never get a frame per change: each view tells its clients what changed at most
once per ``interval``, as one ``presence_diff`` frame, however many users came and went.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel

from .backends import PresenceBackend, PresenceRow, PresenceSnapshot
from .connection import Connection
from .errors import BackendError, InvalidLimit, InvalidUser
from .limits import OutboxLimits
from .protocol import MemberFields, encode_presence, encode_presence_diff
from .users import USER_TOPIC_PREFIX

__all__ = ["Member", "Presence", "PresenceOptions", "PresenceTracker"]

logger = logging.getLogger("budget_ws.presence")

_OVERFLOW = ""
"""The user of the row that counts a worker's users beyond ``max_members`` on a topic (a
user id is never empty)."""

# A member's bytes besides its info: the longest user id (64) and the JSON around both.
_MEMBER_OVERHEAD = 64 + 48

# A signal stays under PostgreSQL's NOTIFY limit (8,000 bytes) with room to spare.
_SIGNAL_BUDGET = 6000


@dataclass(frozen=True, slots=True)
class PresenceOptions:
    """Which topics track presence, and its bounds.

    Args:
        topics: Whether a topic tracks presence; every topic by default (users' own
            streams never do).
        ttl: Seconds after which the connections of a worker that stopped (crashed) are
            no longer present; the worker renews its entries every third of it.
        interval: Seconds between two presence frames of one topic to one client: the
            changes in between go out together.
        max_members: Users of a topic listed at most, in presence frames and
            :meth:`ConnectionManager.presence` (the first by user id); beyond it,
            ``truncated`` is true. Each worker also stores at most this many users per
            topic.
        max_info_bytes: Largest public ``info`` of a user, as JSON; a larger one closes
            the connection with 1011 (:class:`~budget_ws.InvalidUser`).
    """

    topics: Callable[[str], bool] | None = None
    ttl: float = 30.0
    interval: float = 1.0
    max_members: int = 1000
    max_info_bytes: int = 512

    def __post_init__(self) -> None:
        for name in ("ttl", "interval"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise InvalidLimit(f"PresenceOptions.{name} must be a number of seconds > 0")
        for name in ("max_members", "max_info_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidLimit(f"PresenceOptions.{name} must be a whole number >= 1")

    def check_fits(self, outbox: OutboxLimits) -> None:
        """Refuse bounds whose largest ``presence`` frame no outbox could hold.

        Raises:
            InvalidLimit: ``max_members`` users with ``max_info_bytes`` of info each (and
                the longest user ids) exceed ``outbox.max_bytes``.
        """
        largest = self.max_members * (self.max_info_bytes + _MEMBER_OVERHEAD) + 512
        if largest > outbox.max_bytes:
            raise InvalidLimit(
                f"a presence frame of PresenceOptions.max_members ({self.max_members}) users "
                f"with max_info_bytes ({self.max_info_bytes}) of info may take {largest} "
                f"bytes, more than OutboxLimits.max_bytes ({outbox.max_bytes}): lower one "
                "of them or raise max_bytes"
            )

    def tracks(self, topic: str) -> bool:
        """Whether ``topic``'s presence is tracked."""
        if topic.startswith(USER_TOPIC_PREFIX):
            return False
        return self.topics is None or bool(self.topics(topic))


@dataclass(frozen=True, slots=True)
class Member:
    """A user present on a topic."""

    user: str
    connections: int
    """The user's connections holding the topic, on every worker."""
    info: dict[str, Any]
    """The public info the app's ``identify`` hook gave for the user."""


@dataclass(frozen=True, slots=True)
class Presence:
    """Who is present on a topic, across every worker."""

    topic: str
    members: tuple[Member, ...]
    """The users present, by user id; at most ``PresenceOptions.max_members``."""
    count: int
    """How many users are present."""
    truncated: bool
    """Whether more users are present than ``members`` lists."""


def encode_info(info: Mapping[str, Any], limit: int) -> str:
    """A user's public info as the JSON text every frame carries.

    Raises:
        InvalidUser: ``info`` is not JSON or is larger than ``limit`` bytes.
    """
    try:
        text = json.dumps(dict(info), separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidUser(f"a user's info must be JSON: {exc}") from None
    if len(text.encode()) > limit:
        raise InvalidUser(
            f"a user's info is {len(text.encode())} bytes as JSON, more than "
            f"PresenceOptions.max_info_bytes ({limit})"
        )
    return text


def _is_row(row: object) -> bool:
    """Whether ``row`` is ``[topic, user, connections, info]`` as a manager signals it."""
    return (
        isinstance(row, list)
        and len(row) == 4
        and isinstance(row[0], str)
        and isinstance(row[1], str)
        and isinstance(row[2], int)
        and isinstance(row[3], dict)
    )


class _LocalTopic:
    """This worker's connections on one topic, by user."""

    __slots__ = ("connections", "stored", "waiting")

    def __init__(self) -> None:
        self.connections: dict[str, int] = {}
        self.stored: set[str] = set()  # users written to the backend (max_members at most)
        self.waiting: list[str] = []  # users beyond max_members, in arrival order


@dataclass(eq=False)
class _View:
    """One topic's presence as this worker's clients see it."""

    rows: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    seqs: dict[str, int] = field(default_factory=dict)
    # What the subscribers were last told: user -> (connections, info).
    announced: dict[str, tuple[int, str]] = field(default_factory=dict)
    announced_count: int = 0
    subscribers: set[Connection] = field(default_factory=set)
    loaded: bool = False
    changed: bool = False
    stale: bool = False  # a signal was missed: read the backend again
    # Newest seq per worker of the signals that came while the view was being read.
    pending: dict[str, int] = field(default_factory=dict)


class PresenceTracker:
    """Keeps this worker's presence rows in the backend and its clients' views current.

    Args:
        backend: Where rows are stored and signals travel.
        options: Which topics, TTL, interval and bounds.
        signal_kind: The tag of presence signals among the manager's signals.
    """

    def __init__(self, backend: PresenceBackend, options: PresenceOptions) -> None:
        self._backend = backend
        self.options = options
        self.worker = secrets.token_hex(8)
        self._seq = 0
        self._local: dict[str, _LocalTopic] = {}
        self._info: dict[str, str] = {}  # user -> info JSON, as last identified
        self._dirty: set[tuple[str, str]] = set()
        self._replace = True  # the first write states the whole of this worker
        self._views: dict[str, _View] = {}
        self._heard: dict[str, float] = {}  # worker -> when its last signal arrived
        self._wake = anyio.Event()

    def __repr__(self) -> str:
        return f"<PresenceTracker worker={self.worker} topics={len(self._local)}>"

    # This worker's connections --------------------------------------------------------

    def joined(self, connection: Connection, topic: str) -> None:
        """``connection`` now holds ``topic``: count it, if its user is known."""
        user = connection.user
        if user is None or not self.options.tracks(topic):
            return
        local = self._local.get(topic)
        if local is None:
            local = self._local[topic] = _LocalTopic()
        count = local.connections.get(user, 0) + 1
        local.connections[user] = count
        if count == 1:
            if len(local.stored) < self.options.max_members:
                local.stored.add(user)
            else:
                local.waiting.append(user)
                self._dirty.add((topic, _OVERFLOW))
        self._mark(topic, user, local)

    def left(self, connection: Connection, topic: str) -> None:
        """``connection`` no longer holds ``topic``."""
        self.unwatch(connection, topic)
        user = connection.user
        local = self._local.get(topic)
        if user is None or local is None or user not in local.connections:
            return
        count = local.connections[user] - 1
        if count > 0:
            local.connections[user] = count
            self._mark(topic, user, local)
            return
        del local.connections[user]
        if user in local.stored:
            local.stored.discard(user)
            self._dirty.add((topic, user))
            if local.waiting:  # the first user left out takes the free place
                promoted = local.waiting.pop(0)
                local.stored.add(promoted)
                self._dirty.add((topic, promoted))
                self._dirty.add((topic, _OVERFLOW))
        else:
            local.waiting.remove(user)
            self._dirty.add((topic, _OVERFLOW))
        if not local.connections:
            del self._local[topic]
        self._wake.set()

    def identified(self, user: str, info: str) -> None:
        """Remember the public info of ``user``, as its newest connection gave it."""
        if self._info.get(user) != info:
            self._info[user] = info
            for topic, local in self._local.items():
                if user in local.stored:
                    self._dirty.add((topic, user))
            self._wake.set()

    def _mark(self, topic: str, user: str, local: _LocalTopic) -> None:
        if user in local.stored:
            self._dirty.add((topic, user))
            self._wake.set()

    def _row(self, topic: str, user: str) -> PresenceRow:
        local = self._local.get(topic)
        if user == _OVERFLOW:
            waiting = len(local.waiting) if local is not None else 0
            return PresenceRow(topic, self.worker, _OVERFLOW, waiting)
        stored = local is not None and user in local.stored
        connections = local.connections.get(user, 0) if local is not None and stored else 0
        return PresenceRow(
            topic, self.worker, user, connections, self._info.get(user, "{}").encode()
        )

    def _whole_state(self) -> list[PresenceRow]:
        return [
            self._row(topic, user)
            for topic, local in self._local.items()
            for user in (*local.stored, *((_OVERFLOW,) if local.waiting else ()))
        ]

    # Clients' views ---------------------------------------------------------------------

    async def watch(self, connection: Connection, topic: str) -> None:
        """Send ``connection`` the presence of ``topic`` now, and its changes from now on.

        Raises:
            BackendError: The backend could not be read.
        """
        view = self._views.get(topic)
        if view is None:
            view = self._views[topic] = _View()
        view.subscribers.add(connection)
        try:
            if not view.loaded:
                await self._load(topic, view)
                view.announced, view.announced_count = self._users(view)
                view.changed = False
        except BaseException:
            self.unwatch(connection, topic)
            raise
        if connection in view.subscribers:
            listed = self._listed(view.announced)
            connection.push_control(
                encode_presence(
                    topic,
                    listed,
                    view.announced_count,
                    view.announced_count > len(listed),
                )
            )

    def unwatch(self, connection: Connection, topic: str) -> None:
        """Stop sending ``topic``'s presence to ``connection``."""
        view = self._views.get(topic)
        if view is not None:
            view.subscribers.discard(connection)
            if not view.subscribers:
                del self._views[topic]

    async def _load(self, topic: str, view: _View) -> None:
        self._adopt(view, await self._read(topic))

    async def _read(self, topic: str) -> PresenceSnapshot:
        """The backend's rows of ``topic``; any failure of it as a :class:`BackendError`."""
        try:
            return await self._backend.presence_read(topic)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"could not read the presence of {topic!r}: {exc}") from exc

    def _adopt(self, view: _View, snapshot: PresenceSnapshot) -> None:
        view.rows = {
            (row.worker, row.user): (row.connections, row.info.decode()) for row in snapshot.rows
        }
        view.seqs = seqs = dict(snapshot.seqs)
        # Signals that overtook the read: what they carry may be missing from it.
        view.stale = any(seq > seqs.get(worker, 0) for worker, seq in view.pending.items())
        view.pending.clear()
        view.loaded = True
        view.changed = True
        now = anyio.current_time()
        for worker in seqs:  # so that a worker that crashed before the read expires too
            self._heard.setdefault(worker, now)

    @staticmethod
    def _users(view: _View) -> tuple[dict[str, tuple[int, str]], int]:
        """Present users (connections summed over workers) and how many users there are."""
        users: dict[str, tuple[int, str]] = {}
        unlisted = 0
        for (_, user), (connections, info) in view.rows.items():
            if user == _OVERFLOW:
                unlisted += connections
                continue
            previous = users.get(user)
            users[user] = (connections + (previous[0] if previous else 0), info)
        return users, len(users) + unlisted

    def _listed(self, users: Mapping[str, tuple[int, str]]) -> list[MemberFields]:
        names = sorted(users)[: self.options.max_members]
        return [(name, users[name][0], users[name][1]) for name in names]

    # Signals ----------------------------------------------------------------------------

    def on_signal(self, message: Mapping[str, Any], now: float) -> None:
        """Apply a presence signal of any worker (this one included) to the views.

        Raises:
            ValueError: The signal is not one a manager sent; nothing of it is applied.
        """
        worker = message.get("w")
        seq = message.get("s")
        rows = message.get("rows") or []
        if (
            not isinstance(worker, str)
            or not isinstance(seq, int)
            or not isinstance(rows, list)
            or not all(_is_row(row) for row in rows)
        ):
            raise ValueError("not a presence signal")
        if message.get("gone"):
            self._heard.pop(worker, None)
            self._drop_worker(worker)
            return
        self._heard[worker] = now
        reload = bool(message.get("reload"))
        by_topic: dict[str, list[Any]] = {}
        for row in rows:
            if row[0] in self._views:
                by_topic.setdefault(row[0], []).append(row)
        for topic, view in self._views.items():
            if not view.loaded:
                view.pending[worker] = max(seq, view.pending.get(worker, 0))
                continue
            expected = view.seqs.get(worker, 0) + 1
            if seq < expected:
                continue  # already in what the view read
            if seq > expected or reload:
                view.stale = True  # missed signals of that worker, or it wrote all anew
                self._wake.set()
                continue
            view.seqs[worker] = seq
            for _, user, connections, info in by_topic.get(topic, ()):
                if connections > 0:
                    view.rows[(worker, user)] = (connections, json.dumps(info))
                else:
                    view.rows.pop((worker, user), None)
                view.changed = True

    def _drop_worker(self, worker: str) -> None:
        for view in self._views.values():
            gone = [key for key in view.rows if key[0] == worker]
            for key in gone:
                del view.rows[key]
            view.seqs.pop(worker, None)
            view.changed = view.changed or bool(gone)

    # The worker's loop --------------------------------------------------------------------

    async def run(self, signal: Callable[[dict[str, Any]], Any]) -> None:
        """Write changes, renew the TTL, expire silent workers and tell clients, forever."""
        options = self.options
        renew_every = options.ttl / 3
        next_renewal = 0.0
        next_tick = anyio.current_time() + options.interval
        failures = 0
        while True:
            now = anyio.current_time()
            try:
                if self._dirty or self._replace or now >= next_renewal:
                    await self._write(signal)
                    next_renewal = anyio.current_time() + renew_every
                await self._reload_stale()
                failures = 0
            except BackendError as exc:
                failures += 1
                if failures == 1:
                    logger.warning(
                        "budget_ws: presence could not reach the backend: %s",
                        exc,
                        extra={"budget_ws_event": "presence_failed", "budget_ws_error": str(exc)},
                    )
                await anyio.sleep(min(renew_every, 0.1 * 2 ** min(failures, 6)))
                continue
            now = anyio.current_time()
            if now >= next_tick:
                self._expire_silent(now)
                self._tell_clients()
                next_tick = now + options.interval
            if self._dirty:
                await anyio.lowlevel.checkpoint()  # the next batch, after letting others run
                continue
            self._wake = anyio.Event()
            with anyio.move_on_after(max(0.0, min(next_renewal, next_tick) - now)):
                await self._wake.wait()

    async def _write(self, signal: Callable[[dict[str, Any]], Any]) -> None:
        """One write of at most a signal's worth of rows (or the whole state), announced."""
        replace = self._replace
        if replace:
            rows = self._whole_state()
            batch: set[tuple[str, str]] = set(self._dirty)
        else:
            rows, batch = self._batch()
        # Never reused, even after a failure: a write that timed out may still land, and
        # readers must not take a later write for one they have seen.
        self._seq += 1
        seq = self._seq
        # Out of the dirty set before the await: a change made during the write marks
        # its row dirty again, for the next write.
        self._dirty -= batch
        try:
            known = await self._backend.presence_write(
                self.worker, seq, self.options.ttl, rows, replace=replace
            )
        except BaseException as exc:
            self._dirty |= batch
            if isinstance(exc, Exception) and not isinstance(exc, BackendError):
                raise BackendError(f"could not write presence: {exc}") from exc
            raise
        if replace:
            self._replace = False
            message: dict[str, Any] = {"k": "p", "w": self.worker, "s": seq, "reload": True}
        elif not known:
            # The backend lost this worker (a restart, or it was silent past the TTL):
            # the rows just written may be all it holds of it. State everything again.
            self._replace = True
            message = {"k": "p", "w": self.worker, "s": seq, "reload": True}
        else:
            message = {
                "k": "p",
                "w": self.worker,
                "s": seq,
                "rows": [
                    [row.topic, row.user, row.connections, json.loads(row.info)] for row in rows
                ],
            }
        await signal(message)

    def _batch(self) -> tuple[list[PresenceRow], set[tuple[str, str]]]:
        rows: list[PresenceRow] = []
        batch: set[tuple[str, str]] = set()
        size = 0
        for key in self._dirty:
            row = self._row(*key)
            size += len(row.topic) + len(row.user) + len(row.info) + 16
            if rows and size > _SIGNAL_BUDGET:
                break
            rows.append(row)
            batch.add(key)
        return rows, batch

    async def _reload_stale(self) -> None:
        for topic, view in list(self._views.items()):
            if view.stale and self._views.get(topic) is view:
                await self._load(topic, view)

    def _expire_silent(self, now: float) -> None:
        for worker, heard in list(self._heard.items()):
            if now - heard > self.options.ttl:
                del self._heard[worker]
                self._drop_worker(worker)

    def _tell_clients(self) -> None:
        for topic, view in self._views.items():
            if not view.changed or not view.loaded:
                continue
            view.changed = False
            users, count = self._users(view)
            before = {user for user, *_ in self._listed(view.announced)}
            listed = self._listed(users)
            joins = [m for m in listed if view.announced.get(m[0]) != (m[1], m[2])]
            leaves = sorted(before - {m[0] for m in listed})
            if not joins and not leaves and count == view.announced_count:
                continue
            view.announced = users
            view.announced_count = count
            frame = encode_presence_diff(topic, joins, leaves, count)
            for connection in view.subscribers:
                connection.push_control(frame)

    # Queries and shutdown -----------------------------------------------------------------

    async def presence(self, topic: str) -> Presence:
        """Who is present on ``topic``, read from the backend."""
        snapshot = await self._read(topic)
        # One pass over the rows (thousands of them at most: max_members per worker), and
        # only the listed users' info decoded.
        connections: dict[str, int] = {}
        info: dict[str, bytes] = {}
        unlisted = 0
        for row in snapshot.rows:
            if row.user == _OVERFLOW:
                unlisted += row.connections
            else:
                connections[row.user] = connections.get(row.user, 0) + row.connections
                info[row.user] = row.info
        count = len(connections) + unlisted
        members = tuple(
            Member(user, connections[user], json.loads(info[user]))
            for user in sorted(connections)[: self.options.max_members]
        )
        return Presence(topic, members, count, count > len(members))

    async def forget(self, signal: Callable[[dict[str, Any]], Any]) -> None:
        """Remove this worker's rows at once (it is shutting down) and tell the others."""
        await self._backend.presence_forget(self.worker)
        self._seq += 1
        await signal({"k": "p", "w": self.worker, "s": self._seq, "gone": True})

    def local_topics(self) -> Iterable[str]:
        """Topics with connections of identified users on this worker."""
        return self._local.keys()
