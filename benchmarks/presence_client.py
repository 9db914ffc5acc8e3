"""The client process of ``benchmarks/presence.py``'s revocation runs: real sockets.

``python -m benchmarks.presence_client --urls A B --users K --tabs T --background N``
opens, over ``benchmarks/wsclient.py`` (budget-ws.v1, ``?user=`` in the URL):

- ``N`` background connections, users ``bg-<i>``, alternately on each URL;
- ``T`` tabs of each of ``K`` target users ``target-<i>``, tab j of user i on
  ``urls[(i + j) % len(urls)]``, so each user's tabs are spread over the workers;

every one subscribed to ``--topic`` with presence. It prints ``{"ready": ...}`` once all
are subscribed, then answers, on stdin:

- ``wait unsubscribed USER SECONDS``: once every tab of USER got an ``unsubscribed`` frame
  with ``"reason":"revoked"`` for the topic (or SECONDS passed), the ``time.time_ns()``
  at which each arrived;
- ``wait closed USER SECONDS``: the same for the end of each tab's connection (the close
  frame read and the socket closed), with the close codes.

End of stdin closes every connection and exits. It never decodes JSON it does not need.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from benchmarks.wsclient import Receiver, connect, run_client

__all__ = ["main"]

SUBPROTOCOL = "budget-ws.v1"


class TargetTab:
    """One tab of a target user: when it was unsubscribed, when its connection ended."""

    __slots__ = ("closed_ns", "connection", "unsubscribed_ns")

    def __init__(self) -> None:
        self.unsubscribed_ns = 0
        self.closed_ns = 0
        self.connection: Receiver | None = None


class Clients:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.connections: list[Receiver] = []
        self.targets: dict[str, list[TargetTab]] = {}
        self.changed = asyncio.Event()

    def _handler(self, topic_line: bytes, subscribed: asyncio.Future[None],
                 tab: TargetTab | None) -> Callable[[bytes, int], None]:  # fmt: skip
        def on_message(payload: bytes, now: int) -> None:
            for line in payload.split(b"\n"):
                if not subscribed.done():
                    if line.startswith(b'{"op":"subscribed"') and topic_line in line:
                        subscribed.set_result(None)
                    elif line.startswith(b'{"op":"error"'):
                        subscribed.set_exception(RuntimeError(line.decode()[:300]))
                elif (
                    tab is not None
                    and not tab.unsubscribed_ns
                    and line.startswith(b'{"op":"unsubscribed"')
                    and topic_line in line
                    and b'"reason":"revoked"' in line
                ):
                    tab.unsubscribed_ns = now
                    self.changed.set()

        return on_message

    async def open(self, url: str, user: str, limiter: asyncio.Semaphore,
                   tab: TargetTab | None = None) -> None:  # fmt: skip
        args = self.args
        parts = urlsplit(url)
        topic_line = f'"topic":"{args.topic}"'.encode()
        subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        async with limiter:
            connection = await connect(
                parts.hostname or "127.0.0.1",
                parts.port or 80,
                f"{parts.path or '/'}?user={user}",
                self._handler(topic_line, subscribed, tab),
                subprotocol=SUBPROTOCOL,
                timeout=args.connect_timeout,
            )
            self.connections.append(connection)
            if tab is not None:
                tab.connection = connection

                def ended(_: object, tab: TargetTab = tab) -> None:
                    tab.closed_ns = time.time_ns()
                    self.changed.set()

                connection.closed.add_done_callback(ended)
            frame = {"op": "subscribe", "topic": args.topic, "id": 1, "presence": True}
            connection.send_text(json.dumps(frame, separators=(",", ":")))
            await asyncio.wait_for(subscribed, args.connect_timeout)

    async def run(self) -> None:
        args = self.args
        limiter = asyncio.Semaphore(args.connect_concurrency)
        began = time.perf_counter()
        opening = [self.open(args.urls[i % len(args.urls)], f"bg-{i:06d}", limiter)
                   for i in range(args.background)]  # fmt: skip
        for i in range(args.users):
            user = f"target-{i:04d}"
            tabs = self.targets[user] = [TargetTab() for _ in range(args.tabs)]
            for j, tab in enumerate(tabs):
                opening.append(self.open(args.urls[(i + j) % len(args.urls)], user, limiter, tab))
        await asyncio.gather(*opening)
        self.report({"ready": len(self.connections),
                     "seconds": round(time.perf_counter() - began, 3)})  # fmt: skip
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := (await reader.readline()).decode().strip():
            command, what, user, seconds = line.split()
            if command == "wait":
                await self.wait(what, user, float(seconds))
        for connection in self.connections:
            connection.abort()

    async def wait(self, what: str, user: str, seconds: float) -> None:
        """Report, once all of ``user``'s tabs saw ``what`` or ``seconds`` passed, when."""
        tabs = self.targets[user]

        def seen() -> list[int]:
            return [tab.unsubscribed_ns if what == "unsubscribed" else tab.closed_ns
                    for tab in tabs]  # fmt: skip

        deadline = time.monotonic() + seconds
        while not all(seen()) and time.monotonic() < deadline:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
        codes = [tab.connection.close_code if tab.connection else None for tab in tabs]
        self.report({"user": user, "what": what, "ns": seen(), "close_codes": codes})

    @staticmethod
    def report(message: dict[str, object]) -> None:
        print(json.dumps(message), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.presence_client")
    parser.add_argument("--urls", nargs="+", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--tabs", type=int, default=3)
    parser.add_argument("--background", type=int, default=0)
    parser.add_argument("--connect-timeout", type=float, default=60.0)
    parser.add_argument("--connect-concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    run_client(Clients(args).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
