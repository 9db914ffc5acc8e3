"""budget_ws: WebSocket broadcasting for Python web apps.

Typed events go to topics; every subscriber of a topic gets each event once, in order,
through a bounded outbox, and clients that reconnect recover what they missed.
"""

from .__about__ import __version__
from .backends import Backend, Listener, MemoryBackend, Position, Recovery, create_backend
from .compat import Compatibility
from .connection import Connection, Transport
from .errors import (
    BackendError,
    BackendNotInstalled,
    BackendUnavailable,
    BudgetWSError,
    ClientClosed,
    ConnectionClosed,
    ConnectionIdInUse,
    EventRegistrationError,
    EventTooLarge,
    EventValidationError,
    HandshakeRefused,
    HandshakeRejected,
    InvalidBackendOption,
    InvalidLimit,
    InvalidMetric,
    InvalidTopic,
    InvalidTraceContext,
    InvalidURL,
    ManagerClosed,
    PrometheusSetupError,
    SchemaNotReady,
    ServerProtocolError,
    SubscriptionRefused,
    TransactionalPublishUnsupported,
    UnknownBackend,
    UnknownEvent,
)
from .events import Event, EventRegistry, default_registry
from .handshake import Authenticate, Handshake, origin_allowed
from .health import Health, check_health
from .limits import Heartbeat, Limits, OutboxLimits, SlowConsumerPolicy, validate_topic
from .manager import Action, ClientMessage, ConnectionManager, Stats
from .protocol import SUBPROTOCOL, CloseCode, ErrorCode

__all__ = [
    "SUBPROTOCOL",
    "Action",
    "Authenticate",
    "Backend",
    "BackendError",
    "BackendNotInstalled",
    "BackendUnavailable",
    "BudgetWSError",
    "ClientClosed",
    "ClientMessage",
    "CloseCode",
    "Compatibility",
    "Connection",
    "ConnectionClosed",
    "ConnectionIdInUse",
    "ConnectionManager",
    "ErrorCode",
    "Event",
    "EventRegistrationError",
    "EventRegistry",
    "EventTooLarge",
    "EventValidationError",
    "Handshake",
    "HandshakeRefused",
    "HandshakeRejected",
    "Health",
    "Heartbeat",
    "InvalidBackendOption",
    "InvalidLimit",
    "InvalidMetric",
    "InvalidTopic",
    "InvalidTraceContext",
    "InvalidURL",
    "Limits",
    "Listener",
    "ManagerClosed",
    "MemoryBackend",
    "OutboxLimits",
    "Position",
    "PrometheusSetupError",
    "Recovery",
    "SchemaNotReady",
    "ServerProtocolError",
    "SlowConsumerPolicy",
    "Stats",
    "SubscriptionRefused",
    "TransactionalPublishUnsupported",
    "Transport",
    "UnknownBackend",
    "UnknownEvent",
    "__version__",
    "check_health",
    "create_backend",
    "default_registry",
    "origin_allowed",
    "validate_topic",
]
