"""The public surface is explicit and the core imports no web framework."""

from __future__ import annotations

import subprocess
import sys

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
        "bad = [m for m in ('starlette', 'fastapi', 'redis', 'uvicorn') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
