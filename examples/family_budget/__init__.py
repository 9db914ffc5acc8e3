"""The family-budget demo: FastAPI, Jinja2, HTMX and SQLite, kept live by budget_ws.

Run it from the repository root with ``.venv/bin/python examples/family_budget``, open the
printed URL in two browser tabs, and add a budget fact in one: it appears in the other.
With ``--backend postgresql://…`` its data goes into PostgreSQL instead, and each change
is published in the transaction that writes it (see :mod:`family_budget.pg`).

Importing the package does nothing: :func:`family_budget.app.create_app` builds the app.
"""
