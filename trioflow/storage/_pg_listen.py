"""PostgresStorage's notifications: the trio-native LISTEN connection and the trio Events
waiting on it.

The listen loop waits for the connection's socket with ``trio.lowlevel.wait_readable`` and
reads notifications with psycopg's libpq wrapper (``consume_input``/``notifies``), so a
notification wakes the waiting task at once without a thread polling.

Followed runs
-------------
PostgreSQL signals every LISTENing backend of the database at each NOTIFY, whatever its
channels, and each signalled backend reads the queue in a transaction of its own: a NOTIFY
per write would double a run's transactions wherever a runtime listens. So writes NOTIFY
the events channel only for a run whose ``followed_until`` is in the future, and this
process sets it (:meth:`Notifications.keep_followed`) for every run it waits on: at the
first :meth:`Notifications.watch_events` of a run, and again before it lapses while the
run is still watched. Once the mark is committed, the run's waiters are woken to read
the log again: a write committed before the mark notified nobody, one after it notifies
(the mark and the write update the same row, so the write sees the newest mark).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from ._pg_sql import CANCEL_CHANNEL, EVENTS_CHANNEL, QUEUE_CHANNEL

#: Seconds a mark keeps a run followed (in the database's clock); renewed at half of it.
FOLLOW_TTL = 60.0

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger("trioflow.postgres")


class Notifications:
    """Who waits for which notification. ``holds(run_id)`` says whether this storage
    holds the run's lease: a cancel notification reaches the cancel handlers only then."""

    def __init__(
        self,
        *,
        where: str,
        connect: Callable[[], psycopg.Connection[Any]],
        holds: Callable[[str], bool],
    ) -> None:
        self._where = where
        self._connect = connect
        self._holds = holds
        #: run_id -> trio Events to set at the next notification about that run.
        self._event_waiters: dict[str, set[trio.Event]] = {}
        self._queue_waiters: set[trio.Event] = set()
        self.cancel_handlers: list[Callable[[str, str], None]] = []
        #: run_id -> trio time until which its mark is known to hold (conservatively).
        self._followed: dict[str, float] = {}
        self._mark_needed = trio.Event()
        #: Runs watched whose mark is missing or lapsing: keep_followed marks them.
        self._wanted: set[str] = set()

    def watch_events(self, run_id: str, event: trio.Event) -> Callable[[], None]:
        waiters = self._event_waiters.setdefault(run_id, set())
        waiters.add(event)
        if self._followed.get(run_id, -math.inf) < trio.current_time() + FOLLOW_TTL / 2:
            self._wanted.add(run_id)
            self._mark_needed.set()

        def unwatch() -> None:
            found = self._event_waiters.get(run_id)
            if found is not None:
                found.discard(event)
                if not found:
                    del self._event_waiters[run_id]

        return unwatch

    def watch_queue(self, event: trio.Event) -> Callable[[], None]:
        self._queue_waiters.add(event)
        return lambda: self._queue_waiters.discard(event)

    def dispatch(self, channel: str, payload: str) -> None:
        if channel == EVENTS_CHANNEL:
            for event in self._event_waiters.pop(payload, ()):
                event.set()
        elif channel == QUEUE_CHANNEL:
            waiters, self._queue_waiters = self._queue_waiters, set()
            for event in waiters:
                event.set()
        elif channel == CANCEL_CHANNEL and self._holds(payload):
            for handler in list(self.cancel_handlers):
                handler(payload, "canceled")

    def _runs_to_mark(self, now: float) -> tuple[list[str], float]:
        """The runs to mark now (newly watched ones, and watched ones whose mark lapses
        within half a TTL), and when to look again."""
        due = set(self._wanted)
        self._wanted.clear()
        later = math.inf
        for run_id, until in list(self._followed.items()):
            renew_at = until - FOLLOW_TTL / 2
            if until < now:
                del self._followed[run_id]
            elif run_id not in self._event_waiters:
                pass  # not watched now: a later watch marks it again if needed
            elif renew_at <= now:
                due.add(run_id)
            else:
                later = min(later, renew_at)
        return sorted(due), later

    async def keep_followed(self, mark: Callable[[list[str], float], Awaitable[list[str]]]) -> None:
        """Keep every watched run marked followed, until cancelled. ``mark(run_ids, ttl)``
        marks them in the database and returns those found (a run not stored yet is
        marked again at its next watch). Waiters of a run newly marked are woken: a
        write committed before the mark notified nobody."""
        while True:
            due, later = self._runs_to_mark(trio.current_time())
            if due:
                await self._mark(due, mark)
            else:
                with trio.move_on_at(later):
                    await self._mark_needed.wait()
                self._mark_needed = trio.Event()

    async def _mark(
        self, due: list[str], mark: Callable[[list[str], float], Awaitable[list[str]]]
    ) -> None:
        sent = trio.current_time()
        try:
            found = await mark(due, FOLLOW_TTL)
        except Exception as exc:
            # The waiters poll meanwhile; a later watch tries again.
            logger.warning("%s: could not mark followed runs (%s)", self._where, exc)
            await trio.lowlevel.checkpoint()
            return
        fresh = [run_id for run_id in found if self._followed.get(run_id, -math.inf) < sent]
        for run_id in found:
            self._followed[run_id] = sent + FOLLOW_TTL
        for run_id in fresh:
            for event in self._event_waiters.pop(run_id, ()):
                event.set()

    def wake_everyone(self) -> None:
        # After losing the listen connection, a notification may have been missed.
        for waiters in self._event_waiters.values():
            for event in waiters:
                event.set()
        self._event_waiters.clear()
        self.dispatch(QUEUE_CHANNEL, "")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """LISTEN and dispatch until cancelled (cancelling it closes the connection).
        Started at the first connection attempt, failed or not; a lost connection is
        reopened with a backoff, waking every waiter (they fall back to reading)."""
        started = False
        delay = 0.05
        while True:
            conn: psycopg.Connection[Any] | None = None
            try:

                def listen() -> psycopg.Connection[Any]:
                    c = self._connect()
                    for channel in (EVENTS_CHANNEL, CANCEL_CHANNEL, QUEUE_CHANNEL):
                        c.execute(f"LISTEN {channel}")
                    return c

                conn = await trio.to_thread.run_sync(listen)
                if started:
                    self.wake_everyone()
                else:
                    started = True
                    task_status.started()
                delay = 0.05
                pgconn = conn.pgconn
                while True:
                    await trio.lowlevel.wait_readable(pgconn.socket)
                    pgconn.consume_input()
                    while (note := pgconn.notifies()) is not None:
                        self.dispatch(note.relname.decode(), note.extra.decode())
            except Exception as exc:
                logger.warning("%s: listen connection lost (%s); reconnecting", self._where, exc)
                if not started:
                    started = True
                    task_status.started()
                self.wake_everyone()
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if conn is not None:
                    conn.close()
