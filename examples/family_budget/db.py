"""The demo's data: budgets, users, members, articles, financial centers and facts, in SQLite.

The default store (:mod:`family_budget.store`); :mod:`family_budget.pg` keeps the same
data in PostgreSQL. The value types the pages show (:class:`Fact`, ...) are defined here,
for both.

One ``sqlite3`` connection per process, used by one thread at a time: the methods that
route handlers await run the query in a worker thread, so a slow disk never stalls the
event loop (and with it every WebSocket of the process). Amounts are stored as integer
cents, never as floats.

A ``":memory:"`` database lives as long as its connection, and each connection gets a
database of its own; keeping the one connection open for the life of the app is what
makes ``":memory:"`` usable here (within one process: several workers need a file).
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio.to_thread
from typing_extensions import Self

from budget_ws import ConnectionManager, Event, Position

from .forms import FactInput, InvalidInput

__all__ = [
    "Article",
    "Budget",
    "Database",
    "Fact",
    "FinancialCenter",
    "SQLiteWork",
    "Totals",
    "User",
]

P = ParamSpec("P")
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS budgets (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    budget_id INTEGER NOT NULL REFERENCES budgets (id)
);
CREATE UNIQUE INDEX IF NOT EXISTS one_owner_per_budget ON users (budget_id);
CREATE TABLE IF NOT EXISTS members (
    budget_id INTEGER NOT NULL REFERENCES budgets (id),
    name TEXT NOT NULL REFERENCES users (name),
    PRIMARY KEY (budget_id, name)
);
CREATE TABLE IF NOT EXISTS articles (
    id INTEGER PRIMARY KEY,
    budget_id INTEGER NOT NULL REFERENCES budgets (id),
    name TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS financial_centers (
    id INTEGER PRIMARY KEY,
    budget_id INTEGER NOT NULL REFERENCES budgets (id),
    name TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS facts (
    id INTEGER PRIMARY KEY,
    budget_id INTEGER NOT NULL REFERENCES budgets (id),
    article_id INTEGER NOT NULL REFERENCES articles (id),
    financial_center_id INTEGER NOT NULL REFERENCES financial_centers (id),
    amount_cents INTEGER NOT NULL,
    author TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS facts_by_budget ON facts (budget_id, id);
"""

CHOICES = [
    ("articles", "article_id", "Choose one of this budget's articles."),
    ("financial_centers", "financial_center_id", "Choose one of this budget's financial centers."),
]
"""The tables a fact's choices must come from (of its own budget), the form field of each,
and what to say when one does not."""

# Two households, each with its own articles and financial centers. Each user owns one
# budget; none is shared yet (the owner adds members on the budget page).
SEED: dict[str, list[tuple[Any, ...]]] = {
    "budgets": [(1, "Smith family"), (2, "Jones family")],
    "users": [("alice", 1), ("bob", 2)],
    "articles": [
        (1, 1, "Groceries"),
        (2, 1, "Rent"),
        (3, 1, "Transport"),
        (4, 1, "Leisure"),
        (5, 2, "Groceries"),
        (6, 2, "Utilities"),
        (7, 2, "Garden"),
    ],
    "financial_centers": [
        (1, 1, "Household"),
        (2, 1, "Car"),
        (3, 1, "Kids"),
        (4, 2, "Household"),
        (5, 2, "Garden"),
    ],
    "facts": [
        (1, 1, 2, 1, 95000, "alice"),
        (2, 1, 1, 1, 5420, "alice"),
        (3, 1, 3, 2, 3875, "alice"),
        (4, 1, 4, 3, 1200, "alice"),
        (5, 2, 5, 4, 6130, "bob"),
        (6, 2, 7, 5, 1999, "bob"),
    ],
}

FACT_QUERY = """
SELECT facts.id, facts.amount_cents, facts.author,
       articles.id AS article_id, articles.name AS article,
       financial_centers.id AS financial_center_id,
       financial_centers.name AS financial_center
FROM facts
JOIN articles ON articles.id = facts.article_id
JOIN financial_centers ON financial_centers.id = facts.financial_center_id
WHERE facts.budget_id = ?
"""

BUDGET_QUERY = """
SELECT budgets.id, budgets.name, users.name AS owner FROM budgets
JOIN users ON users.budget_id = budgets.id
"""


@dataclass(frozen=True)
class User:
    """A demo user: the owner of one budget, their own, and maybe a member of others."""

    name: str
    budget_id: int
    """The user's own budget."""
    budget_name: str


@dataclass(frozen=True)
class Budget:
    """A budget, who owns it and whom the owner shares it with."""

    id: int
    name: str
    owner: str
    """The user whose own budget it is."""
    members: tuple[str, ...]
    """The other users the owner shares it with, by name."""

    def admits(self, user: str) -> bool:
        """Whether ``user`` may see and change the budget (and hear of its changes)."""
        return user == self.owner or user in self.members


@dataclass(frozen=True)
class Article:
    """What money is spent on (a budget article)."""

    id: int
    name: str


@dataclass(frozen=True)
class FinancialCenter:
    """Who in the household the money is spent for."""

    id: int
    name: str


@dataclass(frozen=True)
class Fact:
    """One amount spent, with the names the page shows."""

    id: int
    amount: Decimal
    article_id: int
    article: str
    financial_center_id: int
    financial_center: str
    author: str


@dataclass(frozen=True)
class Totals:
    """What a budget adds up to."""

    total: Decimal
    count: int
    by_article: list[tuple[str, Decimal]]
    """Per article, the largest first."""

    @classmethod
    def of(cls, facts: list[Fact]) -> Totals:
        # Added up from the very rows the page shows, so the two always agree.
        by_article: dict[str, Decimal] = {}
        for fact in facts:
            by_article[fact.article] = by_article.get(fact.article, Decimal("0.00")) + fact.amount
        ranked = sorted(by_article.items(), key=lambda item: (-item[1], item[0]))
        return cls(sum((fact.amount for fact in facts), Decimal("0.00")), len(facts), ranked)


def _in_thread(
    method: Callable[Concatenate[Database, P], T],
) -> Callable[Concatenate[Database, P], Awaitable[T]]:
    """Make a blocking method awaitable: it runs in a worker thread."""

    async def run(self: Database, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await anyio.to_thread.run_sync(functools.partial(method, self, *args, **kwargs))

    functools.update_wrapper(run, method)
    return run


def to_cents(amount: Decimal) -> int:
    """An amount as the databases keep it: integer cents, never a float."""
    return int(amount * 100)


def from_cents(cents: int) -> Decimal:
    """The amount of ``cents``: 1200 -> Decimal("12.00"), exactly."""
    return Decimal(cents).scaleb(-2)


def budget_of(row: Any, members: list[Any]) -> Budget:
    """A budget from a row of ``BUDGET_QUERY`` and its member rows (by column name)."""
    return Budget(row["id"], row["name"], row["owner"], tuple(m["name"] for m in members))


def fact_of(row: Any) -> Fact:
    """A fact from a row of ``FACT_QUERY``, as either database gives it (by column name)."""
    return Fact(
        id=row["id"],
        amount=from_cents(row["amount_cents"]),
        article_id=row["article_id"],
        article=row["article"],
        financial_center_id=row["financial_center_id"],
        financial_center=row["financial_center"],
        author=row["author"],
    )


class Database:
    """The demo's SQLite database.

    Args:
        path: A file name, or ``":memory:"`` for a database that lives as long as the app.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Database {self.path}>"

    def open(self) -> None:
        """Connect, create the tables and, in an empty database, the demo data."""
        connection = sqlite3.connect(
            self.path, timeout=10, isolation_level=None, check_same_thread=False
        )
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("PRAGMA journal_mode = WAL")  # readers never wait for a writer
        connection.executescript(SCHEMA)  # commits on its own: outside any transaction
        self._connection = connection
        with self._write() as db:
            if db.execute("SELECT count(*) FROM budgets").fetchone()[0] == 0:
                for table, rows in SEED.items():
                    marks = ", ".join("?" * len(rows[0]))
                    db.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)

    def close(self) -> None:
        """Close the connection (a ``":memory:"`` database is gone afterwards)."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    async def __aenter__(self) -> Self:
        """:meth:`open` it: the app's lifespan opens either store with ``async with``."""
        self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._connection is None:
                raise RuntimeError("the database is not open: call Database.open() first")
            yield self._connection

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock at once, so two processes seeding the same
        # new file (two workers) cannot both find it empty.
        with self._read() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # Reads --------------------------------------------------------------------------------

    @_in_thread
    def user(self, name: str) -> User | None:
        """The user called ``name``, if there is one."""
        with self._read() as db:
            row = db.execute(
                "SELECT users.name, budgets.id, budgets.name FROM users "
                "JOIN budgets ON budgets.id = users.budget_id WHERE users.name = ?",
                (name,),
            ).fetchone()
        return None if row is None else User(row[0], row[1], row[2])

    @_in_thread
    def users(self) -> list[User]:
        """Every user, by name."""
        with self._read() as db:
            rows = db.execute(
                "SELECT users.name, budgets.id, budgets.name FROM users "
                "JOIN budgets ON budgets.id = users.budget_id ORDER BY users.name"
            ).fetchall()
        return [User(*row) for row in rows]

    @_in_thread
    def budget(self, budget_id: int) -> Budget | None:
        """The budget, with its owner and members; None if there is no such budget."""
        with self._read() as db:
            return self._select_budget(db, budget_id)

    @_in_thread
    def budgets(self, user: str) -> list[Budget]:
        """The budgets ``user`` may open: their own first, then those shared with them."""
        with self._read() as db:
            rows = db.execute(
                "SELECT budgets.id FROM budgets JOIN users ON users.budget_id = budgets.id "
                "WHERE users.name = ? OR budgets.id IN "
                "(SELECT budget_id FROM members WHERE name = ?) "
                "ORDER BY users.name = ? DESC, budgets.name, budgets.id",
                (user, user, user),
            ).fetchall()
            found = [self._select_budget(db, row[0]) for row in rows]
        return [budget for budget in found if budget is not None]

    @_in_thread
    def articles(self, budget_id: int) -> list[Article]:
        """The budget's articles, by name."""
        with self._read() as db:
            rows = db.execute(
                "SELECT id, name FROM articles WHERE budget_id = ? ORDER BY name, id",
                (budget_id,),
            ).fetchall()
        return [Article(*row) for row in rows]

    @_in_thread
    def financial_centers(self, budget_id: int) -> list[FinancialCenter]:
        """The budget's financial centers, by name."""
        with self._read() as db:
            rows = db.execute(
                "SELECT id, name FROM financial_centers WHERE budget_id = ? ORDER BY name, id",
                (budget_id,),
            ).fetchall()
        return [FinancialCenter(*row) for row in rows]

    @_in_thread
    def facts(self, budget_id: int) -> list[Fact]:
        """The budget's facts, newest first."""
        with self._read() as db:
            rows = db.execute(FACT_QUERY + " ORDER BY facts.id DESC", (budget_id,)).fetchall()
        return [fact_of(row) for row in rows]

    @_in_thread
    def fact(self, budget_id: int, fact_id: int) -> Fact | None:
        """One fact of the budget; None if the budget has no such fact."""
        with self._read() as db:
            return self._select_fact(db, budget_id, fact_id)

    # Writes -------------------------------------------------------------------------------

    @asynccontextmanager
    async def unit_of_work(self, manager: ConnectionManager) -> AsyncIterator[SQLiteWork]:
        """Writes that each commit on their own, and events published after them."""
        yield SQLiteWork(self, manager)

    @_in_thread
    def create_fact(self, budget_id: int, fact: FactInput, *, author: str) -> Fact:
        """Add a fact to the budget.

        Raises:
            InvalidInput: The article or the financial center is not the budget's.
        """
        with self._write() as db:
            self._check_choices(db, budget_id, fact)
            cursor = db.execute(
                "INSERT INTO facts (budget_id, article_id, financial_center_id, amount_cents, "
                "author) VALUES (?, ?, ?, ?, ?)",
                (
                    budget_id,
                    fact.article_id,
                    fact.financial_center_id,
                    to_cents(fact.amount),
                    author,
                ),
            )
            assert cursor.lastrowid is not None
            created = self._select_fact(db, budget_id, cursor.lastrowid)
        assert created is not None
        return created

    @_in_thread
    def update_fact(self, budget_id: int, fact_id: int, fact: FactInput) -> Fact | None:
        """Change a fact of the budget; None if the budget has no such fact (any more).

        Raises:
            InvalidInput: The article or the financial center is not the budget's.
        """
        with self._write() as db:
            self._check_choices(db, budget_id, fact)
            values = (fact.article_id, fact.financial_center_id, to_cents(fact.amount))
            db.execute(
                "UPDATE facts SET article_id = ?, financial_center_id = ?, amount_cents = ? "
                "WHERE id = ? AND budget_id = ?",
                (*values, fact_id, budget_id),
            )
            return self._select_fact(db, budget_id, fact_id)

    @_in_thread
    def delete_fact(self, budget_id: int, fact_id: int) -> bool:
        """Delete a fact of the budget; False if the budget has no such fact (any more)."""
        with self._write() as db:
            cursor = db.execute(
                "DELETE FROM facts WHERE id = ? AND budget_id = ?", (fact_id, budget_id)
            )
            return cursor.rowcount > 0

    @_in_thread
    def rename_article(self, budget_id: int, article_id: int, name: str) -> Article | None:
        """Rename an article of the budget; None if the budget has no such article."""
        with self._write() as db:
            cursor = db.execute(
                "UPDATE articles SET name = ? WHERE id = ? AND budget_id = ?",
                (name, article_id, budget_id),
            )
        return Article(article_id, name) if cursor.rowcount > 0 else None

    @_in_thread
    def add_member(self, budget_id: int, name: str) -> bool:
        """Share the budget with user ``name``; False if no such user, or they have it."""
        with self._write() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO members (budget_id, name) "
                "SELECT ?, name FROM users WHERE name = ? AND budget_id != ?",
                (budget_id, name, budget_id),
            )
            return cursor.rowcount > 0

    @_in_thread
    def remove_member(self, budget_id: int, name: str) -> bool:
        """Stop sharing the budget with ``name``; False if they were no member of it."""
        with self._write() as db:
            cursor = db.execute(
                "DELETE FROM members WHERE budget_id = ? AND name = ?", (budget_id, name)
            )
            return cursor.rowcount > 0

    # Helpers ------------------------------------------------------------------------------

    @staticmethod
    def _select_budget(db: sqlite3.Connection, budget_id: int) -> Budget | None:
        row = db.execute(BUDGET_QUERY + " WHERE budgets.id = ?", (budget_id,)).fetchone()
        if row is None:
            return None
        members = db.execute(
            "SELECT name FROM members WHERE budget_id = ? ORDER BY name", (budget_id,)
        ).fetchall()
        return budget_of(row, members)

    @staticmethod
    def _select_fact(db: sqlite3.Connection, budget_id: int, fact_id: int) -> Fact | None:
        row = db.execute(FACT_QUERY + " AND facts.id = ?", (budget_id, fact_id)).fetchone()
        return None if row is None else fact_of(row)

    @staticmethod
    def _check_choices(db: sqlite3.Connection, budget_id: int, fact: FactInput) -> None:
        errors: dict[str, str] = {}
        for table, field, message in CHOICES:
            found = db.execute(
                f"SELECT 1 FROM {table} WHERE id = ? AND budget_id = ?",
                (getattr(fact, field), budget_id),
            ).fetchone()
            if found is None:
                errors[field] = message
        if errors:
            raise InvalidInput(errors)


class SQLiteWork:
    """A unit of work on SQLite: each write commits on its own, and the publish follows it.

    A *dual write*, the best SQLite allows: an event is published only after its change
    is saved, but a crash (or a failing publish) between the two leaves the change saved
    and unannounced; tabs that reconnect see it when they re-fetch.
    """

    def __init__(self, database: Database, manager: ConnectionManager) -> None:
        self.database = database
        self.manager = manager

    async def create_fact(self, budget_id: int, fact: FactInput, *, author: str) -> Fact:
        return await self.database.create_fact(budget_id, fact, author=author)

    async def update_fact(self, budget_id: int, fact_id: int, fact: FactInput) -> Fact | None:
        return await self.database.update_fact(budget_id, fact_id, fact)

    async def delete_fact(self, budget_id: int, fact_id: int) -> bool:
        return await self.database.delete_fact(budget_id, fact_id)

    async def rename_article(self, budget_id: int, article_id: int, name: str) -> Article | None:
        return await self.database.rename_article(budget_id, article_id, name)

    async def add_member(self, budget_id: int, name: str) -> bool:
        return await self.database.add_member(budget_id, name)

    async def remove_member(self, budget_id: int, name: str) -> bool:
        return await self.database.remove_member(budget_id, name)

    async def publish(self, event: Event, *, topic: str) -> Position:
        """Publish at once: the writes before it are committed already."""
        return await self.manager.publish(event, topic=topic)
