"""Quickstart: a typed event, a manager, one subscriber, one publish."""

import json
from decimal import Decimal

import anyio

from budget_ws import ConnectionManager, Event
from budget_ws.testing import connect


class FactCreated(Event, name="budget_fact_created"):
    id: int
    amount: Decimal


async def main() -> None:
    async with ConnectionManager("memory://") as manager, connect(manager) as browser:
        await browser.subscribe("budget:42")
        event = FactCreated(id=7, amount=Decimal("12.50"))
        position = await manager.publish(event, topic="budget:42")
        print(f"published {event.event_name} at offset {position.offset}")
        frame = await browser.receive_event()
        print("the browser received:", json.dumps(frame))


anyio.run(main)
