#!/usr/bin/env python3
"""Fail when any module's test coverage falls below its floor, not only the total.

A total floor lets one module lose its tests while the others carry the average. This
reads a coverage JSON report (``pytest --cov=budget_ws --cov-report=json:PATH``) and the
floors in ``pyproject.toml``::

    [tool.coverage.budget_ws]
    total = 96

    [tool.coverage.budget_ws.modules]
    "budget_ws.connection" = 98

Coverage is counted as ``coverage report`` counts it (statements and branches). Every
measured module needs a floor and every floor a measured module, so that a new module
cannot go untested and a renamed one cannot drop out of the check unnoticed.

Usage::

    python scripts/coverage_floor.py coverage.json            # check; exit 1 below a floor
    python scripts/coverage_floor.py coverage.json --suggest  # print floors for the report

Exit status: 0 when every floor holds, 1 when one does not, 2 when the report or the
table cannot be read.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli comes with pytest
    import tomli as tomllib

PACKAGE = "budget_ws"
TABLE = f"tool.coverage.{PACKAGE}"
ROOT = Path(__file__).resolve().parent.parent


class FloorError(Exception):
    """The report or the floor table cannot be used."""


def module_name(path: str) -> str:
    """``src/budget_ws/backends/redis.py`` -> ``budget_ws.backends.redis``."""
    parts = Path(path).with_suffix("").parts
    if PACKAGE not in parts:
        raise FloorError(f"{path} is not a module of {PACKAGE}")
    parts = parts[parts.index(PACKAGE) :]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def read_report(path: Path) -> tuple[float, dict[str, float]]:
    """The total and each module's percent covered, from a coverage JSON report."""
    try:
        report = json.loads(path.read_text())
        files = report["files"]
        total = float(report["totals"]["percent_covered"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FloorError(f"{path} is not a coverage JSON report: {exc}") from None
    modules = {
        module_name(name): float(data["summary"]["percent_covered"]) for name, data in files.items()
    }
    return total, modules


def read_floors(pyproject: Path) -> tuple[float, dict[str, float]]:
    """The total floor and the per-module floors from ``[tool.coverage.budget_ws]``."""
    try:
        config = tomllib.loads(pyproject.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise FloorError(f"cannot read {pyproject}: {exc}") from None
    table: Any = config
    for key in TABLE.split("."):
        table = table.get(key) if isinstance(table, dict) else None
    if not isinstance(table, dict):
        raise FloorError(f"{pyproject} has no [{TABLE}] table")
    total, modules = table.get("total"), table.get("modules")
    if not isinstance(total, (int, float)) or not isinstance(modules, dict):
        raise FloorError(f"[{TABLE}] needs `total = <percent>` and a [{TABLE}.modules] table")
    for name, floor in modules.items():
        if not isinstance(floor, (int, float)) or not 0 <= floor <= 100:
            raise FloorError(f"[{TABLE}.modules] {name!r}: the floor must be a percent")
    return float(total), {name: float(floor) for name, floor in modules.items()}


def shortfalls(
    total: float, modules: dict[str, float], total_floor: float, floors: dict[str, float]
) -> list[str]:
    """One line per broken floor, empty when all hold."""
    problems = []
    if total < total_floor:
        problems.append(f"total: {total:.2f}% < {total_floor:g}%")
    for name in sorted(modules.keys() | floors.keys()):
        if name not in floors:
            problems.append(f"{name}: {modules[name]:.2f}%, no floor (add it to [{TABLE}.modules])")
        elif name not in modules:
            problems.append(f"{name}: has a floor but was not measured (renamed or removed?)")
        elif modules[name] < floors[name]:
            problems.append(f"{name}: {modules[name]:.2f}% < {floors[name]:g}%")
    return problems


def suggest(total: float, modules: dict[str, float]) -> str:
    """Floors for this report: each percent rounded down to a whole number."""
    lines = [f"[{TABLE}]", f"total = {math.floor(total)}", "", f"[{TABLE}.modules]"]
    lines += [f'"{name}" = {math.floor(modules[name])}' for name in sorted(modules)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a coverage JSON report")
    parser.add_argument(
        "--pyproject",
        type=Path,
        default=ROOT / "pyproject.toml",
        help=f"where the [{TABLE}] table is (default: %(default)s)",
    )
    parser.add_argument(
        "--suggest", action="store_true", help="print floors for this report instead"
    )
    args = parser.parse_args(argv)
    try:
        total, modules = read_report(args.report)
        if args.suggest:
            print(suggest(total, modules))
            return 0
        total_floor, floors = read_floors(args.pyproject)
    except FloorError as exc:
        print(f"coverage_floor: {exc}", file=sys.stderr)
        return 2
    problems = shortfalls(total, modules, total_floor, floors)
    if problems:
        print(f"coverage below its floor ([{TABLE}] in {args.pyproject.name}):", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"coverage floors hold: {len(floors)} modules, total {total:.2f}% >= {total_floor:g}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
