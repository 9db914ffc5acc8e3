"""scripts/coverage_floor.py: per-module coverage floors, read from pyproject.toml."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "coverage_floor.py"

FLOORS = """
[tool.coverage.budget_ws]
total = 90

[tool.coverage.budget_ws.modules]
"budget_ws" = 100
"budget_ws.connection" = 95
"budget_ws.backends.redis" = 80
"""


def report(tmp_path: Path, total: float, **modules: float) -> Path:
    files = {
        f"src/{name.replace('.', '/')}{'/__init__' if name == 'budget_ws' else ''}.py": {
            "summary": {"percent_covered": percent}
        }
        for name, percent in modules.items()
    }
    path = tmp_path / "coverage.json"
    path.write_text(json.dumps({"files": files, "totals": {"percent_covered": total}}))
    return path


def run(tmp_path: Path, json_report: Path, *options: str) -> subprocess.CompletedProcess[str]:
    pyproject = tmp_path / "pyproject.toml"
    if not pyproject.exists():
        pyproject.write_text(FLOORS)
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(json_report), "--pyproject", str(pyproject), *options],
        capture_output=True,
        text=True,
        check=False,
    )


def modules(connection: float = 95.0, redis: float = 80.0) -> dict[str, float]:
    return {
        "budget_ws": 100.0,
        "budget_ws.connection": connection,
        "budget_ws.backends.redis": redis,
    }


def test_floors_that_hold_pass(tmp_path: Path) -> None:
    result = run(tmp_path, report(tmp_path, 90.0, **modules()))
    assert result.returncode == 0, result.stderr
    assert "3 modules" in result.stdout


def test_each_module_below_its_floor_is_listed(tmp_path: Path) -> None:
    result = run(tmp_path, report(tmp_path, 89.99, **modules(connection=94.99, redis=12.5)))
    assert result.returncode == 1
    assert "total: 89.99% < 90%" in result.stderr
    assert "budget_ws.connection: 94.99% < 95%" in result.stderr
    assert "budget_ws.backends.redis: 12.50% < 80%" in result.stderr


@pytest.mark.parametrize(
    ("measured", "message"),
    [
        ({**modules(), "budget_ws.newcomer": 100.0}, "budget_ws.newcomer: 100.00%, no floor"),
        ({"budget_ws": 100.0, "budget_ws.connection": 99.0}, "budget_ws.backends.redis: has a"),
    ],
    ids=["module-without-floor", "floor-without-module"],
)
def test_the_table_and_the_report_must_name_the_same_modules(
    tmp_path: Path, measured: dict[str, float], message: str
) -> None:
    result = run(tmp_path, report(tmp_path, 95.0, **measured))
    assert result.returncode == 1
    assert message in result.stderr


def test_unreadable_inputs_exit_2(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{")
    assert run(tmp_path, garbage).returncode == 2
    (tmp_path / "pyproject.toml").write_text("[tool.coverage.run]\n")
    result = run(tmp_path, report(tmp_path, 90.0, **modules()))
    assert result.returncode == 2
    assert "no [tool.coverage.budget_ws] table" in result.stderr


def test_suggest_prints_floors_rounded_down(tmp_path: Path) -> None:
    result = run(tmp_path, report(tmp_path, 96.7, **modules(connection=99.9)), "--suggest")
    assert result.returncode == 0
    assert "total = 96\n" in result.stdout
    assert '"budget_ws.connection" = 99\n' in result.stdout
