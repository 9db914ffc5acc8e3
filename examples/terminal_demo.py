"""The family-budget story in the terminal, on the in-memory backend.

Two households share one server: Alice keeps budget 1 and has it open in two browser
tabs, Bob keeps budget 2 in one tab. Each tab is an in-memory client from
``budget_ws.testing``, so the demo needs no web server and no browser.

Run it with ``./scripts/demo`` or ``python examples/terminal_demo.py``.
"""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from typing import Any

import anyio

from budget_ws import Action, ClientMessage, ConnectionClosed, ConnectionManager, Event
from budget_ws.testing import MemoryClient, connect

# The events of the original app, with the same wire names.


class FactCreated(Event, name="budget_fact_created"):
    id: int
    article_id: int
    amount: Decimal


class FactUpdated(Event, name="budget_fact_updated"):
    id: int
    amount: Decimal


class FactDeleted(Event, name="budget_fact_deleted"):
    id: int


class ArticleUpdated(Event, name="article_updated"):
    id: int
    name: str


# Who may see which budget: each user sees only their own household's topic.
BUDGET_OF_USER = {"alice": 1, "bob": 2}


def authorize(user: str, topic: str, action: Action) -> bool:
    return topic == f"budget:{BUDGET_OF_USER[user]}"


def heading(text: str) -> None:
    print(f"\n== {text}")


def describe(frame: dict[str, Any]) -> str:
    """One short line per frame."""
    if "event" in frame:
        data = json.dumps(frame["data"], separators=(",", ":"))
        return f"{frame['topic']} #{frame['offset']} {frame['event']} {data}"
    if frame["op"] == "subscribed":
        recovered = str(frame["recovered"]).lower()
        offset = frame["position"]["offset"]
        return f"subscribed {frame['topic']} at offset {offset}, recovered: {recovered}"
    if frame["op"] == "error":
        return f"error {frame['code']}: {frame['message']}"
    return json.dumps(frame)


async def subscribe(tab: str, client: MemoryClient, topic: str, *, resume: bool = False) -> None:
    answer = await client.subscribe(topic, resume=resume)
    print(f"  {tab:<11} subscribe {topic} -> {describe(answer)}")


async def show(tab: str, client: MemoryClient, count: int = 1) -> None:
    for _ in range(count):
        frame = await client.receive_event()
        print(f"  {tab:<11} <- {describe(frame)}")


async def main() -> None:
    print("budget_ws demo: the family-budget app on the in-memory backend")
    async with ConnectionManager("memory://", authorize=authorize) as manager:

        @manager.on(ArticleUpdated)
        async def article_updated(message: ClientMessage[ArticleUpdated]) -> None:
            # A browser renamed an article; tell every tab of that budget. The topic has
            # already passed authorize(user, topic, "publish").
            if message.topic is None:
                raise ValueError("article_updated needs a topic")  # -> handler_error frame
            await manager.publish(message.event, topic=message.topic)

        heading("Alice opens budget 1 in two tabs, Bob opens budget 2")
        async with (
            connect(manager, principal="alice") as alice_1,
            connect(manager, principal="bob") as bob_1,
        ):
            async with connect(manager, principal="alice") as alice_2:
                await subscribe("alice/tab-1", alice_1, "budget:1")
                await subscribe("alice/tab-2", alice_2, "budget:1")
                await subscribe("bob/tab-1", bob_1, "budget:2")
                await subscribe("bob/tab-1", bob_1, "budget:1")

                heading("The server publishes; each tab prints what it receives")
                await manager.publish(
                    FactCreated(id=1, article_id=3, amount=Decimal("54.20")), topic="budget:1"
                )
                await manager.publish(
                    FactCreated(id=2, article_id=4, amount=Decimal("9.99")), topic="budget:2"
                )
                await manager.publish(FactUpdated(id=1, amount=Decimal("45.20")), topic="budget:1")
                await show("alice/tab-1", alice_1, 2)
                await show("alice/tab-2", alice_2, 2)
                await show("bob/tab-1", bob_1)  # budget 2 only: nothing from budget 1

                heading("Alice renames an article in tab 1; both of her tabs update")
                await alice_1.send_event(ArticleUpdated(id=3, name="Food"), topic="budget:1")
                await show("alice/tab-1", alice_1)
                await show("alice/tab-2", alice_2)
                positions = dict(alice_2.positions)

            heading("Tab 2 goes offline; two events happen meanwhile")
            print(f"  alice/tab-2 last saw budget:1 offset {positions['budget:1'].offset}")
            await manager.publish(FactDeleted(id=1), topic="budget:1")
            await manager.publish(
                FactCreated(id=3, article_id=3, amount=Decimal("61.00")), topic="budget:1"
            )
            await show("alice/tab-1", alice_1, 2)

            heading("Tab 2 reconnects with its last positions and recovers what it missed")
            async with connect(manager, principal="alice", positions=positions) as alice_2:
                await subscribe("alice/tab-2", alice_2, "budget:1", resume=True)
                await show("alice/tab-2", alice_2, 2)

                heading("stats()")
                for name, value in dataclasses.asdict(manager.stats()).items():
                    print(f"  {name:<25} {value}")
                print("  (delivered counts every frame written, control frames included)")

                heading("Shutdown: every tab is told to reconnect elsewhere (1012)")
                await manager.aclose()
                tabs = [("alice/tab-1", alice_1), ("alice/tab-2", alice_2), ("bob/tab-1", bob_1)]
                for tab, client in tabs:
                    try:
                        while True:
                            await client.receive()
                    except ConnectionClosed as closed:
                        print(f"  {tab:<11} closed: {closed.code} {closed.reason}")


if __name__ == "__main__":
    anyio.run(main)
