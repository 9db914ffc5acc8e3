"""Wire protocol ``budget-ws.v1``: the frames and their encoding.

This module is the only place that knows JSON field names; ``docs/protocol.md`` describes
the same frames for client authors. Event frames keep the original
``{"event": ..., "data": ...}`` shape; control frames carry an ``"op"`` field instead.
A server message holds one or more frames separated by a line feed (``"\\n"``), so frames
that queued up for a client leave in one WebSocket message; JSON never contains a raw
line feed, so splitting is unambiguous.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic_core

from .events import Event
from .position import Position
from .propagation import split_context

__all__ = [
    "FINAL_CLOSE_CODES",
    "FRAME_SEPARATOR",
    "MAX_CLOSE_REASON_BYTES",
    "MAX_ERROR_DETAILS",
    "MAX_ERROR_MESSAGE",
    "MAX_REQUEST_ID_LENGTH",
    "SUBPROTOCOL",
    "ClientEvent",
    "ClientFrame",
    "CloseCode",
    "ErrorCode",
    "MemberFields",
    "Ping",
    "Pong",
    "ProtocolViolation",
    "Subscribe",
    "Unsubscribe",
    "close_reason",
    "control_op",
    "decode_client_frame",
    "decode_server_message",
    "encode_client_event",
    "encode_error",
    "encode_event",
    "encode_ping",
    "encode_pong",
    "encode_presence",
    "encode_presence_diff",
    "encode_resync",
    "encode_subscribe",
    "encode_subscribed",
    "encode_unsubscribe",
    "encode_unsubscribed",
    "encode_welcome",
    "excerpt",
    "position_frame",
    "read_position",
    "welcome_encoder",
    "without_position",
]

SUBPROTOCOL = "budget-ws.v1"
"""The WebSocket subprotocol name of this protocol version."""

FRAME_SEPARATOR = "\n"
"""Separates frames that share one server message."""


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server uses, and what a client should do after each."""

    NORMAL = 1000
    """The server closed the connection on purpose; do not reconnect."""
    GOING_AWAY = 1001
    """The client is leaving (sent by clients)."""
    PROTOCOL_ERROR = 1002
    """The client does not speak ``budget-ws.v1``; do not reconnect."""
    POLICY_VIOLATION = 1008
    """Refused by policy (origin, authentication); do not reconnect."""
    MESSAGE_TOO_BIG = 1009
    """A client frame exceeded ``Limits.max_frame_bytes``; reconnect after a backoff."""
    INTERNAL_ERROR = 1011
    """The server failed; reconnect after a backoff."""
    SERVICE_RESTART = 1012
    """The server is shutting down; reconnect (to another worker) and resume."""
    TRY_AGAIN_LATER = 1013
    """The server is overloaded; reconnect after a backoff."""
    SLOW_CONSUMER = 4000
    """The client's outbox overflowed; reconnect and resume to recover what was dropped."""
    HEARTBEAT_TIMEOUT = 4001
    """No pong arrived in time; reconnect and resume."""
    FORBIDDEN = 4003
    """Authentication or authorization failed for the connection; do not reconnect."""
    DISCONNECTED = 4010
    """The app ended the user's connections (``disconnect_user``: logout, removal); do not
    reconnect."""
    RATE_LIMITED = 4029
    """The client sent frames faster than ``Limits.max_messages_per_second``."""


MAX_CLOSE_REASON_BYTES = 123
"""RFC 6455 leaves 123 bytes of a close frame for the reason; servers refuse longer ones."""


def close_reason(reason: str) -> str:
    """``reason`` cut to fit a close frame (UTF-8, at most 123 bytes, "…" where cut)."""
    encoded = reason.encode("utf-8", "replace")
    if len(encoded) <= MAX_CLOSE_REASON_BYTES:
        return reason
    cut = encoded[: MAX_CLOSE_REASON_BYTES - len("…".encode())]
    return cut.decode("utf-8", "ignore") + "…"


MAX_ERROR_MESSAGE = 300
"""Characters of an error frame's ``message`` at most."""
MAX_ERROR_DETAILS = 10
"""Entries of an error frame's ``details`` at most."""
MAX_REQUEST_ID_LENGTH = 64
"""Characters of a string request ``id`` at most: every answer carries it back."""


def excerpt(text: str, limit: int = 40) -> str:
    """At most ``limit`` characters of client input, to quote in a reply without echoing it."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


FINAL_CLOSE_CODES = frozenset(
    {
        CloseCode.NORMAL,
        CloseCode.PROTOCOL_ERROR,
        CloseCode.POLICY_VIOLATION,
        CloseCode.FORBIDDEN,
        CloseCode.DISCONNECTED,
    }
)
"""Close codes after which a client must not reconnect on its own."""


class ErrorCode(str, enum.Enum):
    """The ``code`` of an error frame; the connection stays open after each."""

    BAD_FRAME = "bad_frame"
    """Not JSON, not an object, or a field of the wrong type."""
    UNKNOWN_OP = "unknown_op"
    """The ``op`` is not one this protocol version knows."""
    INVALID_TOPIC = "invalid_topic"
    """The topic name is empty, too long, or has characters outside the allowed set."""
    TOO_MANY_TOPICS = "too_many_topics"
    """The connection already holds ``Limits.max_topics_per_connection`` topics."""
    FORBIDDEN = "forbidden"
    """``authorize`` denied the subscribe or publish."""
    UNKNOWN_EVENT = "unknown_event"
    """No event with that name is accepted from clients."""
    INVALID_EVENT = "invalid_event"
    """The event's data failed its schema; ``details`` lists pydantic's errors."""
    HANDLER_ERROR = "handler_error"
    """The server's handler for the event failed."""
    BACKEND_ERROR = "backend_error"
    """The backend could not subscribe the topic; retry later."""
    PRESENCE_UNAVAILABLE = "presence_unavailable"
    """The client asked for presence of a topic whose presence the server does not track."""


@dataclass(frozen=True, slots=True)
class Subscribe:
    """A client asks for a topic, optionally resuming after ``position``."""

    topic: str
    position: Position | None = None
    id: int | str | None = None
    presence: bool = False
    """Whether the client also wants the topic's ``presence`` frames."""


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """A client leaves a topic."""

    topic: str
    id: int | str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    """A client checks that the server is alive; the server answers with a pong."""


@dataclass(frozen=True, slots=True)
class Pong:
    """A client answers the server's ping."""


@dataclass(frozen=True, slots=True)
class ClientEvent:
    """A client sends an event, validated later against the registry."""

    event: str
    data: Any
    topic: str | None = None
    id: int | str | None = None


ClientFrame = Subscribe | Unsubscribe | Ping | Pong | ClientEvent


class ProtocolViolation(Exception):
    """A client frame that cannot be decoded; answered with an error frame."""

    def __init__(self, code: ErrorCode, message: str, id: int | str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id


_PING = Ping()
_PONG = Pong()


def decode_client_frame(raw: str | bytes) -> ClientFrame:
    """Decode one frame sent by a client.

    Raises:
        ProtocolViolation: The frame is malformed; its ``code`` and ``message`` go into the
            error frame sent back.
    """
    try:
        frame = pydantic_core.from_json(raw)
    except ValueError as exc:
        raise ProtocolViolation(ErrorCode.BAD_FRAME, f"frame is not valid JSON: {exc}") from None
    except TypeError:
        # A str that is not valid Unicode (a lone surrogate, from a custom transport):
        # a real WebSocket text frame cannot carry one.
        raise ProtocolViolation(ErrorCode.BAD_FRAME, "frame is not valid UTF-8 text") from None
    if not isinstance(frame, dict):
        raise ProtocolViolation(ErrorCode.BAD_FRAME, "frame must be a JSON object")
    request_id = frame.get("id")
    if request_id is not None and (
        isinstance(request_id, bool)
        or not isinstance(request_id, (int, str))
        or (isinstance(request_id, str) and len(request_id) > MAX_REQUEST_ID_LENGTH)
        or (isinstance(request_id, int) and not -(2**53) <= request_id <= 2**53)
    ):
        raise ProtocolViolation(
            ErrorCode.BAD_FRAME,
            f"'id' must be an integer of at most 2**53 or a string of at most "
            f"{MAX_REQUEST_ID_LENGTH} characters",
        )

    if "event" in frame:
        name = frame["event"]
        if not isinstance(name, str) or not name:
            raise ProtocolViolation(
                ErrorCode.BAD_FRAME, "'event' must be a non-empty string", request_id
            )
        topic = frame.get("topic")
        if topic is not None and not isinstance(topic, str):
            raise ProtocolViolation(ErrorCode.BAD_FRAME, "'topic' must be a string", request_id)
        return ClientEvent(name, frame.get("data"), topic, request_id)

    op = frame.get("op")
    if op == "pong":
        return _PONG
    if op == "ping":
        return _PING
    if op == "subscribe":
        presence = frame.get("presence", False)
        if not isinstance(presence, bool):
            raise ProtocolViolation(ErrorCode.BAD_FRAME, "'presence' must be a boolean", request_id)
        return Subscribe(
            _topic_field(frame, request_id),
            _position_field(frame, request_id),
            request_id,
            presence,
        )
    if op == "unsubscribe":
        return Unsubscribe(_topic_field(frame, request_id), request_id)
    if op is None:
        raise ProtocolViolation(
            ErrorCode.BAD_FRAME, "frame needs an 'op' or an 'event' field", request_id
        )
    raise ProtocolViolation(ErrorCode.UNKNOWN_OP, f"unknown op {op!r}", request_id)


def _topic_field(frame: dict[str, Any], request_id: int | str | None) -> str:
    topic = frame.get("topic")
    if not isinstance(topic, str):
        raise ProtocolViolation(ErrorCode.BAD_FRAME, "'topic' must be a string", request_id)
    return topic


def read_position(value: object) -> Position | None:
    """The position a JSON object holds (``{"offset": …, "epoch": …}``), or None if malformed.

    Either side reads positions with it: the server in ``subscribe``, a client in event,
    ``subscribed`` and ``resync`` frames.
    """
    if isinstance(value, dict):
        offset = value.get("offset")
        epoch = value.get("epoch")
        if (
            isinstance(offset, int)
            and not isinstance(offset, bool)
            and offset >= 0
            and isinstance(epoch, str)
        ):
            return Position(offset, epoch)
    return None


def _position_field(frame: dict[str, Any], request_id: int | str | None) -> Position | None:
    position = frame.get("position")
    if position is None:
        return None
    read = read_position(position)
    if read is not None:
        return read
    raise ProtocolViolation(
        ErrorCode.BAD_FRAME,
        '\'position\' must be {"offset": <integer >= 0>, "epoch": <string>}',
        request_id,
    )


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
"""What ``json.dumps(frame, separators=(",", ":"), ensure_ascii=False)`` returns, without
building an encoder for every control frame."""

_string: Callable[[str], str] = json.encoder.encode_basestring
"""A JSON string as ``_dumps`` writes one (non-ASCII kept): the frames every connect
sends are put together from such pieces, at a fraction of an encoder's cost."""


def encode_event(event: Event) -> bytes:
    """Encode an event once into the payload every client of a topic will get.

    The payload is a complete ``{"event": ..., "data": ...}`` object; the position is
    added per topic by :func:`position_frame`.
    """
    data = event.__pydantic_serializer__.to_json(event)
    name = json.dumps(event.event_name, ensure_ascii=False).encode()
    return b'{"event":' + name + b',"data":' + data + b"}"


def position_frame(
    payload: bytes, topic: str, position: Position, traceparent: str | None = None
) -> str:
    """Turn an event payload into the frame of one topic, carrying its position.

    Done once per event per worker, whatever the number of clients. What the payload
    carries through the backend (see :mod:`budget_ws.propagation`) is left out.

    Args:
        payload: The event payload, as the backend delivered or stored it.
        topic: The topic it was published to.
        position: Its position there.
        traceparent: A trace context to pass on to clients, as the last member
            ``"traceparent"``: one that :func:`~budget_ws.propagation.split_context`
            gave, so already valid. None adds nothing.
    """
    if payload.endswith(b'"}'):  # a context, not the data object's "}}"
        payload = split_context(payload)[0]
    end = "}" if traceparent is None else f',"traceparent":"{traceparent}"}}'
    suffix = (
        f',"topic":{json.dumps(topic, ensure_ascii=False)},"offset":{position.offset},'
        f'"epoch":{json.dumps(position.epoch, ensure_ascii=False)}{end}'
    )
    return payload[:-1].decode() + suffix


# What position_frame() appends; topic names and epochs never hold '"' or '\\', and a
# traceparent is lowercase hex and dashes.
_POSITION_SUFFIX = re.compile(
    r',"topic":"[^"\\]*","offset":\d+,"epoch":"[^"\\]*"(?:,"traceparent":"[0-9a-f-]*")?}\Z'
)


def without_position(frame: str) -> str:
    """An event frame in the original ``{"event", "data"}`` shape, its position removed.

    For clients that predate the protocol (see :mod:`budget_ws.compat`), so a
    ``traceparent`` after the position goes with it. A frame without a position (from
    ``send`` or ``broadcast``) ends with its ``data`` object's ``}}``, which the suffix
    cannot match, and is returned unchanged.
    """
    match = _POSITION_SUFFIX.search(frame)
    return frame if match is None else frame[: match.start()] + "}"


_OP_PREFIX = '{"op":"'


def control_op(frame: str) -> str | None:
    """The ``op`` of a control frame this server encoded; None for an event frame.

    Reads only the prefix every control frame starts with, so it costs nothing per frame.
    """
    if not frame.startswith(_OP_PREFIX):
        return None
    end = frame.find('"', len(_OP_PREFIX))
    return frame[len(_OP_PREFIX) : end] if end > 0 else None


def encode_welcome(
    connection_id: str,
    heartbeat_interval: float,
    heartbeat_timeout: float,
    limits: dict[str, float],
    user: str | None = None,
) -> str:
    """The first frame of every connection: what the client needs to behave."""
    return welcome_encoder(heartbeat_interval, heartbeat_timeout, limits)(connection_id, user)


def welcome_encoder(
    heartbeat_interval: float, heartbeat_timeout: float, limits: dict[str, float]
) -> Callable[[str, str | None], str]:
    """:func:`encode_welcome` for every connection of one manager: what they share (the
    heartbeat and the limits) is encoded once, and each welcome adds its id and user."""
    head = f'{{"op":"welcome","protocol":{_string(SUBPROTOCOL)},"connection_id":'
    heartbeat = {"interval": heartbeat_interval, "timeout": heartbeat_timeout}
    tail = f',"heartbeat":{_dumps(heartbeat)},"limits":{_dumps(limits)}'

    def encode(connection_id: str, user: str | None = None) -> str:
        if user is None:
            return f"{head}{_string(connection_id)}{tail}}}"
        return f'{head}{_string(connection_id)}{tail},"user":{_string(user)}}}'

    return encode


def _position_json(position: Position) -> dict[str, Any]:
    return {"offset": position.offset, "epoch": position.epoch}


def encode_subscribed(
    topic: str, position: Position, recovered: bool, request_id: int | str | None = None
) -> str:
    """Confirms a subscription; sent before any event of the topic reaches the client."""
    # What _dumps makes of the frame's dict, put together directly: once per subscribe.
    text = (
        f'{{"op":"subscribed","topic":{_string(topic)},"position":{{"offset":'
        f'{int(position.offset)},"epoch":{_string(position.epoch)}}},'
        f'"recovered":{"true" if recovered else "false"}'
    )
    if request_id is None:
        return text + "}"
    return f'{text},"id":{_dumps(request_id)}}}'


def encode_unsubscribed(
    topic: str, request_id: int | str | None = None, *, revoked: bool = False
) -> str:
    """Confirms that no more events of ``topic`` will follow; ``revoked`` says the app took
    the topic away (the client must not subscribe to it again on its own)."""
    frame: dict[str, Any] = {"op": "unsubscribed", "topic": topic}
    if request_id is not None:
        frame["id"] = request_id
    if revoked:
        frame["reason"] = "revoked"
    return _dumps(frame)


MemberFields = tuple[str, int, str]
"""A present user as the protocol sends it: user id, connections, info as JSON text."""


def encode_presence(
    topic: str, members: Sequence[MemberFields], count: int, truncated: bool
) -> str:
    """Who is present on ``topic``: the whole list, replacing what the client held."""
    return (
        f'{{"op":"presence","topic":{json.dumps(topic)},"count":{count},'
        f'"truncated":{"true" if truncated else "false"},"members":{_members(members)}}}'
    )


def encode_presence_diff(
    topic: str, joins: Sequence[MemberFields], leaves: Sequence[str], count: int
) -> str:
    """What changed on ``topic``'s presence since the last frame: users who joined or
    changed (upserts), and users who left."""
    return (
        f'{{"op":"presence_diff","topic":{json.dumps(topic)},"count":{count},'
        f'"joins":{_members(joins)},"leaves":{json.dumps(list(leaves))}}}'
    )


def _members(members: Sequence[MemberFields]) -> str:
    # `info` is JSON the core encoded and checked once per user, not per frame.
    return (
        "["
        + ",".join(
            f'{{"user":{json.dumps(user)},"connections":{connections},"info":{info}}}'
            for user, connections, info in members
        )
        + "]"
    )


def encode_resync(topic: str, position: Position) -> str:
    """Tells the client that events of ``topic`` were lost and it must reload its state."""
    return _dumps({"op": "resync", "topic": topic, "position": _position_json(position)})


def encode_error(
    code: ErrorCode,
    message: str,
    request_id: int | str | None = None,
    *,
    topic: str | None = None,
    details: list[dict[str, object]] | None = None,
) -> str:
    """An error answer to one client frame; the connection stays open.

    Bounded whatever the client sent: the message is cut to ``MAX_ERROR_MESSAGE``
    characters and ``details`` to its first ``MAX_ERROR_DETAILS`` entries, so an answer
    never echoes (and so multiplies) a large frame.
    """
    frame: dict[str, Any] = {
        "op": "error",
        "code": code.value,
        "message": excerpt(message, MAX_ERROR_MESSAGE),
    }
    if request_id is not None:
        frame["id"] = request_id
    if topic is not None:
        frame["topic"] = topic
    if details is not None:
        frame["details"] = [_bounded_detail(detail) for detail in details[:MAX_ERROR_DETAILS]]
    return _dumps(frame)


def _bounded_detail(detail: dict[str, object]) -> dict[str, object]:
    return {
        name: (
            [excerpt(part) if isinstance(part, str) else part for part in value[:8]]
            if isinstance(value, list)
            else excerpt(value, MAX_ERROR_MESSAGE)
            if isinstance(value, str)
            else value
        )
        for name, value in detail.items()
    }


_PING_FRAME = '{"op":"ping"}'
_PONG_FRAME = '{"op":"pong"}'


def encode_ping() -> str:
    """The server's heartbeat; the client answers with a pong."""
    return _PING_FRAME


def encode_pong() -> str:
    """The answer to a ping."""
    return _PONG_FRAME


# Client-side encoders: used by budget_ws.testing and by Python clients.


def encode_subscribe(
    topic: str,
    position: Position | None = None,
    request_id: int | str | None = None,
    *,
    presence: bool = False,
) -> str:
    """A client's subscribe frame."""
    frame: dict[str, Any] = {"op": "subscribe", "topic": topic}
    if position is not None:
        frame["position"] = _position_json(position)
    if request_id is not None:
        frame["id"] = request_id
    if presence:
        frame["presence"] = True
    return _dumps(frame)


def encode_unsubscribe(topic: str, request_id: int | str | None = None) -> str:
    """A client's unsubscribe frame."""
    frame: dict[str, Any] = {"op": "unsubscribe", "topic": topic}
    if request_id is not None:
        frame["id"] = request_id
    return _dumps(frame)


def encode_client_event(
    event: Event, topic: str | None = None, request_id: int | str | None = None
) -> str:
    """A client's event frame."""
    frame: dict[str, Any] = {"event": event.event_name, "data": event.model_dump(mode="json")}
    if topic is not None:
        frame["topic"] = topic
    if request_id is not None:
        frame["id"] = request_id
    return _dumps(frame)


def decode_server_message(message: str | bytes) -> list[dict[str, Any]]:
    """Split a server message into its frames and decode each."""
    if isinstance(message, bytes):
        message = message.decode()
    return [json.loads(line) for line in message.split(FRAME_SEPARATOR) if line]
