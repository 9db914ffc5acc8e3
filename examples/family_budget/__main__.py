"""Run the demo: ``python -m family_budget [--port N]`` from ``examples/``.

From the repository root, ``.venv/bin/python examples/family_budget`` does the same.
Settings from the environment: ``PORT`` (default 8000), ``BUDGET_DEMO_DB`` (the SQLite
file), ``BUDGET_WS_BACKEND`` (default ``memory://``) and ``BUDGET_DEMO_SCHEMA`` (where the
data goes on PostgreSQL, default ``family_budget``).

On PostgreSQL (``--backend postgresql://user@host:5432/db?schema=budget_ws``) the demo
keeps its data in that database, and ``--db`` is refused. Before serving, it runs
budget_ws's migration step, ``python -m budget_ws migrate URL``, and says so: a demo's
shortcut for a step a deployment runs on its own, before starting any worker.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m family_budget", description="The family-budget demo of budget_ws."
    )
    parser.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    port = int(os.environ.get("PORT") or 8000)
    parser.add_argument("--port", type=int, default=port, help="default: $PORT or 8000")
    parser.add_argument(
        "--db",
        help="SQLite file, for SQLite only (on PostgreSQL the data goes into the backend's "
        "database); default: $BUDGET_DEMO_DB or one in the temp dir",
    )
    parser.add_argument(
        "--backend",
        help="budget_ws backend URL; default: $BUDGET_WS_BACKEND or memory://. With "
        "postgresql://… the demo keeps its data in that database (schema "
        "$BUDGET_DEMO_SCHEMA or family_budget) and publishes each change in its transaction",
    )
    args = parser.parse_args(argv)

    import uvicorn

    from budget_ws import BudgetWSError
    from family_budget.app import (
        create_app,
        default_backend,
        default_database,
        default_schema,
        is_postgres,
    )

    backend = args.backend or default_backend()
    postgres = is_postgres(backend)
    if postgres:  # the data goes into the backend's database; a --db is refused
        database, where = args.db, f"PostgreSQL, schema {default_schema()}"
    else:
        database = where = args.db or default_database()
    try:
        app = create_app(database, backend)
    except (ValueError, BudgetWSError) as wrong:  # SettingsConflict, a bad URL or schema
        parser.error(str(wrong))
    url = f"http://{args.host}:{args.port}/"
    print(
        f"Family budget demo on {url}\n"
        f"  Open it in two browser tabs, log in as alice, add a fact in one tab: it appears\n"
        f"  in the other. Bob (a private window) sees Alice's budget once she shares it.\n"
        f"  database: {where}   backend: {backend}   (Ctrl+C to stop)",
        flush=True,
    )
    if postgres:
        migrate(backend)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def migrate(backend: str) -> None:
    """Run budget_ws's migration step, as a deployment would before starting workers."""
    print(
        "  Running budget_ws's migration step first, `python -m budget_ws migrate URL` "
        "(the demo's shortcut:\n  a deployment runs it as a step of its own):",
        flush=True,
    )
    done = subprocess.run([sys.executable, "-m", "budget_ws", "migrate", backend], check=False)
    if done.returncode:
        sys.exit(done.returncode)


if __name__ == "__main__":
    if not __package__:
        # Run as `python examples/family_budget`: make `family_budget` importable.
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
