"""Supervision of a backend's listening connection, whatever the server.

A networked backend hears live events on long-lived connections (Redis pub/sub, a
PostgreSQL ``LISTEN``). When they break, nothing may be lost silently: the supervisor
reconnects with jittered exponential backoff, lets the backend listen again, then fills
every topic's gap from history through the :class:`~._sequencer.Sequencer`, or has its
listeners told to resync. It logs one line when the link is lost and one when it is
back, with what was filled, never a traceback for an outage.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
import anyio.abc

from .._runtime import BackgroundTask
from ..errors import BackendUnavailable
from ._sequencer import Sequencer

__all__ = ["Supervised", "Supervisor", "cause_of", "describe"]

_RESYNCED_TOPICS_LOGGED = 20
"""Topics named at most in the log line of a restored connection."""


@dataclass(eq=False)
class _Outage:
    """Since when the link is down, for the line that says it is back."""

    started: float
    attempts: int = 0
    restored: float | None = None


class Supervisor:
    """Keeps one backend's listening connections up and its topics' gaps filled.

    Args:
        sequencer: The backend's topics, filled after every reconnect.
        connect: Opens the listening connections, starting their tasks in the given
            task group (a failure of any of them ends the group, and so the link), and
            listens to every topic of ``sequencer``; gets the attempt number, 0 at first.
        disconnect: Closes what ``connect`` opened; runs after every break, shielded.
        confirmed: Waits until the server confirmed it listens to a topic again.
        link: What the link is called in log lines (``"Redis pub/sub"``).
        address: Where the link goes, given the error that broke it (None: in general).
        describe: One line naming an error's cause.
        is_outage: Whether an error is a lost, refused or silent server (logged as an
            outage) rather than a bug (logged with its traceback).
        reconnect_delay: Smallest and largest delay between attempts (full jitter).
        logger: Where the lines go.
    """

    def __init__(
        self,
        *,
        sequencer: Sequencer,
        connect: Callable[[anyio.abc.TaskGroup, int], Awaitable[None]],
        disconnect: Callable[[], Awaitable[None]],
        confirmed: Callable[[str], Awaitable[None]],
        link: str,
        address: Callable[[BaseException | None], str],
        describe: Callable[[BaseException], str],
        is_outage: Callable[[BaseException], bool],
        reconnect_delay: tuple[float, float],
        logger: logging.Logger,
    ) -> None:
        self._sequencer = sequencer
        self._connect = connect
        self._disconnect = disconnect
        self._confirmed = confirmed
        self._link = link
        self._address = address
        self._describe = describe
        self._is_outage = is_outage
        self._reconnect_delay = reconnect_delay
        self._logger = logger
        self._task: BackgroundTask | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._up = anyio.Event()
        self._outage: _Outage | None = None
        self.connected = False
        """Whether the link is up now."""
        self.reconnects = 0
        """Attempts made after the link was lost or could not be opened."""
        self.last_error: BaseException | None = None
        """What broke the link last, for the error of a backend that cannot open."""

    async def wait_connected(self) -> None:
        """Wait until the link is up."""
        while not self.connected:
            await self._up.wait()

    async def start(self, server: str, where: str, connect_within: float) -> None:
        """Start supervising, in a task of its own, and wait until the link is up.

        A task of its own, not a task group entered here: the backend may be closed from
        any task (a lifespan's shutdown, a signal handler), and a group must be exited by
        the task that entered it.

        Raises:
            BackendUnavailable: The link was not up within ``connect_within`` seconds (the
                supervision is stopped again); the message names the last error.
        """
        self._task = BackgroundTask(self.run, f"budget_ws {server} supervisor")
        self._task.start()
        try:
            with anyio.fail_after(connect_within):
                await self.wait_connected()
        except TimeoutError:
            await self.stop()
            last_error = self._describe(self.last_error) if self.last_error else "none"
            raise BackendUnavailable(
                f"could not connect to {server} at {where} within "
                f"{connect_within:g} s (last error: {last_error})"
            ) from None

    async def stop(self) -> None:
        """Stop supervising and close the link; any number of times."""
        task, self._task = self._task, None
        if task is not None:
            await task.stop()

    def status(self) -> dict[str, Any]:
        """The link's state, for a backend's ``status()``.

        ``gaps_filled`` counts the topics whose missed events (after a reconnect, or a
        message the link lost) history filled in, ``events_recovered`` those events.
        """
        return {
            "connected": self.connected,
            "reconnects": self.reconnects,
            "topics": len(self._sequencer),
            "gaps_filled": self._sequencer.gaps_filled,
            "events_recovered": self._sequencer.events_recovered,
        }

    def start_soon(self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> bool:
        """Run ``function`` under the link: its failure breaks the link, which reconnects.

        Returns:
            False while the link is down; reconnecting then does the work anyway.
        """
        if self._task_group is None:
            return False
        self._task_group.start_soon(function, *args)
        return True

    async def run(self) -> None:
        """Keep the link up until cancelled; after every break, listen again, fill gaps."""
        self._outage = None  # a backend opened again starts with a first connection
        attempt = 0
        while True:
            if self._outage is not None:
                self._outage.attempts += 1
            try:
                async with anyio.create_task_group() as task_group:
                    self._task_group = task_group
                    await self._connect(task_group, attempt)
                    self.connected = True
                    self._up.set()
                    attempt = 0
                    if self._outage is not None:
                        self._outage.restored = anyio.current_time()
                    task_group.start_soon(self._recover_all)
            except Exception as exc:  # supervised: any failure means reconnect
                self._log_failure(exc, attempt)
                self.last_error = exc
            finally:
                self._task_group = None
                if self.connected:
                    self.connected = False
                    self._up = anyio.Event()
                self._sequencer.hold_all()
                with anyio.CancelScope(shield=True):
                    await self._disconnect()
            attempt += 1
            self.reconnects += 1
            low, high = self._reconnect_delay
            await anyio.sleep(random.uniform(low, min(high, low * 2**attempt)))

    def _log_failure(self, error: Exception, attempt: int) -> None:
        """One line naming the cause, not the task group's ExceptionGroup."""
        lost = self.connected
        if lost and self._outage is None:
            self._outage = _Outage(started=anyio.current_time())
        fields = {
            "budget_ws_address": self._address(error),
            "budget_ws_error": self._describe(error),
            "budget_ws_topics": len(self._sequencer),
        }
        if not self._is_outage(error):
            self._logger.error(
                "budget_ws: %s connection failed unexpectedly: %s",
                self._link,
                self._describe(error),
                exc_info=error,
                extra={"budget_ws_event": "pubsub_failed", **fields},
            )
        elif lost:
            self._logger.warning(
                "budget_ws: %s connection lost: %s",
                self._link,
                self._describe(error),
                extra={"budget_ws_event": "pubsub_lost", **fields},
            )
        else:
            self._logger.debug(
                "budget_ws: %s reconnect failed: %s",
                self._link,
                self._describe(error),
                extra={
                    "budget_ws_event": "pubsub_reconnect_failed",
                    "budget_ws_attempt": (
                        self._outage.attempts if self._outage is not None else attempt + 1
                    ),
                    **fields,
                },
            )

    async def _recover_all(self) -> None:
        """After a (re)connect: wait for each topic's confirmation, then fill its gap."""
        filled = current = recovered = 0
        resynced: list[str] = []
        for topic in self._sequencer:
            if not self._sequencer.established(topic):
                continue  # its subscribe() is establishing it
            await self._confirmed(topic)
            replayed = await self._sequencer.fill(topic)
            if replayed is None:
                resynced.append(topic)
            elif replayed:
                filled += 1
                recovered += replayed
            else:
                current += 1
        outage, self._outage = self._outage, None
        if outage is None or outage.restored is None:
            return  # the first connection: nothing was lost
        seconds = outage.restored - outage.started
        self._logger.info(
            "budget_ws: %s connection restored after %.1f s (attempts: %d); "
            "topics: %d filled from history (%d events), %d told to resync, %d missed nothing",
            self._link,
            seconds,
            outage.attempts,
            filled,
            recovered,
            len(resynced),
            current,
            extra={
                "budget_ws_event": "pubsub_restored",
                "budget_ws_address": self._address(None),
                "budget_ws_outage_seconds": round(seconds, 3),
                "budget_ws_attempts": outage.attempts,
                "budget_ws_topics": filled + len(resynced) + current,
                "budget_ws_topics_filled": filled,
                "budget_ws_events_recovered": recovered,
                "budget_ws_topics_resynced": len(resynced),
                "budget_ws_topics_current": current,
                "budget_ws_resynced_topic_names": resynced[:_RESYNCED_TOPICS_LOGGED],
            },
        )


class Supervised:
    """What every backend with a supervised link offers the same way.

    A subclass sets ``_link`` to its :class:`Supervisor` and defines ``aclose()``.
    """

    _link: Supervisor

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def wait_connected(self) -> None:
        """Wait until the backend's link is up (e.g. for a readiness probe)."""
        await self._link.wait_connected()

    def status(self) -> dict[str, Any]:
        """State of the link, for ``ConnectionManager.stats()`` (:meth:`Supervisor.status`)."""
        return self._link.status()


def cause_of(error: BaseException) -> BaseException:
    """The first error inside nested exception groups: what actually went wrong."""
    # Duck-typed: BaseExceptionGroup is a builtin from Python 3.11 on only.
    inner = getattr(error, "exceptions", None)
    while isinstance(inner, tuple) and inner and isinstance(inner[0], BaseException):
        error = inner[0]
        inner = getattr(error, "exceptions", None)
    return error


def describe(error: BaseException) -> str:
    """One line for a log: the cause's type and message, with its errno if it has one."""
    cause = cause_of(error)
    text = str(cause) or ("no answer in time" if isinstance(cause, TimeoutError) else "-")
    errno = next(
        (
            link.errno
            for link in (cause, cause.__cause__, cause.__context__)
            if isinstance(link, OSError) and link.errno
        ),
        None,
    )
    if errno is not None and str(errno) not in text:
        text = f"{text} (errno {errno})"
    module = type(cause).__module__.split(".")[0]
    kind = type(cause).__name__ if module == "builtins" else f"{module}.{type(cause).__name__}"
    return f"{kind}: {text}"
