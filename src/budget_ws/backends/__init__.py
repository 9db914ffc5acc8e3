"""Backends move events between workers; pick one by URL with :func:`create_backend`."""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from ..errors import BackendNotInstalled, UnknownBackend
from ._options import parse_query, refuse, seconds, whole
from .base import (
    Backend,
    Listener,
    Position,
    PresenceBackend,
    PresenceRow,
    PresenceSnapshot,
    Recovery,
    SignalBackend,
    TransactionalBackend,
)
from .memory import MemoryBackend

__all__ = [
    "Backend",
    "Listener",
    "MemoryBackend",
    "Position",
    "PresenceBackend",
    "PresenceRow",
    "PresenceSnapshot",
    "Recovery",
    "SignalBackend",
    "TransactionalBackend",
    "create_backend",
]

# scheme -> (module, class name, the distribution it needs, the extra that installs it)
_REDIS = ("budget_ws.backends.redis", "RedisBackend", "redis", "redis")
_POSTGRES = ("budget_ws.backends.postgresql", "PostgresBackend", "asyncpg", "postgres")
_LAZY_BACKENDS: dict[str, tuple[str, str, str, str]] = {
    "redis": _REDIS,
    "rediss": _REDIS,
    "unix": _REDIS,
    "redis+sentinel": _REDIS,
    "rediss+sentinel": _REDIS,
    "postgresql": _POSTGRES,
    "postgres": _POSTGRES,
}

_MEMORY_OPTIONS = {"history_size": whole(0), "history_ttl": seconds()}


def create_backend(url: str) -> Backend:
    """Create the backend a URL names.

    ``memory://`` (optionally ``memory://?history_size=1000&history_ttl=300``) gives a
    :class:`MemoryBackend`. Backends with optional dependencies are imported only when
    their scheme is used.

    Raises:
        UnknownBackend: No backend handles the URL's scheme.
        InvalidBackendOption: An option is unknown, given twice, malformed or out of
            range (a subclass of :class:`UnknownBackend`).
        BackendNotInstalled: The backend's extra is not installed; the message says
            which ``pip install`` fixes it.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        if parts.netloc or parts.path.strip("/"):
            raise refuse("memory:// URL", "path", parts.netloc + parts.path, "nothing")
        return MemoryBackend(**parse_query(scheme, parts.query, _MEMORY_OPTIONS))
    lazy = _LAZY_BACKENDS.get(scheme)
    if lazy is None:
        known = ", ".join(f"{name}://" for name in ["memory", *sorted(_LAZY_BACKENDS)])
        raise UnknownBackend(f"no backend handles {url!r}; known schemes: {known}")
    module_name, class_name, requirement, extra = lazy
    try:
        importlib.import_module(requirement)
    except ImportError:
        raise BackendNotInstalled(
            f"the {scheme}:// backend needs {requirement!r}: pip install 'budget-ws[{extra}]'"
        ) from None
    backend_class = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = backend_class.from_url(url)
    return backend
