"""The public surface is explicit and the core imports no web framework."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import budget_ws


def test_all_is_sorted_and_complete() -> None:
    public = sorted(
        name
        for name, value in vars(budget_ws).items()
        if not name.startswith("_") and not isinstance(value, type(budget_ws))
    )
    assert sorted(budget_ws.__all__) == sorted([*public, "__version__"])
    # isort style, as ruff keeps it: CONSTANTS, then Classes, then functions.
    assert budget_ws.__all__ == sorted(
        budget_ws.__all__, key=lambda name: (not name.isupper(), name.islower(), name)
    )


def test_every_exported_name_exists() -> None:
    for name in budget_ws.__all__:
        assert hasattr(budget_ws, name), name


def test_core_imports_no_web_framework() -> None:
    code = (
        "import sys, budget_ws, budget_ws.testing;"
        "bad = [m for m in ('starlette', 'fastapi', 'redis', 'uvicorn', 'websockets',"
        " 'prometheus_client', 'opentelemetry')"
        " if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_layers_import_only_downwards() -> None:
    # The codec and the values it shares sit below the backends and the manager.
    package = Path(budget_ws.__file__).parent
    above = {
        "backends",
        "manager",
        "connection",
        "topics",
        "adapters",
        "testing",
        "outbox",
        "health",
    }
    for name in ("position", "protocol", "events", "errors", "limits", "handshake"):
        tree = ast.parse((package / f"{name}.py").read_text(encoding="utf-8"))
        imported = {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1
        }
        assert not imported & above, f"budget_ws.{name} imports {imported & above}"


def test_the_adapters_export_their_public_names() -> None:
    import budget_ws.adapters

    public = sorted(
        name
        for name, value in vars(budget_ws.adapters).items()
        if not name.startswith("_") and not isinstance(value, type(budget_ws))
    )
    assert sorted(budget_ws.adapters.__all__) == public
    assert "HealthApp" in public
    assert {"Health", "check_health"} <= set(budget_ws.__all__)


def test_every_public_exception_lives_in_errors() -> None:
    for name in budget_ws.__all__:
        value = getattr(budget_ws, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert value.__module__ == "budget_ws.errors", name


def test_the_client_exports_its_public_names_and_raises_only_library_errors() -> None:
    import budget_ws.client

    public = sorted(
        name
        for name, value in vars(budget_ws.client).items()
        if not name.startswith("_") and not isinstance(value, type(budget_ws))
    )
    assert sorted(budget_ws.client.__all__) == public
    assert budget_ws.client.__all__ == sorted(
        budget_ws.client.__all__, key=lambda name: (not name.isupper(), name.islower(), name)
    )
    for name in ("ClientClosed", "HandshakeRefused", "ServerProtocolError", "SubscriptionRefused"):
        assert getattr(budget_ws, name).__module__ == "budget_ws.errors"
    assert issubclass(budget_ws.HandshakeRefused, budget_ws.ClientClosed)
    assert issubclass(budget_ws.ServerProtocolError, budget_ws.ClientClosed)
    assert issubclass(budget_ws.ClientClosed, budget_ws.ConnectionClosed)
