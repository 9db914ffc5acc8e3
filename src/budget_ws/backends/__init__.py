"""Backends move events between workers; pick one by URL with :func:`create_backend`."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..errors import BackendNotInstalled, UnknownBackend
from .base import Backend, Listener, Position, Recovery
from .memory import MemoryBackend

__all__ = [
    "Backend",
    "Listener",
    "MemoryBackend",
    "Position",
    "Recovery",
    "create_backend",
]

# scheme -> (module, class name, the distribution it needs, the extra that installs it)
_REDIS = ("budget_ws.backends.redis", "RedisBackend", "redis", "redis")
_LAZY_BACKENDS: dict[str, tuple[str, str, str, str]] = {
    "redis": _REDIS,
    "rediss": _REDIS,
    "unix": _REDIS,
}

_MEMORY_OPTIONS = {"history_size": int, "history_ttl": float}


def create_backend(url: str) -> Backend:
    """Create the backend a URL names.

    ``memory://`` (optionally ``memory://?history_size=1000&history_ttl=300``) gives a
    :class:`MemoryBackend`. Backends with optional dependencies are imported only when
    their scheme is used.

    Raises:
        UnknownBackend: No backend handles the URL's scheme, or an option is unknown.
        BackendNotInstalled: The backend's extra is not installed; the message says
            which ``pip install`` fixes it.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        options: dict[str, Any] = {}
        for name, value in parse_qsl(parts.query, strict_parsing=False):
            convert = _MEMORY_OPTIONS.get(name)
            if convert is None:
                raise UnknownBackend(
                    f"memory:// has no option {name!r}; it takes {', '.join(_MEMORY_OPTIONS)}"
                )
            try:
                options[name] = convert(value)
            except ValueError:
                raise UnknownBackend(f"memory:// option {name}={value!r} is not a number") from None
        try:
            return MemoryBackend(**options)
        except ValueError as exc:
            raise UnknownBackend(f"bad option in {url!r}: {exc}") from None
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
