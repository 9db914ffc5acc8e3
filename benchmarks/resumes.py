"""Clients resuming on Redis while events stream in: how many events arrive twice, or never.

Two managers share a topic through Redis, as two workers do: one publishes a steady
stream, and clients of the other resume, one after the other, from a few events back.
Pub/sub lags behind a read of the stream, so an event a resume replayed may still be on
its way live; each such event delivered again is a duplicate. Each client reads until
the ``--read``-th event after its resume has come and compares the offsets it got with
the ones due.

    python -m benchmarks.resumes [--resumes 500] [--redis redis://127.0.0.1:6379/0]

Run it against another checkout's library with ``PYTHONPATH=/path/to/checkout/src``.
Prints one JSON object: resumes, duplicates, gaps, and the library's location.
"""

from __future__ import annotations

import argparse
import json
import uuid
from typing import Any

import anyio

import budget_ws
from budget_ws import ConnectionManager, Event, Position
from budget_ws.backends.redis import RedisBackend
from budget_ws.testing import connect

TOPIC = "bench:resumes"


class Tick(Event, name="bench_resumes_tick", register=False):
    number: int


async def measure(redis_url: str, resumes: int, back: int, read: int) -> dict[str, Any]:
    key_prefix = f"bench-{uuid.uuid4().hex[:12]}"
    duplicates = gaps = 0
    async with (
        ConnectionManager(RedisBackend(redis_url, key_prefix=key_prefix)) as publisher,
        ConnectionManager(RedisBackend(redis_url, key_prefix=key_prefix)) as worker,
    ):
        first = await publisher.publish(Tick(number=0), topic=TOPIC)
        done = anyio.Event()

        async def stream() -> None:
            for number in range(1, 1_000_000):  # bounded; stops when the resumes are done
                if done.is_set():
                    return
                await publisher.publish(Tick(number=number), topic=TOPIC)

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(stream)
            with anyio.fail_after(600):
                for _ in range(resumes):
                    top = await worker.position(TOPIC)
                    resume_from = Position(max(top.offset - back, 0), first.epoch)
                    last_due = resume_from.offset + read
                    offsets: list[int] = []
                    async with connect(worker) as client:
                        await client.subscribe(TOPIC, position=resume_from)
                        # Until the last event due has come (a repeat takes a read too).
                        while not offsets or max(offsets) < last_due:
                            offsets.append((await client.receive_event())["offset"])
                    due = range(resume_from.offset + 1, last_due + 1)
                    duplicates += len(offsets) - len(set(offsets))
                    gaps += len(set(due) - set(offsets))
            done.set()
    return {
        "resumes": resumes,
        "events_read_per_resume": read,
        "duplicates": duplicates,
        "gaps": gaps,
        "budget_ws": budget_ws.__file__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.resumes", description=__doc__)
    parser.add_argument("--resumes", type=int, default=500)
    parser.add_argument("--back", type=int, default=5, help="events a client resumes behind")
    parser.add_argument("--read", type=int, default=20, help="events read after each resume")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    result = anyio.run(measure, args.redis, args.resumes, args.back, args.read)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
