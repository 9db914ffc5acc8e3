"""What steps 1 to 3 of the migration share: the family budget on budget_ws.

The app's events, with the wire names the original pages handle; a budget's topic; who
may connect and subscribe; and the requests that change a budget, each publishing the
change to the pages of that budget through the running manager. Each step's module
(``step1_compat.py``, ``step3_client.py``) builds the manager and the app around it.

The guide: ``docs/how-to/migrate.md``.
"""

from __future__ import annotations

from decimal import Decimal

from fastapi import APIRouter
from pydantic import BaseModel

from budget_ws import Action, Event, Handshake, HandshakeRejected
from budget_ws.adapters.fastapi import Manager


class FactCreated(Event, name="budget_fact_created"):
    id: int
    amount: Decimal


class FactUpdated(Event, name="budget_fact_updated"):
    id: int
    amount: Decimal


class FactDeleted(Event, name="budget_fact_deleted"):
    id: int


class ArticleUpdated(Event, name="article_updated"):
    id: int
    name: str


def budget_topic(budget_id: int) -> str:
    return f"budget:{budget_id}"


def authenticate(handshake: Handshake) -> int:
    """The budget the page shows, from the cookie the app's login set: the principal."""
    try:
        return int(handshake.cookies.get("budget_id", "1"))
    except ValueError:
        raise HandshakeRejected("bad budget_id cookie") from None


def authorize(budget_id: int, topic: str, action: Action) -> bool:
    # Asked for clients that speak budget-ws.v1 (they subscribe themselves).
    return action == "subscribe" and topic == budget_topic(budget_id)


class FactIn(BaseModel):
    id: int
    amount: Decimal


class AmountIn(BaseModel):
    amount: Decimal


class ArticleIn(BaseModel):
    name: str


# The requests that change a budget. ``Manager`` is the manager that the app's lifespan runs.
budget_routes = APIRouter()


@budget_routes.post("/budgets/{budget_id}/facts")
async def create_fact(budget_id: int, fact: FactIn, manager: Manager) -> None:
    await manager.publish(FactCreated(**fact.model_dump()), topic=budget_topic(budget_id))


@budget_routes.post("/budgets/{budget_id}/facts/{fact_id}")
async def update_fact(budget_id: int, fact_id: int, change: AmountIn, manager: Manager) -> None:
    event = FactUpdated(id=fact_id, amount=change.amount)
    await manager.publish(event, topic=budget_topic(budget_id))


@budget_routes.post("/budgets/{budget_id}/facts/{fact_id}/delete")
async def delete_fact(budget_id: int, fact_id: int, manager: Manager) -> None:
    await manager.publish(FactDeleted(id=fact_id), topic=budget_topic(budget_id))


@budget_routes.post("/budgets/{budget_id}/articles/{article_id}")
async def rename_article(
    budget_id: int, article_id: int, article: ArticleIn, manager: Manager
) -> None:
    event = ArticleUpdated(id=article_id, name=article.name)
    await manager.publish(event, topic=budget_topic(budget_id))
