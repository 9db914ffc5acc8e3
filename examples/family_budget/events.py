"""The events of the family budget, as every open tab of a budget receives them.

Each one goes to the budget's topic (:func:`budget_topic`). The page re-fetches its
fragments when one arrives, so ``data`` is for whatever else wants to know what changed
(the page shows it in its activity line).

Two go to one user instead, on every tab of theirs whatever budget it shows
(``manager.publish_to_user``): :class:`AddedToBudget` and :class:`RemovedFromBudget`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

from typing_extensions import Self

from budget_ws import Event

from .db import Article, Fact

__all__ = [
    "AddedToBudget",
    "ArticleUpdated",
    "FactCreated",
    "FactDeleted",
    "FactUpdated",
    "MemberAdded",
    "MemberRemoved",
    "RemovedFromBudget",
    "budget_of_topic",
    "budget_topic",
    "is_budget_topic",
]

_BUDGET: Final = "budget:"


def budget_topic(budget_id: int) -> str:
    """The topic of one budget: only its owner and members may subscribe to it."""
    return f"{_BUDGET}{budget_id}"


def budget_of_topic(topic: str) -> int | None:
    """The budget whose topic ``topic`` is, or None for any other topic."""
    number = topic.removeprefix(_BUDGET)
    if number == topic or not number.isascii() or not number.isdigit() or len(number) > 18:
        return None
    return int(number)


def is_budget_topic(topic: str) -> bool:
    """Whether ``topic`` is a budget's (the topics whose viewers the page shows)."""
    return budget_of_topic(topic) is not None


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


class MemberAdded(Event, name="budget_member_added"):
    """The owner shared the budget with another user."""

    name: str
    author: str


class MemberRemoved(Event, name="budget_member_removed"):
    """The owner stopped sharing the budget with a member."""

    name: str
    author: str


class AddedToBudget(Event, name="added_to_budget"):
    """To a user: a budget is now shared with you (on the user's own stream)."""

    budget_id: int
    budget: str
    author: str


class RemovedFromBudget(Event, name="removed_from_budget"):
    """To a user: a budget is no longer shared with you (on the user's own stream)."""

    budget_id: int
    budget: str
    author: str
