"""The events of the family budget, as every open tab of a budget receives them.

Each one goes to the budget's topic (:func:`budget_topic`). The page re-fetches its
fragments when one arrives, so ``data`` is for whatever else wants to know what changed
(the page shows it in its activity line).
"""

from __future__ import annotations

from decimal import Decimal

from typing_extensions import Self

from budget_ws import Event

from .db import Article, Fact

__all__ = ["ArticleUpdated", "FactCreated", "FactDeleted", "FactUpdated", "budget_topic"]


def budget_topic(budget_id: int) -> str:
    """The topic of one budget: only its own users may subscribe to it."""
    return f"budget:{budget_id}"


class FactEvent(Event):
    """What the page knows of a fact (no wire name: a base for the two events below)."""

    id: int
    amount: Decimal
    article_id: int
    article: str
    financial_center_id: int
    financial_center: str
    author: str
    """Who made the change."""

    @classmethod
    def of(cls, fact: Fact, *, author: str) -> Self:
        return cls(
            id=fact.id,
            amount=fact.amount,
            article_id=fact.article_id,
            article=fact.article,
            financial_center_id=fact.financial_center_id,
            financial_center=fact.financial_center,
            author=author,
        )


class FactCreated(FactEvent, name="budget_fact_created"):
    """A fact was added to the budget."""


class FactUpdated(FactEvent, name="budget_fact_updated"):
    """A fact of the budget was changed; the fields are its new values."""


class FactDeleted(Event, name="budget_fact_deleted"):
    """A fact was deleted from the budget."""

    id: int
    author: str


class ArticleUpdated(Event, name="article_updated"):
    """An article of the budget was renamed."""

    id: int
    name: str
    author: str

    @classmethod
    def of(cls, article: Article, *, author: str) -> Self:
        return cls(id=article.id, name=article.name, author=author)
