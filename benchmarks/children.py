"""Child processes a benchmark drives by lines: commands on stdin, JSON reports on stdout."""

from __future__ import annotations

import json
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["JsonLinesChild"]


class JsonLinesChild:
    """A running child (a load generator, a receiving worker) and its line protocol.

    Args:
        process: The child, started with stdin and stdout piped.
        max_line: The longest report line accepted, in bytes.
    """

    def __init__(self, process: anyio.abc.Process, max_line: int = 1 << 20) -> None:
        self.process = process
        assert process.stdout is not None
        self.stdout = BufferedByteReceiveStream(process.stdout)
        self.max_line = max_line

    async def line(self) -> dict[str, Any]:
        """The child's next report."""
        raw = await self.stdout.receive_until(b"\n", self.max_line)
        report: dict[str, Any] = json.loads(raw)
        return report

    async def send(self, text: str) -> None:
        """One command line to the child."""
        assert self.process.stdin is not None
        await self.process.stdin.send(text.encode() + b"\n")

    async def stop(self) -> None:
        """Kill the child if it still runs, and reap it (within 5 s)."""
        if self.process.returncode is None:
            self.process.kill()
        with anyio.move_on_after(5, shield=True):
            await self.process.wait()
        await self.process.aclose()
