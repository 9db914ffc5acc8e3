"""Adapters that connect web frameworks to a :class:`~budget_ws.ConnectionManager`.

- :mod:`budget_ws.adapters.asgi`: plain ASGI, no dependency.
- :mod:`budget_ws.adapters.health`: readiness and liveness endpoints, plain ASGI.
- :mod:`budget_ws.adapters.starlette`: routes and lifespan for Starlette (``budget-ws[starlette]``).
- :mod:`budget_ws.adapters.fastapi`: a router and a dependency for FastAPI (``budget-ws[fastapi]``).
"""

from .asgi import ASGITransport, WebSocketApp
from .assets import ClientAssets, client_url
from .health import HealthApp

__all__ = ["ASGITransport", "ClientAssets", "HealthApp", "WebSocketApp", "client_url"]
