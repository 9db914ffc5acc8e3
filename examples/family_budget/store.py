"""Where the demo keeps its data: SQLite (:mod:`family_budget.db`) or PostgreSQL
(:mod:`family_budget.pg`), behind one interface, so a route reads the same for both.

A route changes data through a unit of work, and announces the change through it too::

    async with db.unit_of_work(manager) as work:
        fact = await work.create_fact(budget_id, form.parse(), author=user.name)
        await work.publish(FactCreated.of(fact, author=user.name), topic=topic)

What the pair guarantees is the store's, and its docstring says it:

- SQLite (:class:`~family_budget.db.SQLiteWork`): each write commits on its own and the
  publish follows it, a *dual write*: if the process dies between the two, the fact is
  saved and no open tab hears of it.
- PostgreSQL (:class:`~family_budget.pg.PostgresWork`): the writes and the publish are one
  transaction, committed when the block ends without an error: the event is delivered if
  and only if the fact is saved, and a rolled-back event leaves no gap in the offsets.
"""

from __future__ import annotations

from collections.abc import Awaitable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol

from typing_extensions import Self

from budget_ws import ConnectionManager, Event, Position

from .db import Article, Budget, Fact, FinancialCenter, User
from .forms import FactInput

__all__ = ["Store", "UnitOfWork", "WriteFailed"]


class WriteFailed(Exception):
    """The database refused a change: nothing of it was saved, and nothing was published."""


class UnitOfWork(Protocol):
    """The writes of one request, and the events that announce them."""

    async def create_fact(self, budget_id: int, fact: FactInput, *, author: str) -> Fact:
        """Add a fact to the budget.

        Raises:
            InvalidInput: The article or the financial center is not the budget's.
        """

    async def update_fact(self, budget_id: int, fact_id: int, fact: FactInput) -> Fact | None:
        """Change a fact of the budget; None if the budget has no such fact (any more).

        Raises:
            InvalidInput: The article or the financial center is not the budget's.
        """

    async def delete_fact(self, budget_id: int, fact_id: int) -> bool:
        """Delete a fact of the budget; False if the budget has no such fact (any more)."""

    async def rename_article(self, budget_id: int, article_id: int, name: str) -> Article | None:
        """Rename an article of the budget; None if the budget has no such article."""

    async def add_member(self, budget_id: int, name: str) -> bool:
        """Share the budget with user ``name``; False if there is no such user, or they
        own the budget or are a member of it already."""

    async def remove_member(self, budget_id: int, name: str) -> bool:
        """Stop sharing the budget with ``name``; False if they were no member of it."""

    async def publish(self, event: Event, *, topic: str) -> Position:
        """Announce a change, with the store's guarantee (see the module's docstring)."""


class Store(Protocol):
    """The demo's data: what the pages read, and units of work that change it.

    The reads are awaitables: SQLite's run in a worker thread, PostgreSQL's on asyncpg.
    """

    async def __aenter__(self) -> Self:
        """Connect; create the tables and, in an empty database, the demo data."""

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close every connection."""

    def user(self, name: str) -> Awaitable[User | None]:
        """The user called ``name``, if there is one."""

    def users(self) -> Awaitable[list[User]]:
        """Every user, by name."""

    def budget(self, budget_id: int) -> Awaitable[Budget | None]:
        """The budget, with its owner and members; None if there is no such budget."""

    def budgets(self, user: str) -> Awaitable[list[Budget]]:
        """The budgets ``user`` may open: their own first, then those shared with them."""

    def articles(self, budget_id: int) -> Awaitable[list[Article]]:
        """The budget's articles, by name."""

    def financial_centers(self, budget_id: int) -> Awaitable[list[FinancialCenter]]:
        """The budget's financial centers, by name."""

    def facts(self, budget_id: int) -> Awaitable[list[Fact]]:
        """The budget's facts, newest first."""

    def fact(self, budget_id: int, fact_id: int) -> Awaitable[Fact | None]:
        """One fact of the budget; None if the budget has no such fact."""

    def unit_of_work(self, manager: ConnectionManager) -> AbstractAsyncContextManager[UnitOfWork]:
        """Writes, and the events announcing them through ``manager``.

        Raises:
            WriteFailed: The database refused the change (PostgreSQL): nothing of it was
                saved or published.
        """
