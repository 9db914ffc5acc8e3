"""Run the demo: ``python -m family_budget [--port N]`` from ``examples/``.

From the repository root, ``.venv/bin/python examples/family_budget`` does the same.
Settings from the environment: ``PORT`` (default 8000), ``BUDGET_DEMO_DB`` (the SQLite
file) and ``BUDGET_WS_BACKEND`` (default ``memory://``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m family_budget", description="The family-budget demo of budget_ws."
    )
    parser.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    port = int(os.environ.get("PORT") or 8000)
    parser.add_argument("--port", type=int, default=port, help="default: $PORT or 8000")
    parser.add_argument("--db", help="SQLite file; default: $BUDGET_DEMO_DB or one in the temp dir")
    parser.add_argument("--backend", help="budget_ws backend URL; default: $BUDGET_WS_BACKEND")
    args = parser.parse_args(argv)

    import uvicorn

    from family_budget.app import create_app, default_backend, default_database

    database = args.db or default_database()
    backend = args.backend or default_backend()
    app = create_app(database, backend)
    url = f"http://{args.host}:{args.port}/"
    print(
        f"Family budget demo on {url}\n"
        f"  Open it in two browser tabs, log in as alice, add a fact in one tab: it appears\n"
        f"  in the other. Bob (a private window) keeps another budget and never sees it.\n"
        f"  database: {database}   backend: {backend}   (Ctrl+C to stop)",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    if not __package__:
        # Run as `python examples/family_budget`: make `family_budget` importable.
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
