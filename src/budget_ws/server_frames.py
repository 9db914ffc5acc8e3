"""Server frames as a client reads them: the decoding half of the protocol for clients.

:mod:`budget_ws.protocol` encodes what the server sends; this module decodes it again,
for :mod:`budget_ws.client`, with the field names of ``docs/protocol.md``. Strict about
the fields a client uses, lenient about the rest: unknown fields are ignored, and so is a
control frame whose op this version does not know, so that later servers can add both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pydantic_core

from .errors import ServerProtocolError
from .position import Position
from .protocol import FRAME_SEPARATOR, SUBPROTOCOL, Ping, Pong, excerpt, read_position

__all__ = [
    "ErrorFrame",
    "EventFrame",
    "ResyncFrame",
    "ServerFrame",
    "Subscribed",
    "UnknownControl",
    "Unsubscribed",
    "Welcome",
    "decode_server_frame",
    "decode_server_frames",
]

_PING_FRAME = Ping()
_PONG_FRAME = Pong()


@dataclass(frozen=True, slots=True)
class EventFrame:
    """An event from the server; ``topic`` and ``position`` when it was published to one.

    .. versionadded:: 0.1
    """

    event: str
    data: Any
    topic: str | None = None
    position: Position | None = None
    traceparent: str | None = None
    """The W3C ``traceparent`` of the event's publish span, when the server passes trace
    contexts to clients (``OpenTelemetryTracer(context_to_clients=True)``); a value that
    is not a string is ignored."""


@dataclass(frozen=True, slots=True)
class Welcome:
    """The first frame of every connection.

    .. versionadded:: 0.1
    """

    connection_id: str
    heartbeat_interval: float
    heartbeat_timeout: float
    limits: dict[str, Any]
    protocol: str = SUBPROTOCOL


@dataclass(frozen=True, slots=True)
class Subscribed:
    """A subscription is in place; ``id`` is None when the server made it on its own.

    .. versionadded:: 0.1
    """

    topic: str
    position: Position
    recovered: bool
    id: int | str | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    """No more events of ``topic``; ``id`` is None when the server decided it.

    .. versionadded:: 0.1
    """

    topic: str
    id: int | str | None = None


@dataclass(frozen=True, slots=True)
class ResyncFrame:
    """The server lost events of ``topic``; the client reloads and continues from ``position``.

    .. versionadded:: 0.1
    """

    topic: str
    position: Position


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """The server's answer to one bad client frame; the connection stays open.

    ``code`` is a string rather than an :class:`ErrorCode`, so that a client keeps working
    when a later server adds a code.

    .. versionadded:: 0.1
    """

    code: str
    message: str
    id: int | str | None = None
    topic: str | None = None
    details: list[Any] | None = None


@dataclass(frozen=True, slots=True)
class UnknownControl:
    """A control frame whose ``op`` this version does not know; clients ignore it.

    .. versionadded:: 0.1
    """

    op: str


ServerFrame = (
    EventFrame
    | Welcome
    | Subscribed
    | Unsubscribed
    | ResyncFrame
    | ErrorFrame
    | Ping
    | Pong
    | UnknownControl
)


def decode_server_frames(message: str | bytes) -> Iterator[ServerFrame]:
    """Decode the frames of one server message, one at a time, in order.

    A generator, so that the frames before a malformed one are handed out first.

    Raises:
        ServerProtocolError: A frame is not JSON, not an object, or has a field of the
            wrong type (see :func:`decode_server_frame`); the message is not UTF-8.

    .. versionadded:: 0.1
    """
    if isinstance(message, bytes):
        try:
            message = message.decode()
        except UnicodeDecodeError:
            raise ServerProtocolError("server message is not valid UTF-8") from None
    for line in message.split(FRAME_SEPARATOR):
        if line:
            yield decode_server_frame(line)


def decode_server_frame(line: str) -> ServerFrame:
    """Decode one frame sent by a server.

    Raises:
        ServerProtocolError: The frame is not JSON, not an object, has neither (or both)
            ``op`` and ``event``, or a field the client relies on has the wrong type.

    .. versionadded:: 0.1
    """
    try:
        frame = pydantic_core.from_json(line)
    except (ValueError, TypeError):
        raise ServerProtocolError(f"server frame is not JSON: {excerpt(line)!r}") from None
    if not isinstance(frame, dict):
        raise ServerProtocolError(f"server frame is not a JSON object: {excerpt(line)!r}")
    if "event" in frame:
        if "op" in frame:
            raise ServerProtocolError("server frame has both 'op' and 'event'")
        name = _server_field(frame, "event", str)
        if not name:
            raise ServerProtocolError("server event frame has an empty 'event'")
        topic = _optional_server_field(frame, "topic", str)
        position = None
        if "offset" in frame or "epoch" in frame:
            position = _server_position(frame, "event")
            if topic is None:
                raise ServerProtocolError("server event frame has a position but no 'topic'")
        traceparent = frame.get("traceparent")
        if not isinstance(traceparent, str):
            traceparent = None  # what the client does not rely on, it does not check
        return EventFrame(name, frame.get("data"), topic, position, traceparent)
    op = frame.get("op")
    if not isinstance(op, str):
        raise ServerProtocolError("server frame needs an 'op' string or an 'event' field")
    decoder = _SERVER_DECODERS.get(op)
    return UnknownControl(op) if decoder is None else decoder(frame)


def _server_field(frame: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = frame.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise ServerProtocolError(
            f"server {frame.get('op') or 'event'!s} frame: {name!r} is missing or of the "
            f"wrong type: {excerpt(repr(value))}"
        )
    return value


def _optional_server_field(frame: dict[str, Any], name: str, kind: type) -> Any:
    return None if frame.get(name) is None else _server_field(frame, name, kind)


def _server_id(frame: dict[str, Any]) -> int | str | None:
    if frame.get("id") is None:
        return None
    return _server_field(frame, "id", (int, str))  # type: ignore[no-any-return]


def _server_position(frame: dict[str, Any], kind: str) -> Position:
    position = read_position(frame if kind == "event" else frame.get("position"))
    if position is not None:
        return position
    raise ServerProtocolError(
        f"server {kind} frame: the position must be an 'offset' (an integer >= 0) and "
        f"an 'epoch' (a string)"
    )


def _server_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ServerProtocolError(f"server welcome frame: {name!r} must be a positive number")
    return float(value)


def _decode_welcome(frame: dict[str, Any]) -> Welcome:
    heartbeat = frame.get("heartbeat")
    if not isinstance(heartbeat, dict):
        raise ServerProtocolError("server welcome frame: 'heartbeat' must be an object")
    limits = _optional_server_field(frame, "limits", dict)
    return Welcome(
        _server_field(frame, "connection_id", str),
        _server_number(heartbeat.get("interval"), "heartbeat.interval"),
        _server_number(heartbeat.get("timeout"), "heartbeat.timeout"),
        limits if limits is not None else {},
        _optional_server_field(frame, "protocol", str) or SUBPROTOCOL,
    )


def _decode_subscribed(frame: dict[str, Any]) -> Subscribed:
    return Subscribed(
        _server_field(frame, "topic", str),
        _server_position(frame, "subscribed"),
        _server_field(frame, "recovered", bool),
        _server_id(frame),
    )


def _decode_unsubscribed(frame: dict[str, Any]) -> Unsubscribed:
    return Unsubscribed(_server_field(frame, "topic", str), _server_id(frame))


def _decode_resync(frame: dict[str, Any]) -> ResyncFrame:
    return ResyncFrame(_server_field(frame, "topic", str), _server_position(frame, "resync"))


def _decode_error(frame: dict[str, Any]) -> ErrorFrame:
    return ErrorFrame(
        _server_field(frame, "code", str),
        _server_field(frame, "message", str),
        _server_id(frame),
        _optional_server_field(frame, "topic", str),
        _optional_server_field(frame, "details", list),
    )


_SERVER_DECODERS: dict[str, Callable[[dict[str, Any]], ServerFrame]] = {
    "welcome": _decode_welcome,
    "subscribed": _decode_subscribed,
    "unsubscribed": _decode_unsubscribed,
    "resync": _decode_resync,
    "error": _decode_error,
    "ping": lambda frame: _PING_FRAME,
    "pong": lambda frame: _PONG_FRAME,
}
