"""Exceptions raised by budget_ws.

Every exception derives from :class:`BudgetWSError`, so callers can catch the library's
errors in one place. Problems caused by a *client* (bad frames, denied topics...) never
raise into the server: they become error frames or close codes (see ``docs/protocol.md``).
"""

from __future__ import annotations

__all__ = [
    "BackendCapabilityMissing",
    "BackendError",
    "BackendNotInstalled",
    "BackendUnavailable",
    "BudgetWSError",
    "ClientClosed",
    "ConnectionClosed",
    "ConnectionIdInUse",
    "EventRegistrationError",
    "EventTooLarge",
    "EventValidationError",
    "HandshakeRefused",
    "HandshakeRejected",
    "InvalidBackendOption",
    "InvalidLimit",
    "InvalidTopic",
    "InvalidURL",
    "InvalidUser",
    "ManagerClosed",
    "SchemaNotReady",
    "ServerProtocolError",
    "SubscriptionRefused",
    "TransactionalPublishUnsupported",
    "UnknownBackend",
    "UnknownEvent",
]


class BudgetWSError(Exception):
    """Base class of every error raised by budget_ws."""


class EventRegistrationError(BudgetWSError, TypeError):
    """An event class is declared wrongly, or its wire name is taken by another class."""


class UnknownEvent(BudgetWSError, LookupError):
    """No event class is registered under this wire name."""


class EventValidationError(BudgetWSError, ValueError):
    """An event's data does not match its schema.

    Attributes:
        event: The wire name of the event that failed.
        errors: pydantic's list of errors, JSON-serialisable.
    """

    def __init__(self, event: str, message: str, errors: list[dict[str, object]]) -> None:
        super().__init__(message)
        self.event = event
        self.errors = errors


class EventTooLarge(BudgetWSError, ValueError):
    """An encoded event is larger than ``OutboxLimits.max_bytes``: no client could receive it."""


class InvalidLimit(BudgetWSError, ValueError):
    """A ``Limits``, ``OutboxLimits`` or ``Heartbeat`` value is out of range.

    .. versionadded:: 0.1
    """


class InvalidMetric(BudgetWSError, ValueError):
    """Histogram bounds that are not distinct and ascending, a quantile outside 0 to 1, or
    snapshots of different histograms compared."""


class PrometheusSetupError(BudgetWSError, ValueError):
    """Prometheus metrics were set up in a way that would export duplicate or wrong series
    (see :mod:`budget_ws.prometheus`); the message says what to change."""


class InvalidTraceContext(BudgetWSError, ValueError):
    """A tracer gave a trace context that is not a version-00 W3C ``traceparent``, or a
    publish time to carry with an event is negative."""


class ConnectionIdInUse(BudgetWSError, ValueError):
    """``serve()`` was given a connection whose id another live connection has.

    .. versionadded:: 0.1
    """


class InvalidTopic(BudgetWSError, ValueError):
    """A topic name is empty, too long, or uses characters outside the allowed set."""


class ConnectionClosed(BudgetWSError):
    """The peer has closed the WebSocket, or it was closed by the server.

    Transports raise it from ``receive()`` once the connection is gone.

    Attributes:
        code: The WebSocket close code, when known.
        reason: The close reason, possibly empty.
    """

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        super().__init__(f"connection closed (code={code}, reason={reason!r})")
        self.code = code
        self.reason = reason


class ManagerClosed(BudgetWSError, RuntimeError):
    """The :class:`~budget_ws.ConnectionManager` is not running: enter it with ``async with``."""


class UnknownBackend(BudgetWSError, ValueError):
    """A backend URL cannot be used: no backend handles its scheme, or an option is wrong."""


class InvalidBackendOption(UnknownBackend):
    """A backend option is unknown, repeated, malformed or out of range.

    Raised at once, when the URL is parsed or the backend is created, never later as a
    connection failure.

    Attributes:
        option: The option's name, as written in the URL or passed as an argument.
        accepted: What the option accepts (or, for an unknown name, the known options).

    .. versionadded:: 0.1
    """

    def __init__(self, message: str, *, option: str, accepted: str) -> None:
        super().__init__(message)
        self.option = option
        self.accepted = accepted


class BackendError(BudgetWSError):
    """A backend failed to publish, subscribe or read history."""


class BackendUnavailable(BackendError):
    """The backend's server cannot be reached or did not answer in time; retry later."""


class SchemaNotReady(BackendError):
    """The database holds no budget_ws schema, or one of another version.

    Run the migration step the message names (``python -m budget_ws migrate URL``)
    before starting workers; a backend never changes the schema by itself.
    """


class TransactionalPublishUnsupported(BackendError, TypeError):
    """``publish(..., within=...)`` was asked of a backend or a connection that cannot do it.

    Only the PostgreSQL backend publishes inside the app's transaction, and only through a
    connection it understands (SQLAlchemy's ``AsyncSession`` or ``AsyncConnection``, or
    an asyncpg connection) with a transaction open. Publishing outside that transaction
    instead would bring back the lost or phantom events the option exists to prevent.
    """


class BackendCapabilityMissing(BackendError, TypeError):
    """The backend cannot do what the app configured or called.

    Presence needs a :class:`~budget_ws.backends.PresenceBackend`; ``disconnect_user``,
    ``unsubscribe_user`` and presence need a :class:`~budget_ws.backends.SignalBackend`.
    Raised when the manager starts (for presence) or when the method is called, never
    silently ignored.
    """


class InvalidUser(BudgetWSError, ValueError):
    """The app's ``identify`` hook returned a user the manager cannot use: an id outside
    1 to 64 characters of ``A-Z a-z 0-9 _ . : @ / = + -``, or ``info`` that is not JSON or
    is larger than ``PresenceOptions.max_info_bytes``. The connection is closed with 1011."""


class BackendNotInstalled(BudgetWSError, ImportError):
    """A backend's optional dependency is not installed; the message says what to install."""


class HandshakeRejected(BudgetWSError):
    """Raise from ``authenticate`` to refuse a connection.

    Browsers (requests with an ``Origin`` header) get the WebSocket accepted and closed at
    once with ``close_code`` and ``reason``: a browser sees nothing of a refused handshake
    but a 1006 it cannot tell from an outage, so its client would retry forever, while a
    close code tells it to stop. Other clients get an HTTP ``status`` response with the
    reason as body where the server supports the ASGI denial-response extension (uvicorn
    does), else the same accept-and-close.

    Args:
        reason: Why, for the client; keep it short and free of secrets.
        status: HTTP status of the refusal.
        close_code: WebSocket close code when no HTTP refusal is possible.
    """

    def __init__(self, reason: str, *, status: int = 403, close_code: int = 1008) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.close_code = close_code


# The Python client (budget_ws.client) ---------------------------------------------------


class ClientClosed(ConnectionClosed):
    """A :mod:`budget_ws.client` connection has stopped for good and will not reconnect.

    Raised, once the events received before are handed out, by the client's iterators,
    ``subscribe()`` and ``send()``, and by leaving ``async with`` when nothing else raised
    it: the server closed with a final code (1000, 1002, 1008 or 4003), refused the
    handshake, broke the protocol, or the client gave up after ``max_attempts``.

    Attributes:
        code: The close code (the server's, or the one the client closed with), or None
            when there was no WebSocket to close.
        reason: Why, possibly empty.

    .. versionadded:: 0.1
    """

    def __init__(
        self, code: int | None = None, reason: str = "", *, message: str | None = None
    ) -> None:
        # Not ConnectionClosed's message: this one says the end is final.
        BudgetWSError.__init__(
            self, message or f"client closed for good (code={code}, reason={reason!r})"
        )
        self.code = code
        self.reason = reason


class HandshakeRefused(ClientClosed):
    """The server refused the client's WebSocket handshake with an HTTP status.

    401, 403 and every other 4xx but 408 and 429 are final: retrying cannot help. Other
    statuses (5xx from a restarting server or a proxy) are retried like a lost connection.

    Attributes:
        status: The HTTP status code.
        body: The start of the response body (the server's ``HandshakeRejected`` reason).

    .. versionadded:: 0.1
    """

    def __init__(self, status: int, body: str = "") -> None:
        super().__init__(
            None,
            body,
            message=f"the server refused the WebSocket handshake: HTTP {status}"
            + (f" ({body})" if body else ""),
        )
        self.status = status
        self.body = body


class ServerProtocolError(ClientClosed):
    """A server frame breaks the wire protocol (``docs/protocol.md``).

    Raised by :func:`budget_ws.server_frames.decode_server_frame` for a frame that is
    not JSON, not an object, or has a field of the wrong type; the client then closes
    with 1002 (its ``code``) and raises it from its iterators: a server that speaks
    something else is not retried.

    .. versionadded:: 0.1
    """

    def __init__(self, message: str) -> None:
        super().__init__(1002, message, message=message)


class SubscriptionRefused(BudgetWSError):
    """The server answered a subscribe with an error frame; the topic is not subscribed.

    Attributes:
        code: The error frame's code: ``forbidden``, ``invalid_topic``,
            ``too_many_topics``... (an :class:`~budget_ws.ErrorCode` value, as a string).
        topic: The topic.
        message: The server's message.

    .. versionadded:: 0.1
    """

    def __init__(self, code: str, topic: str, message: str) -> None:
        super().__init__(f"subscribing to {topic!r} was refused ({code}): {message}")
        self.code = code
        self.topic = topic
        self.message = message


class InvalidURL(BudgetWSError, ValueError):
    """A client URL is not a ``ws://`` or ``wss://`` URL with a host.

    .. versionadded:: 0.1
    """
